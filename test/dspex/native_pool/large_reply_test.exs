defmodule DSPex.NativePool.LargeReplyTest do
  # A string that is most of a large reply reaches the caller as a view of the reply's frame,
  # not a copy. Every view must keep its bytes while it lives, however many large replies
  # follow (their buffers are reused once a view is gone), on both reading paths: the slot
  # thread's (concurrency 1) and the reader thread's (above 1). In child VMs: memory reused
  # too early could crash the VM.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.ChildVM

  @moduletag timeout: 300_000

  for concurrency <- [1, 8] do
    test "large strings held across 40 later large replies keep their bytes (concurrency #{concurrency})" do
      code = """
      {:ok, _} = DSPex.NativePool.start_link(name: :large, pool_size: 2, concurrency: #{unquote(concurrency)})
      texts = for i <- 1..40, do: String.duplicate(<<?a + rem(i, 26)>> <> "é", 150_000 + i)
      replies =
        texts
        |> Enum.map(&DSPex.NativePool.execute_async("echo", %{text: &1}, pool: :large))
        |> Enum.map(fn handle -> {:ok, %{"text" => text}} = DSPex.NativePool.await(handle); text end)
      # Shared: the binary refers to the pool's frame, not to a copy of its own size.
      shared = Enum.count(replies, &(:binary.referenced_byte_size(&1) < byte_size(&1)))
      # Garbage: collected replies give their buffers back to the ones that follow.
      :erlang.garbage_collect()
      again = for text <- Enum.take(texts, 5) do
        {:ok, %{"text" => back}} = DSPex.NativePool.execute("echo", %{text: text}, pool: :large)
        back == text
      end
      {replies == texts, shared, again}
      """

      assert {:ok, {true, 40, [true, true, true, true, true]}} = ChildVM.eval(code)
    end
  end

  test "a string that is not most of its reply, or small, is a binary of its own" do
    code = """
    {:ok, _} = DSPex.NativePool.start_link(name: :halves, pool_size: 1)
    half = String.duplicate("x", 300_000)
    {:ok, %{"a" => a, "b" => b}} = DSPex.NativePool.execute("echo", %{a: half, b: half}, pool: :halves)
    small = String.duplicate("y", 1_000)
    {:ok, %{"s" => s}} = DSPex.NativePool.execute("echo", %{s: small}, pool: :halves)
    for bin <- [a, b, s], do: {bin in [half, small], :binary.referenced_byte_size(bin) == byte_size(bin)}
    """

    assert {:ok, [{true, true}, {true, true}, {true, true}]} = ChildVM.eval(code)
  end
end
