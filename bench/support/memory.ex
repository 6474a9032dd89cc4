defmodule Bench.Memory do
  @moduledoc """
  What the pool costs the VM's OS process, as three deltas: `:erlang.memory(:total)` (what the VM
  accounts for), the VM's resident set (VmRSS, which also holds what the NIF allocates with the
  system allocator, and its threads' stacks) and its thread count. Python's own memory is outside
  the VM and reported apart, from each worker's VmRSS.

    * Idle workers: the marginal cost of a worker, `(pool of 5 − pool of 1) / 4`, so that what a
      pool costs once (its process, its queue) is not spread over the workers; that is reported
      as the pool's fixed cost. Median of three measurements.
    * 10,000 requests in flight: both workers are kept busy by a `sleep` command while 10,000
      echo requests are submitted, so all of them are queued when memory is read. Native: one
      process fans out with `execute_async/3`. V2, which needs a process per waiting call:
      10,000 processes blocked in checkout.
  """

  alias Bench.{OS, Python, SchedMonitor, Stats, V2}

  @small 1
  @large 5
  @repetitions 3
  # Long enough for 10,000 submissions and a snapshot, short enough not to slow the run.
  @busy_s 1.5

  def run(plan) do
    SchedMonitor.phase(:memory)
    # Loads the NIF and warms the allocators, which would otherwise be charged to the first pool.
    {:ok, pid} = DSPex.NativePool.start_link(Python.native_options(:bench_memory_warm, 1))
    GenServer.stop(pid)

    %{
      idle_native: idle(&start_native/2),
      idle_v2: idle(&start_v2/2),
      in_flight: plan.in_flight,
      in_flight_native: in_flight_native(plan.in_flight),
      in_flight_v2: in_flight_v2(plan.in_flight)
    }
  end

  ## Idle workers

  # Allocators hand memory back to the OS unpredictably, so one measurement is noise: the
  # median of several is reported.
  defp idle(start) do
    samples = for _ <- 1..@repetitions, do: idle_once(start)
    median = fn get -> samples |> Enum.map(get) |> Enum.reject(&is_nil/1) |> Stats.median() end
    fields = Map.keys(hd(samples).per_worker)

    %{
      per_worker: Map.new(fields, &{&1, median.(fn s -> s.per_worker[&1] end)}),
      per_pool: Map.new(fields, &{&1, median.(fn s -> s.per_pool[&1] end)}),
      python_rss_bytes: median.(& &1.python_rss_bytes)
    }
  end

  defp idle_once(start) do
    {small, _} = pool_cost(start, @small)
    {large, python_rss} = pool_cost(start, @large)
    per_worker = Map.new(large, fn {k, v} -> {k, (v - small[k]) / (@large - @small)} end)
    fixed = Map.new(small, fn {k, v} -> {k, v - per_worker[k] * @small} end)
    %{per_worker: per_worker, per_pool: fixed, python_rss_bytes: python_rss}
  end

  defp pool_cost(start, size) do
    before = snapshot()
    stop = start.(size, nil)
    Process.sleep(200)
    used = delta(before, snapshot())
    python_rss = Stats.mean(Enum.map(stop.(:os_pids), &OS.rss_bytes/1))
    stop.(:stop)
    {used, python_rss}
  end

  # Each returns a function: `:os_pids` gives the workers' OS pids, `:stop` stops the pool.
  # Pools have the default options, but room for the in-flight test's requests (the default
  # `max_queue` is 10,000).
  defp start_native(size, handlers, extra \\ []) do
    name = :"bench_memory_native_#{System.unique_integer([:positive])}"
    {:ok, pid} = DSPex.NativePool.start_link(Python.native_options(name, size, handlers, extra))

    fn
      :name ->
        name

      :os_pids ->
        name |> DSPex.NativePool.stats() |> Map.get(:workers, []) |> Enum.map(& &1.os_pid)

      :stop ->
        GenServer.stop(pid)
    end
  end

  defp start_v2(size, handlers) do
    name = :"bench_memory_v2_#{System.unique_integer([:positive])}"
    {:ok, _} = V2.start_pool(name, size, Python.v2_bridge(name, handlers))

    fn
      :name -> name
      :os_pids -> V2.os_pids(name)
      :stop -> V2.stop_pool(name)
    end
  end

  ## Requests in flight

  defp in_flight_native(count) do
    pool = start_native(2, :sleep, max_queue: count + 100)
    name = pool.(:name)
    busy = for _ <- 1..2, do: DSPex.NativePool.execute_async("sleep", %{s: @busy_s}, pool: name)
    args = %{"data" => String.duplicate("x", 100)}

    measure_in_flight(count, fn ->
      handles = for _ <- 1..count, do: DSPex.NativePool.execute_async("echo", args, pool: name)
      queued = DSPex.NativePool.stats(name)[:queue_length]

      finish = fn ->
        Enum.each(busy, &DSPex.NativePool.await(&1, 60_000))
        ok = Enum.count(handles, &match?({:ok, _}, DSPex.NativePool.await(&1, 60_000)))
        pool.(:stop)
        ok
      end

      {queued, finish}
    end)
  end

  defp in_flight_v2(count) do
    pool = start_v2(2, :sleep)
    name = pool.(:name)
    parent = self()
    busy = for _ <- 1..2, do: spawn_caller(parent, name, "sleep", %{"s" => @busy_s})
    # The sleeps must hold both workers before the echo callers queue up.
    Process.sleep(100)
    args = %{"data" => String.duplicate("x", 100)}

    measure_in_flight(count, fn ->
      callers = for _ <- 1..count, do: spawn_caller(parent, name, "echo", args)

      finish = fn ->
        results = Enum.map(busy ++ callers, fn _ -> await_v2() end)
        Enum.each(busy ++ callers, &send(&1, :release))
        pool.(:stop)
        Enum.count(results, &match?({:ok, %{"data" => _}}, &1))
      end

      {nil, finish}
    end)
  end

  # Each caller lives until released: one that exits right after its checkin takes the port with
  # it if the pool has not reconnected it yet (a race V2 had too).
  defp spawn_caller(parent, pool, command, args) do
    spawn(fn ->
      send(parent, {:v2_done, V2.execute(pool, command, args)})
      receive do: (:release -> :ok)
    end)
  end

  defp await_v2 do
    receive do
      {:v2_done, result} -> result
    after
      120_000 -> raise "a V2 call did not come back within 2 minutes"
    end
  end

  # `submit` submits every request and returns {queued, finish}; memory is read in between.
  defp measure_in_flight(count, submit) do
    before = snapshot()
    started = System.monotonic_time(:microsecond)
    {queued, finish} = submit.()
    submitted = System.monotonic_time(:microsecond)
    used = delta(before, snapshot())
    ok = finish.()
    finished = System.monotonic_time(:microsecond)

    %{
      ok: ok,
      queued_at_peak: queued,
      submit_ms: (submitted - started) / 1000,
      total_ms: (finished - started) / 1000,
      erlang_bytes: used.erlang,
      rss_bytes: used.rss,
      erlang_bytes_per_request: used.erlang / count,
      rss_bytes_per_request: used.rss / count
    }
  end

  ## Snapshots

  # Garbage first, so that only live data is counted.
  defp snapshot do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    beam = OS.beam_pid()
    %{erlang: :erlang.memory(:total), rss: OS.rss_bytes(beam), threads: OS.thread_count(beam)}
  end

  defp delta(before, later), do: Map.new(before, fn {k, v} -> {k, later[k] - v} end)
end
