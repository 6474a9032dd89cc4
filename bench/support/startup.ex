defmodule Bench.Startup do
  @moduledoc """
  Time to a ready pool, with every worker importing DSPy (the `bench_dspy_handlers` module):

    * `pool`: `DSPex.NativePool.start_link/1` with N workers, which start in parallel;
    * `sequential`: N single-worker pools started one after another (the cumulative time after
      the k-th is the cost of k sequential starts);
    * `v2`: the V2 pool, which (like NimblePool with `lazy: false`) starts its workers in turn.

  The first start of a run only warms the page cache and is not counted. Medians over the
  repetitions are reported.
  """

  alias Bench.{OS, Python, SchedMonitor, Stats, V2}

  def run(plan) do
    SchedMonitor.phase(:startup)
    sizes = plan.startup_sizes
    {_ms, _rss} = time_native(1)
    reps = for _ <- 1..plan.startup_reps, do: one_repetition(sizes)
    summarize(reps, sizes)
  end

  defp one_repetition(sizes) do
    native = Map.new(sizes, &{&1, time_native(&1)})

    %{
      pool: Map.new(native, fn {n, {ms, _rss}} -> {n, ms} end),
      dspy_rss: native |> Map.fetch!(Enum.max(sizes)) |> elem(1),
      sequential: sequential(Enum.max(sizes)),
      v2: Map.new(sizes, &{&1, time_v2(&1)})
    }
  end

  # Returns the start-up time and the resident memory of each ready worker.
  defp time_native(size) do
    name = unique_name("bench_startup")
    {ms, {:ok, pid}} = timed(fn -> start_native(name, size) end)

    rss =
      name
      |> DSPex.NativePool.stats()
      |> Map.get(:workers, [])
      |> Enum.map(&OS.rss_bytes(&1.os_pid))

    GenServer.stop(pid)
    {ms, rss}
  end

  # Cumulative ready times of `count` single-worker pools started one after another.
  defp sequential(count) do
    started = System.monotonic_time(:microsecond)

    {pids, times} =
      Enum.map_reduce(1..count, [], fn _, times ->
        {:ok, pid} = start_native(unique_name("bench_seq"), 1)
        {pid, [(System.monotonic_time(:microsecond) - started) / 1000 | times]}
      end)

    Enum.each(pids, &GenServer.stop/1)
    Enum.reverse(times)
  end

  defp time_v2(size) do
    name = unique_name("bench_startup_v2")
    {ms, {:ok, _pid}} = timed(fn -> V2.start_pool(name, size, Python.v2_bridge(name, :dspy)) end)
    V2.stop_pool(name)
    ms
  end

  defp start_native(name, size),
    do: DSPex.NativePool.start_link(Python.native_options(name, size, :dspy))

  defp timed(fun) do
    {us, result} = :timer.tc(fun)
    {us / 1000, result}
  end

  defp unique_name(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp summarize(reps, sizes) do
    median_of = fn key, n -> reps |> Enum.map(&Map.fetch!(&1[key], n)) |> Stats.median() end
    longest = Enum.max(sizes)

    sequential =
      for k <- 1..longest, into: %{} do
        {k, reps |> Enum.map(&Enum.at(&1.sequential, k - 1)) |> Stats.median()}
      end

    rss = reps |> Enum.flat_map(& &1.dspy_rss) |> Enum.reject(&is_nil/1)

    %{
      sizes: sizes,
      repetitions: length(reps),
      cores: cores(),
      pool_ms: Map.new(sizes, &{&1, median_of.(:pool, &1)}),
      sequential_ms: sequential,
      v2_ms: Map.new(sizes, &{&1, median_of.(:v2, &1)}),
      dspy_worker_rss: if(rss == [], do: nil, else: Enum.sum(rss) / length(rss))
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
