defmodule DSPex.NativePool.LargeRequestTest do
  # A large string in a call's arguments is not copied into the request's frame: the pool
  # holds the binary and writes it to the worker from where it lies. Whatever the arguments'
  # shape (several large strings, nested, next to small ones, a sub-binary, one that needs
  # escaping and is copied after all), the worker must get them byte for byte, on both writing
  # paths (the slot thread's at concurrency 1, the multiplexed one above), and the binary must
  # outlive a caller that is gone before the frame is written. In child VMs: bytes read after
  # they were freed could crash the VM.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.ChildVM

  @moduletag timeout: 300_000

  for concurrency <- [1, 8] do
    test "large argument strings reach the worker intact (concurrency #{concurrency})" do
      code = """
      {:ok, _} = DSPex.NativePool.start_link(name: :large, pool_size: 2, concurrency: #{unquote(concurrency)})
      big = fn n, c -> String.duplicate(c, n) end
      cases = [
        %{"data" => big.(1_000_000, "x")},
        %{"a" => big.(70_000, "a"), "b" => [big.(100_000, "b"), 1, "small", big.(65_536, "é")],
          "c" => %{"d" => big.(200_000, "d")}},
        %{"escaped" => big.(100_000, "\\\\\\"q"), "plain" => big.(100_000, "p")},
        %{"edge" => big.(65_535, "y") <> "z", "below" => big.(65_535, "w")},
        %{"sub" => binary_part(big.(300_000, "s") <> "tail", 1_000, 200_000)},
        %{"list" => for(i <- 1..5, do: big.(80_000, Integer.to_string(i)))}
      ]
      results =
        cases
        |> Enum.map(&DSPex.NativePool.execute_async("echo", &1, pool: :large))
        |> Enum.map(&DSPex.NativePool.await/1)
      Enum.zip(results, cases) |> Enum.map(fn {result, args} -> result == {:ok, args} end)
      """

      assert {:ok, [true, true, true, true, true, true]} = ChildVM.eval(code)
    end
  end

  test "large requests whose callers died are dropped with the strings they held" do
    code = """
    dir = Path.join(System.tmp_dir!(), "dspex_large_request_\#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, "slow.py"), "import time\\ndef sleep(args):\\n    time.sleep(args['s'])\\n    return True\\n")
    {:ok, _} = DSPex.NativePool.start_link(name: :gone, pool_size: 1, handlers: "slow", python_path: [dir])
    # The worker is busy, so the large requests wait in the queue while their callers die.
    blocker = DSPex.NativePool.execute_async("sleep", %{s: 1}, pool: :gone)
    for i <- 1..4 do
      {pid, ref} = spawn_monitor(fn ->
        text = String.duplicate(<<?a + i>>, 500_000)
        DSPex.NativePool.execute_async("echo", %{text: text}, pool: :gone, timeout: 10_000)
      end)
      receive do
        {:DOWN, ^ref, :process, ^pid, _} -> :ok
      end
    end
    :erlang.garbage_collect()
    {:ok, true} = DSPex.NativePool.await(blocker)
    text = String.duplicate("z", 500_000)
    {:ok, %{"text" => back}} = DSPex.NativePool.execute("echo", %{text: text}, pool: :gone)
    %{counters: counters, workers: [worker]} = DSPex.NativePool.stats(:gone)
    {back == text, counters.dropped, worker.restarts}
    """

    assert {:ok, {true, 4, 0}} = ChildVM.eval(code)
  end

  test "held strings count towards max_frame" do
    code = """
    {:ok, _} = DSPex.NativePool.start_link(name: :capped, pool_size: 1, max_frame: 1_000_000)
    DSPex.NativePool.execute("echo", %{text: String.duplicate("x", 1_000_000)}, pool: :capped)
    """

    assert {:ok, {:error, {:validation_error, :request_too_large, message, _}}} =
             ChildVM.eval(code)

    assert message =~ "over the pool's max_frame of 1000000"
  end
end
