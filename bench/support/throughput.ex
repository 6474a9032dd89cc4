defmodule Bench.Throughput do
  @moduledoc """
  The echo cases: for each worker count, one DSPex.NativePool and one V2 pool are started, and
  every case of that worker count runs in rounds of native, then V2, then `raw_limit`, back to
  back, so that the three see the same machine: it is shared and its load drifts, and on a small
  VM a round trip's cost also depends on whether the OS puts the two ends on the same core, which
  changes from run to run. A case's figures combine its rounds (see `Bench.Stats.combine/1`).
  """

  alias Bench.{Format, Load, Python, RawLimit, SchedMonitor, Stats, V2}

  def run(plan) do
    total = length(plan.cases)

    plan.cases
    |> Enum.with_index(1)
    |> Enum.chunk_by(fn {c, _index} -> c.workers end)
    |> Enum.flat_map(&run_group(&1, total, plan))
  end

  defp run_group([{%{workers: workers}, _} | _] = group, total, plan) do
    native = :"bench_native_w#{workers}"
    v2 = :"bench_v2_w#{workers}"
    SchedMonitor.phase(:pool_start)
    {:ok, native_pid} = DSPex.NativePool.start_link(Python.native_options(native, workers))
    {:ok, _} = V2.start_pool(v2, workers, Python.v2_bridge(v2))
    v2_orjson = start_v2_orjson(group)

    try do
      Enum.map(group, fn {c, index} ->
        run_case(c, index, total, {native, v2, v2_orjson}, plan)
      end)
    after
      GenServer.stop(native_pid)
      V2.stop_pool(v2)
      if v2_orjson, do: V2.stop_pool(v2_orjson)
    end
  end

  # V2 on this project's accelerated bridge, measured only in the case of the V2 target, so the
  # report can say how much of the lead over V2 comes from the Python side.
  @orjson_case %{workers: 2, callers: 16, payload: 100}

  defp start_v2_orjson(group) do
    if Enum.any?(group, fn {c, _} -> orjson_case?(c) end) do
      name = :bench_v2_orjson_w2
      {:ok, _} = V2.start_pool(name, 2, Python.v2_bridge(name, nil, json: :orjson))
      name
    end
  end

  defp orjson_case?(c), do: Map.take(c, [:workers, :callers, :payload]) == @orjson_case

  defp run_case(c, index, total, pools, plan) do
    args = %{"data" => String.duplicate("x", c.payload)}
    rounds = for _ <- 1..plan.rounds, do: run_round(c, args, pools, plan)

    combined =
      Map.new(rounds |> hd() |> Map.keys(), fn peer ->
        {peer, rounds |> Enum.map(&Map.fetch!(&1, peer)) |> Stats.combine()}
      end)

    result = Map.merge(c, combined)
    IO.puts(progress_line(index, total, result))
    result
  end

  defp run_round(c, args, {native, v2, v2_orjson}, plan) do
    native_result = measure({:native, c}, plan, native_call(native, args), native_pids(native))
    v2_result = measure_v2(v2, c, args, plan)
    SchedMonitor.phase({:raw, c})
    round = %{native: native_result, v2: v2_result, raw: best_raw(c, plan)}

    if v2_orjson && orjson_case?(c),
      do: Map.put(round, :v2_orjson, measure_v2(v2_orjson, c, args, plan)),
      else: round
  end

  # The limit is the best the raw client does: with more callers than workers, its threads
  # sharing the workers, and one thread per worker (which spends nothing on hand-offs), back
  # to back; `clients` in the result says which.
  defp best_raw(%{callers: callers, workers: workers} = c, plan) when callers > workers do
    [RawLimit.run(c, plan), RawLimit.run(%{c | callers: workers}, plan)]
    |> Enum.reject(&Map.has_key?(&1, :error))
    |> case do
      [] -> RawLimit.run(c, plan)
      runs -> Enum.max_by(runs, & &1.throughput)
    end
  end

  defp best_raw(c, plan), do: RawLimit.run(c, plan)

  # V2.os_pids/1 is a call to the pool, so it also waits for the last checkins to be handled.
  defp measure_v2(pool, c, args, plan) do
    measure({:v2, c}, plan, v2_call(pool, args), V2.os_pids(pool), fn -> V2.os_pids(pool) end)
  end

  defp measure(phase, plan, call, python_pids, settle \\ fn -> :ok end) do
    SchedMonitor.phase(phase)

    Load.run(call,
      callers: elem(phase, 1).callers,
      warmup_ms: plan.warmup_ms,
      window_ms: plan.window_ms,
      python_pids: python_pids,
      settle: settle
    )
  end

  # Each call checks that the echo came back its full size, as the raw client checks its
  # reply's length: comparing a megabyte byte by byte would be the bench's cost, not the pool's.
  # (That echoes come back intact is the test suite's business.)
  defp native_call(pool, args) do
    fn -> echoed(DSPex.NativePool.execute("echo", args, pool: pool), args) end
  end

  defp v2_call(pool, args) do
    fn -> echoed(V2.execute(pool, "echo", args), args) end
  end

  @doc "`:ok` if `reply` is an echo of `args` (`%{\"data\" => text}`) of the same size."
  def echoed({:ok, %{"data" => data}}, %{"data" => sent}) when byte_size(data) == byte_size(sent),
    do: :ok

  def echoed(other, _args), do: {:error, other}

  defp native_pids(pool) do
    pool |> DSPex.NativePool.stats() |> Map.get(:workers, []) |> Enum.map(& &1.os_pid)
  rescue
    _ -> []
  end

  @doc "One line per case: each peer's throughput and latency, and the two ratios."
  def progress_line(index, total, r) do
    peers =
      Enum.map_join([native: "native", v2: "v2", raw: "raw"], " | ", fn {key, label} ->
        peer_summary(label, Map.fetch!(r, key))
      end)

    peers =
      case r do
        %{v2_orjson: v2o} -> peers <> " | " <> peer_summary("v2+orjson", v2o)
        _ -> peers
      end

    width = total |> Integer.to_string() |> String.length()

    "[#{String.pad_leading(to_string(index), width)}/#{total}] " <>
      "#{String.pad_leading(Format.bytes(r.payload), 6)} w#{r.workers} c#{String.pad_trailing(to_string(r.callers), 3)} " <>
      peers <> " | ×v2 #{Format.ratio(ratio(r, :v2))} ×raw #{Format.ratio(ratio(r, :raw))}"
  end

  defp peer_summary(label, %{error: error}), do: "#{label} FAILED: #{error}"

  defp peer_summary(label, result) do
    errors = if result.errors > 0, do: " (#{result.errors} errors)", else: ""

    "#{label} #{Format.short_rate(result.throughput)}/s " <>
      "p50 #{Format.latency(result.p50_us)} p99 #{Format.latency(result.p99_us)}#{errors}"
  end

  @doc "Native throughput over a peer's, or nil if either failed."
  def ratio(result, peer) do
    with %{throughput: native} when native > 0 <- result.native,
         %{throughput: other} when other > 0 <- Map.fetch!(result, peer) do
      native / other
    else
      _ -> nil
    end
  end
end
