defmodule Bench.Targets do
  @moduledoc """
  The issue's targets, each computed from figures of the same run: a name, the measured value,
  the limit, and pass/fail (`nil` when the run did not measure it).
  """

  alias Bench.{Format, SchedMonitor, Throughput}
  alias Bench.Report.Tables

  @mb 1024 * 1024

  def evaluate(results) do
    cases = results[:throughput] || []

    [
      v2_target(find(cases, 2, 16, 100)),
      ratio_target(
        "Throughput ≥ 0.9× the limit (2 workers, 16 callers, 100 B, `concurrency: 1`)",
        find(cases, 2, 16, 100),
        :raw,
        {:>=, 0.9}
      ),
      pipelined_target(results[:pipelined]),
      sequential_latency(find(cases, 1, 1, 100)),
      ratio_target(
        "1 MB payloads: throughput ≥ 0.9× the limit (2 workers, 16 callers)",
        find(cases, 2, 16, @mb),
        :raw,
        {:>=, 0.9}
      )
    ] ++
      startup_targets(results[:startup]) ++
      [nif_calls(results[:nif_probe], results[:long_schedule])]
  end

  defp find(cases, workers, callers, payload) do
    Enum.find(cases, &(&1.workers == workers and &1.callers == callers and &1.payload == payload))
  end

  defp ratio_target(name, nil, _peer, limit), do: target(name, nil, limit, "not measured")

  defp ratio_target(name, result, peer, limit) do
    errors = result.native[:errors] || 0
    note = if errors > 0, do: "#{errors} native errors", else: nil
    target(name, Throughput.ratio(result, peer), limit, note)
  end

  defp pipelined_target(nil),
    do:
      target(
        "Pipelined: `concurrency: 8` ≥ 1.5× the limit (2 workers, 16 callers, 100 B)",
        nil,
        {:>=, 1.5},
        "not measured"
      )

  defp pipelined_target(p) do
    ratio = fn value -> p.raw && value && value / p.raw end

    target(
      "Pipelined: `concurrency: #{p.concurrency}` ≥ 1.5× the limit (2 workers, #{p.callers} callers, 100 B)",
      ratio.(p.pipelined),
      {:>=, 1.5},
      "#{Format.short_rate(p.pipelined)} req/s against the limit's #{Format.short_rate(p.raw)} " <>
        "(each pool alone, medians of #{p.rounds} rounds); the bridge alone on frames written in " <>
        "advance: #{Format.short_rate(p.bridge_alone)} (#{Format.ratio(ratio.(p.bridge_alone))})"
    )
  end

  # V2 is measured on both bridges (stdlib json in Python, as V2 shipped, and this project's
  # orjson one); the target is judged against the faster.
  defp v2_target(result) do
    name = "Throughput ≥ 2.5× V2 on its faster bridge (2 workers, 16 callers, 100 B)"

    case result do
      %{v2_orjson: %{throughput: orjson}, v2: %{throughput: stdlib}} when orjson > 0 ->
        faster = if orjson >= stdlib, do: :v2_orjson, else: :v2
        target = ratio_target(name, result, faster, {:>=, 2.5})

        note =
          "V2 with stdlib json (as shipped): #{Format.short_rate(stdlib)} req/s, " <>
            "#{Format.ratio(Throughput.ratio(result, :v2))}; on this project's orjson bridge: " <>
            "#{Format.short_rate(orjson)} req/s, #{Format.ratio(Throughput.ratio(result, :v2_orjson))}"

        %{target | note: Enum.join(Enum.reject([target.note, note], &is_nil/1), "; ")}

      _ ->
        ratio_target(name, result, :v2, {:>=, 2.5})
    end
  end

  defp sequential_latency(result) do
    name = "p50 latency of one sequential caller ≤ 1.25× the raw client's (1 worker, 100 B)"

    ratio =
      with %{native: %{p50_us: native}, raw: %{p50_us: raw}} when raw > 0 <- result do
        native / raw
      else
        _ -> nil
      end

    target(name, ratio, {:<=, 1.25}, nil)
  end

  defp startup_targets(nil), do: []

  defp startup_targets(startup) do
    n = startup.pss_workers
    one = startup.one_start_ms

    [
      target(
        "Pool of #{n} ready ≤ 1.3× one worker's start (forked from a template that imports DSPy)",
        one && startup.forked_ms[n] / one,
        {:<=, 1.3},
        "one worker's start: a pool of 1 with `preload: false`, #{Format.ms(one)}"
      ),
      target(
        "A killed worker replaced and answering ≤ 50 ms (forked; ratio to 50 ms)",
        startup.replace_forked_ms && startup.replace_forked_ms / 50,
        {:<=, 1.0},
        "#{Format.ms(startup.replace_forked_ms)}; spawned: #{Format.ms(startup.replace_spawned_ms)}"
      ),
      target(
        "PSS of #{n} forked workers (and their template) ≤ 2.5× one spawned worker's",
        startup.pss_one && startup.pss_forked / startup.pss_one,
        {:<=, 2.5},
        "#{Format.memory(startup.pss_forked)} against #{Format.memory(startup.pss_one)}"
      )
    ]
  end

  @nif_target "No NIF call over 1 ms on a normal scheduler"

  # Judged on the traced NIF durations, timed by two clocks in two runs of the same calls. Each
  # over-counts in its own way (wall time includes the OS preempting the scheduler; CPU time
  # whatever else ran on its thread between the trace events), and a call that really holds a
  # scheduler for over 1 ms shows on both: so a function's bound is the lower of its two maxima.
  # long_schedule events are quoted beside it, since on two shared cores most of them are the OS
  # preempting the VM.
  defp nif_calls(nil, events), do: long_schedule_only(events)

  defp nif_calls(probe, events) do
    normal = Enum.filter(probe.rows, &(&1.scheduler == :normal))

    case Enum.max_by(normal, &bound_us/1, fn -> nil end) do
      nil ->
        long_schedule_only(events)

      row ->
        bound = bound_us(row)

        %{
          name: @nif_target,
          value: bound / 1000,
          limit: "≤ 1 ms",
          shown:
            "#{Format.latency(bound)} (`#{row.function}`, #{row.label}): longest " <>
              "wall #{Format.latency(row.wall_max_us)}, CPU #{Format.latency(row.cpu_max_us)}",
          pass: bound <= 1000,
          note:
            "the lower of the two clocks' longest, which a call over 1 ms would exceed on both; " <>
              long_schedule_note(events)
        }
    end
  end

  defp bound_us(%{wall_max_us: wall, cpu_max_us: nil}), do: wall
  defp bound_us(%{wall_max_us: wall, cpu_max_us: cpu}), do: min(wall, cpu)

  defp long_schedule_only(nil), do: target(@nif_target, nil, {:<=, 1}, "not measured")

  defp long_schedule_only(events) do
    library = Enum.filter(events, &SchedMonitor.library_event?/1)
    longest = library |> Enum.map(& &1.ms) |> Enum.max(fn -> 0 end)

    %{
      name: @nif_target,
      value: longest,
      limit: "≤ 1 ms",
      shown: "#{longest} ms (long_schedule)",
      pass: library == [],
      note: long_schedule_note(events)
    }
  end

  defp long_schedule_note(nil), do: "long_schedule not monitored"

  defp long_schedule_note(events) do
    count = fn kind -> Enum.filter(events, &(Tables.phase_kind(&1.phase) == kind)) end
    native = count.("native")
    max = native |> Enum.map(& &1.ms) |> Enum.max(fn -> 0 end)

    "long_schedule: #{length(native)} events in native phases (longest #{max} ms), " <>
      "#{length(count.("v2"))} in V2 phases, which call no NIF (see Long schedules in bench/results/results.md)"
  end

  defp target(name, value, {op, limit}, note) do
    pass =
      case value do
        nil -> nil
        v when op == :>= -> v >= limit
        v when op == :<= -> v <= limit
      end

    %{
      name: name,
      value: value,
      limit: "#{if op == :>=, do: "≥", else: "≤"} #{limit}×",
      shown: if(value, do: Format.ratio(value), else: "–"),
      pass: pass,
      note: note
    }
  end
end
