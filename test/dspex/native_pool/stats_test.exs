defmodule DSPex.NativePool.StatsTest do
  use DSPex.NativePool.PoolCase, async: true

  test "stats describe the pool and its workers, and the counts add up" do
    %{pool: pool} = start_pool!(pool_size: 2, handlers_source: :standard)

    stats = NativePool.stats(pool)

    assert %{name: ^pool, pool_size: 2, queue_length: 0, available: true, workers: workers} =
             stats

    assert stats.counters.completed == 0

    for {worker, id} <- Enum.with_index(workers) do
      assert %{id: ^id, os_pid: os_pid, state: _, requests: 0, restarts: 0, last_exit: nil} =
               worker

      assert is_integer(os_pid)
    end

    for i <- 1..10, do: {:ok, _} = NativePool.execute("echo", %{i: i}, pool: pool)
    {:error, _} = NativePool.execute("boom", %{}, pool: pool)
    {:error, _} = NativePool.execute("nope", %{}, pool: pool)
    # Refused before sending: not counted anywhere.
    {:error, _} = NativePool.execute("echo", %{pid: self()}, pool: pool)

    # Python errors are answers: run and completed requests, like the ten echoes. A worker
    # counts a request before running it; `completed` once the reply is sent.
    stats = NativePool.stats(pool)
    assert stats.workers |> Enum.map(& &1.requests) |> Enum.sum() == 12
    assert stats.queue_length == 0
    assert eventually(fn -> NativePool.stats(pool).counters.completed == 12 end)
  end

  for concurrency <- [1, 4] do
    test "stats read right after a call count nothing in flight (concurrency #{concurrency})" do
      %{pool: pool} = start_pool!(concurrency: unquote(concurrency))

      # The worker was counted busy until after its reply had been sent: about 1 read in 500.
      busy =
        Enum.count(1..2_000, fn _ ->
          {:ok, _} = NativePool.execute("ping", %{}, pool: pool)
          stats = NativePool.stats(pool)
          stats.in_flight != 0 or Enum.any?(stats.workers, &(&1.state != :idle))
        end)

      assert busy == 0
    end
  end

  test "stats and calls on a pool that is not running return :pool_not_found" do
    name = unique_name()

    assert {:error, {:resource_error, :pool_not_found, message, %{pool: ^name}}} =
             NativePool.stats(name)

    assert message =~ "no pool named #{inspect(name)} is running"

    # A call's error names its command too.
    assert {:error, {:resource_error, :pool_not_found, _, %{pool: ^name, command: "ping"}}} =
             NativePool.execute("ping", %{}, pool: name)

    assert {:error, {:resource_error, :pool_not_found, _, %{command: "ping"}}} =
             NativePool.execute_async("ping", %{}, pool: name) |> NativePool.await()
  end
end
