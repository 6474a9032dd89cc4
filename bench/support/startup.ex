defmodule Bench.Startup do
  @moduledoc """
  Time to a ready pool, with every worker importing DSPy (the `bench_dspy_handlers` module):

    * `forked`: `DSPex.NativePool.start_link/1` as shipped (`preload: :auto`): one template
      imports DSPy, then forks the N workers;
    * `spawned`: the same with `preload: false`: N interpreters that each import DSPy, in
      parallel; the pool of 1 is *one worker's start*, the baseline of the targets;
    * `v2`: the V2 pool, which (like NimblePool with `lazy: false`) starts its workers in turn.

  Then, for a pool of 1 of each kind, the time from `kill -9` of a worker that has answered a
  call to its replacement's first answer; and the proportional set size (PSS, shared pages
  divided among their sharers) of the largest forked pool, template included, against one
  spawned worker's, each after a call to DSPy in every worker.

  The first start of a run only warms the page cache and is not counted. Medians over the
  repetitions are reported.
  """

  alias Bench.{OS, Python, SchedMonitor, Stats, V2}

  @forked []
  @spawned [preload: false]

  def run(plan) do
    SchedMonitor.phase(:startup)
    sizes = plan.startup_sizes
    _warm = time_pool(1, @spawned)
    reps = for _ <- 1..plan.startup_reps, do: one_repetition(sizes)
    summarize(reps, sizes)
  end

  defp one_repetition(sizes) do
    %{
      forked: Map.new(sizes, &{&1, time_pool(&1, @forked)}),
      spawned: Map.new(sizes, &{&1, time_pool(&1, @spawned)}),
      v2: Map.new(sizes, &{&1, time_v2(&1)}),
      replace_forked: replacement_ms(@forked),
      replace_spawned: replacement_ms(@spawned),
      pss_forked: pss(Enum.max(sizes), @forked),
      pss_one: pss(1, @spawned)
    }
  end

  defp time_pool(size, extra) do
    name = unique_name("bench_startup")
    {ms, {:ok, pid}} = timed(fn -> start(name, size, extra) end)
    GenServer.stop(pid)
    ms
  end

  # From `kill -9` of a worker that has answered a call to its replacement's first answer.
  defp replacement_ms(extra) do
    name = unique_name("bench_replace")
    {:ok, pid} = start(name, 1, extra)
    {:ok, %{"pid" => old}} = DSPex.NativePool.execute("ping", %{}, pool: name)
    started = System.monotonic_time(:microsecond)
    System.cmd("kill", ["-9", Integer.to_string(old)])
    :ok = await_answer_from_other_than(name, old, 100)
    ms = (System.monotonic_time(:microsecond) - started) / 1000
    GenServer.stop(pid)
    ms
  end

  # A call sent before the pool noticed the death fails with :worker_exited: ask again.
  defp await_answer_from_other_than(_name, _old, 0), do: :error

  defp await_answer_from_other_than(name, old, tries) do
    case DSPex.NativePool.execute("ping", %{}, pool: name, timeout: 30_000) do
      {:ok, %{"pid" => pid}} when pid != old -> :ok
      _ -> await_answer_from_other_than(name, old, tries - 1)
    end
  end

  # PSS of a pool's Python processes (its template too) after each worker called into DSPy.
  defp pss(size, extra) do
    name = unique_name("bench_pss")
    {:ok, pid} = start(name, size, extra)
    {:ok, _} = DSPex.NativePool.broadcast("dspy_version", %{}, pool: name)
    workers = for w <- DSPex.NativePool.stats(name).workers, do: w.os_pid
    parents = workers |> Enum.map(&OS.parent_pid/1) |> Enum.uniq()
    templates = Enum.reject(parents, &(&1 == OS.beam_pid()))
    bytes = (workers ++ templates) |> Enum.map(&(OS.pss_bytes(&1) || 0)) |> Enum.sum()
    rss = workers |> Enum.map(&(OS.rss_bytes(&1) || 0))
    GenServer.stop(pid)
    %{workers: size, pss: bytes, worker_rss: Enum.sum(rss) / max(length(rss), 1)}
  end

  defp time_v2(size) do
    name = unique_name("bench_startup_v2")
    {ms, {:ok, _pid}} = timed(fn -> V2.start_pool(name, size, Python.v2_bridge(name, :dspy)) end)
    V2.stop_pool(name)
    ms
  end

  defp start(name, size, extra),
    do: DSPex.NativePool.start_link(Python.native_options(name, size, :dspy, extra))

  defp timed(fun) do
    {us, result} = :timer.tc(fun)
    {us / 1000, result}
  end

  defp unique_name(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp summarize(reps, sizes) do
    median_of = fn key, n -> reps |> Enum.map(&Map.fetch!(&1[key], n)) |> Stats.median() end
    median = fn key -> reps |> Enum.map(&Map.fetch!(&1, key)) |> Stats.median() end
    pss = fn key -> reps |> Enum.map(&Map.fetch!(&1, key).pss) |> Stats.median() end
    spawned = Map.new(sizes, &{&1, median_of.(:spawned, &1)})

    %{
      sizes: sizes,
      repetitions: length(reps),
      cores: cores(),
      forked_ms: Map.new(sizes, &{&1, median_of.(:forked, &1)}),
      spawned_ms: spawned,
      one_start_ms: spawned[1],
      v2_ms: Map.new(sizes, &{&1, median_of.(:v2, &1)}),
      replace_forked_ms: median.(:replace_forked),
      replace_spawned_ms: median.(:replace_spawned),
      pss_workers: Enum.max(sizes),
      pss_forked: pss.(:pss_forked),
      pss_one: pss.(:pss_one),
      dspy_worker_rss: reps |> Enum.map(& &1.pss_one.worker_rss) |> Stats.median()
    }
  end

  @doc "Cores the targets scale by: the logical processors this VM may use."
  def cores do
    case :erlang.system_info(:logical_processors_available) do
      n when is_integer(n) -> n
      _ -> System.schedulers_online()
    end
  end
end
