defmodule Bench.Pipelined do
  @moduledoc """
  Requests pipelined per worker, against both ceilings, for 2 workers, a 100 B echo and 16
  callers. Each round measures, back to back so that they see the same machine:

    * `raw`: bench/raw_limit driving the 2 workers from 2 threads, one per worker, pinned as
      the pool pins them: the best a client can do one request at a time per worker (the
      limit);
    * `bridge_alone`: the 2 bridges serving request frames written in advance, no client at all
      (the ceiling that pipelining reaches toward);
    * `serial` and `pipelined`: DSPex.NativePool at `concurrency: 1` and at `concurrency`,
      each pool alone (a pool pins its workers to CPUs only if no other pool holds them).

  Medians over the rounds are reported.
  """

  alias Bench.{Load, Python, RawLimit, SchedMonitor, Stats}

  @workers 2
  @payload 100

  def run(plan, opts \\ []) do
    callers = Keyword.get(opts, :callers, 16)
    concurrency = Keyword.get(opts, :concurrency, 8)
    on_round = Keyword.get(opts, :on_round, fn _round, _result -> :ok end)
    window = plan.window_ms

    rounds =
      for round <- 1..plan.rounds do
        SchedMonitor.phase(:raw)
        raw = raw(plan, :one_thread_per_worker)
        alone = raw(plan, :bridge_alone)
        SchedMonitor.phase(:native)
        serial = native(1, callers, plan)
        pipelined = native(concurrency, callers, plan)
        result = %{raw: raw, bridge_alone: alone, serial: serial, pipelined: pipelined}
        on_round.(round, result)
        result
      end

    median = fn key ->
      rounds |> Enum.map(& &1[key]) |> Enum.reject(&is_nil/1) |> Stats.median()
    end

    %{
      workers: @workers,
      payload: @payload,
      callers: callers,
      concurrency: concurrency,
      rounds: length(rounds),
      window_ms: window,
      raw: median.(:raw),
      bridge_alone: median.(:bridge_alone),
      serial: median.(:serial),
      pipelined: median.(:pipelined)
    }
  end

  defp raw(plan, mode) do
    c = %{workers: @workers, callers: @workers, payload: @payload}
    extra = if mode == :bridge_alone, do: ["--bridge-alone", "true"], else: []

    case RawLimit.run(c, plan, extra) do
      %{throughput: throughput} -> throughput
      %{error: _} -> nil
    end
  end

  defp native(concurrency, callers, plan) do
    pool = :"bench_pipelined_#{concurrency}"
    opts = Python.native_options(pool, @workers) ++ [concurrency: concurrency]
    {:ok, pid} = DSPex.NativePool.start_link(opts)
    args = %{"data" => String.duplicate("x", @payload)}

    call = fn ->
      Bench.Throughput.echoed(DSPex.NativePool.execute("echo", args, pool: pool), args)
    end

    pids = pool |> DSPex.NativePool.stats() |> Map.fetch!(:workers) |> Enum.map(& &1.os_pid)

    load =
      Load.run(call,
        callers: callers,
        warmup_ms: plan.warmup_ms,
        window_ms: plan.window_ms,
        python_pids: pids
      )

    GenServer.stop(pid)
    load.throughput
  end
end
