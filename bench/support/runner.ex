defmodule Bench.Runner do
  @moduledoc """
  `mix run run.exs [--quick | --full] [--only SECTIONS] [--benchmarks-md]` in bench/

    * `--quick` (default): a subset covering every target, about 1–2 minutes;
    * `--full`: every payload × callers × workers case, about 15 minutes; also writes
      BENCHMARKS.md;
    * `--only json,throughput,pipelined,startup,memory,nif`: just those sections (for working on one);
    * `--benchmarks-md`: write BENCHMARKS.md from a quick run too;
    * `--raw-handoff barging|fifo|dispatch`: how raw_limit's client threads share workers
      (default barging, its highest throughput; see bench/raw_limit/src/sharing.rs).
  """

  alias Bench.{JsonCost, Machine, Memory, NifProbe, OS, Plan, Python, RawLimit, SchedMonitor}
  alias Bench.{Pipelined, Startup}
  alias Bench.{Targets, Throughput}
  alias Bench.Report.{Documents, Tables}

  @sections ~w(json throughput pipelined startup memory nif)

  def main(argv) do
    opts = parse_args(argv)
    plan = Plan.get(opts.mode, opts.overrides)
    say("DSPex.NativePool benchmarks, #{plan.mode} run: #{length(plan.cases)} echo cases")
    machine = Machine.describe()
    clock = {System.monotonic_time(:millisecond), OS.steal_ms()}

    say(
      "#{machine.nproc} × #{machine.cpu}; load average #{machine.load_average}; python #{Python.executable()}"
    )

    say("building bench/raw_limit (cargo build --release in bench/raw_limit)")
    RawLimit.build!()
    {:ok, _} = SchedMonitor.start_link()

    results =
      for {key, field, title, run} <- sections(),
          key in opts.only,
          into: %{plan: plan, command: command(argv)} do
        {field, section(field, title, fn -> run.(plan) end)}
      end

    SchedMonitor.phase(:report)
    events = SchedMonitor.events()
    SchedMonitor.stop()

    results =
      Map.merge(results, %{
        long_schedule: events,
        machine:
          Map.merge(machine, %{load_average_end: OS.load_average(), steal: steal(clock, machine)}),
        finished_at: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_string(),
        write_benchmarks_md: opts.only == @sections and (opts.benchmarks_md or plan.mode == :full)
      })

    results = Map.put(results, :targets, Targets.evaluate(results))
    files = Documents.write(results, Python.root(), results_dir(opts, plan))
    say("\nTargets:\n" <> Tables.targets(results.targets))
    say("Wrote " <> Enum.map_join(files, ", ", &Path.relative_to(&1, Python.root())))
  end

  # The hypervisor's steal over the run, against all the CPU time the machine had in it.
  defp steal({started, stolen}, machine) do
    %{
      ms: OS.steal_ms() - stolen,
      of_ms: (System.monotonic_time(:millisecond) - started) * machine.nproc
    }
  end

  # In running order: {name for --only, key in the results, title, function of the plan}.
  defp sections do
    [
      {"json", :json_cost, "JSON codec cost (V2)", &JsonCost.run/1},
      {"throughput", :throughput, "Echo throughput and latency", &Throughput.run/1},
      {"pipelined", :pipelined, "Echo pipelined per worker (concurrency 8)", &Pipelined.run/1},
      {"startup", :startup, "Start-up (workers import DSPy)", &Startup.run/1},
      {"memory", :memory, "Memory", &Memory.run/1},
      {"nif", :nif_probe, "NIF call durations (traced)", &NifProbe.run/1}
    ]
  end

  defp section(field, title, fun) do
    say("\n== #{title}")
    SchedMonitor.phase(field)
    {us, result} = :timer.tc(fun)
    say("   (#{Float.round(us / 1_000_000, 1)} s)")
    result
  end

  defp parse_args(argv) do
    {parsed, rest, invalid} =
      OptionParser.parse(argv,
        strict: [
          quick: :boolean,
          full: :boolean,
          only: :string,
          benchmarks_md: :boolean,
          raw_handoff: :string
        ]
      )

    if rest != [] or invalid != [] do
      raise ArgumentError, "unknown arguments #{inspect(rest ++ invalid)}\n#{@moduledoc}"
    end

    only = if parsed[:only], do: String.split(parsed[:only], ","), else: @sections

    case only -- @sections do
      [] ->
        :ok

      unknown ->
        raise ArgumentError, "unknown sections #{inspect(unknown)}; known: #{inspect(@sections)}"
    end

    %{
      mode: if(parsed[:full], do: :full, else: :quick),
      only: only,
      benchmarks_md: parsed[:benchmarks_md] || false,
      overrides: Map.new(Keyword.take(parsed, [:raw_handoff]))
    }
  end

  # Only a full run of every section replaces the results BENCHMARKS.md reports and links to;
  # a quick run, or a run of some sections, writes beside them (neither is kept in git).
  defp results_dir(opts, plan) do
    partial? = Enum.sort(opts.only) != Enum.sort(@sections)

    sub =
      cond do
        partial? -> "partial"
        plan.mode == :full -> ""
        true -> Atom.to_string(plan.mode)
      end

    Path.join([Python.root(), "bench/results", sub])
  end

  defp command(argv), do: Enum.join(["mix run run.exs" | argv], " ")

  defp say(line), do: IO.puts(line)
end
