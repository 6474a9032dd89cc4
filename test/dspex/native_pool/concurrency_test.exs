defmodule DSPex.NativePool.ConcurrencyTest do
  use DSPex.NativePool.PoolCase, async: true

  @callers 50
  @calls 20

  test "50 processes × 20 requests: every caller gets exactly its own replies" do
    %{pool: pool} = start_pool!(pool_size: 2)

    tasks =
      for caller <- 1..@callers do
        Task.async(fn ->
          replies =
            for seq <- 1..@calls do
              args = %{
                caller: caller,
                seq: seq,
                token: Base.encode64(:crypto.strong_rand_bytes(12)),
                data: String.duplicate("#{caller}:#{seq};", caller + seq)
              }

              {jsonish(args), NativePool.execute("echo", args, pool: pool)}
            end

          {:messages, leftovers} = Process.info(self(), :messages)
          {caller, replies, leftovers}
        end)
      end

    for {caller, replies, leftovers} <- Task.await_many(tasks, 30_000) do
      assert length(replies) == @calls
      for {sent, reply} <- replies, do: assert(reply == {:ok, sent}, "caller #{caller}")
      assert leftovers == [], "caller #{caller} got extra messages: #{inspect(leftovers)}"
    end

    stats = NativePool.stats(pool)
    assert Enum.map(stats.workers, & &1.requests) |> Enum.sum() == @callers * @calls
    # Both workers took their share from the shared queue.
    assert Enum.all?(stats.workers, &(&1.requests > 0))
  end
end
