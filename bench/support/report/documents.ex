defmodule Bench.Report.Documents do
  @moduledoc """
  Writes a run's results: `results.md` (every table), `throughput.svg` (the chart) and
  `results.json` (the raw figures, for comparing runs) into `bench/results/` (`bench/results/partial/`
  for a run of some sections only, so it never replaces a whole run's) and, for a full run,
  `BENCHMARKS.md` at the repository root.
  """

  alias Bench.Report.{Chart, Tables}
  alias Bench.{Format, JSON}

  @doc "Writes into `dir`; BENCHMARKS.md goes to `root` if `results.write_benchmarks_md`."
  def write(results, root, dir) do
    File.mkdir_p!(dir)
    files = [Path.join(dir, "results.md")]
    File.write!(Path.join(dir, "results.md"), results_md(results))

    files =
      if results[:throughput] do
        File.write!(Path.join(dir, "throughput.svg"), Chart.svg(results.throughput))
        files ++ [Path.join(dir, "throughput.svg")]
      else
        files
      end

    File.write!(Path.join(dir, "results.json"), JSON.encode!(plain(results)))
    files = files ++ [Path.join(dir, "results.json")]

    if results.write_benchmarks_md do
      File.write!(Path.join(root, "BENCHMARKS.md"), benchmarks_md(results))
      files ++ [Path.join(root, "BENCHMARKS.md")]
    else
      files
    end
  end

  def results_md(r) do
    """
    # DSPex.NativePool benchmark results

    #{run_line(r)}

    #{sections(r, "throughput.svg")}
    ## Machine

    #{Tables.machine(r.machine)}
    ## Method

    #{method(r.plan)}
    """
  end

  # The report: the targets (its one table), the chart, the raw JSON, the machine and the
  # command; every other table is in bench/results/results.md.
  def benchmarks_md(r) do
    chart =
      if r[:throughput],
        do: "![Throughput](bench/results/throughput.svg)\n\n",
        else: ""

    """
    # Benchmarks

    DSPex.NativePool against the **limit**, the best a client does one request at a time per
    worker with no BEAM at all: `bench/raw_limit`, a Rust program that spawns the same Python
    bridge with the pool's own code and drives each worker from a thread of its own, pinned as
    the pool pins (with more callers than workers it also runs with its threads sharing the
    workers, and the better counts). Pipelined figures are also given against a second
    ceiling, **the bridge alone**: each worker reading request frames written in advance, with
    no client. **V2** is DSPex V2's design (a checkout pool of Ports, JSON in Elixir), measured
    on its own stdlib-json bridge and on this project's orjson one; its target is judged
    against the faster.

    #{run_line(r)}

    - Machine: #{machine_line(r.machine)}
    - Command: `#{r.command}` (in `bench/`, a Mix project of its own; `mix run bench/run.exs` from
      the root runs it there). `bin/setup` first, once.
    - Raw figures: [bench/results/results.json](bench/results/results.json); every table
      (throughput and latency by case, CPU per request, start-up, memory, NIF durations, long
      schedules) and the method: [bench/results/results.md](bench/results/results.md).

    ## Targets

    #{Tables.targets(r.targets)}
    #{chart}Results depend on the machine and on whatever else runs on it: compare runs made on
    the same, otherwise idle, machine. On a virtual machine the hypervisor's steal (above, and
    for each round of the pool's cases as `steal_share` in results.json) is CPU time the run
    wanted and other guests got: rounds with much of it are noise.

    ## What each change bought

    #{String.trim_trailing(changes())}
    """
  end

  # Kept by hand in bench/changes.md: a run measures the code as it is, not what each change did.
  defp changes, do: File.read!(Path.join(Bench.Python.root(), "bench/changes.md"))

  defp machine_line(m) do
    "#{m.cpu}, #{m.nproc} logical processors, #{m.memory}; #{m.os}; #{m.erlang} " <>
      "(#{m.schedulers}); Elixir #{m.elixir}; #{m.rust || "Rust ?"}; Python #{m.python}, " <>
      "DSPy #{m.dspy || "?"}, orjson #{m.orjson || "–"}; load average #{m.load_average} at " <>
      "start, #{m[:load_average_end] || "?"} at end; CPU time stolen by the hypervisor: #{Format.steal(m[:steal])}"
  end

  defp run_line(r) do
    "Mode **#{r.plan.mode}** (`#{r.command}`), #{r.finished_at}, #{r.machine.nproc} × #{r.machine.cpu}; " <>
      "load average #{r.machine.load_average} at start, #{r.machine[:load_average_end]} at end; " <>
      "CPU time stolen by the hypervisor: #{Format.steal(r.machine[:steal])}."
  end

  # The results sections shared by both documents; `chart` is the SVG's path from the document.
  defp sections(r, chart) do
    [
      section("Targets", r[:targets], &Tables.targets/1),
      section("Throughput and latency", r[:throughput], fn cases ->
        Tables.throughput(cases) <>
          "\n![Throughput](#{chart})\n\n" <>
          "p50/p99: latency of each call as its caller sees it, waiting for a worker included. " <>
          "Raw is the better of its client threads sharing the workers by " <>
          "`#{r.plan.raw_handoff}` hand-off and one client thread per worker" <>
          if(r.plan.raw_handoff == "barging",
            do:
              "; sharing, a freed worker goes to whichever thread asks first, usually the one " <>
                "that just freed it, so where that wins raw's p99 reflects starved threads, " <>
                "not a fair queue.\n",
            else: ".\n"
          )
      end),
      section("Pipelined per worker (`concurrency` above 1)", r[:pipelined], fn p ->
        Tables.pipelined(p) <>
          "\nEach peer alone on the machine (a pool pins its workers to CPUs only if no other " <>
          "pool holds them), back to back in each of #{p.rounds} rounds of #{p.window_ms} ms; " <>
          "medians. *The limit* is raw_limit with one client thread per worker, pinned; *the " <>
          "bridge alone* is each worker reading request frames written in advance from a file, " <>
          "its replies only counted, with no client at all.\n"
      end),
      section("Where the CPU goes (µs of CPU per request)", r[:throughput], fn cases ->
        Tables.cpu(cases) <>
          "\nCPU time over the measured window divided by the requests completed in it. *VM* is " <>
          "the whole BEAM OS process (schedulers, including their busy-waiting, and the NIF's " <>
          "threads); *client* is the `raw_limit` process; *Python* is all workers together. " <>
          "Read from /proc (10 ms ticks).\n"
      end),
      section("Start-up to a ready pool (workers import DSPy)", r[:startup], fn s ->
        Tables.startup(s) <>
          "\nMedians of #{s.repetitions} repetition(s); #{s.cores} cores. *One worker's start* " <>
          "is the spawned pool of 1. Resident memory of a spawned worker after `import dspy`: " <>
          "#{Format.memory(s.dspy_worker_rss)}. PSS is read from `/proc/PID/smaps_rollup` after " <>
          "a call into DSPy on every worker.\n"
      end),
      section("Memory", r[:memory], &Tables.memory/1),
      section(
        "Long schedules (`:erlang.system_monitor`, `{:long_schedule, 1}`)",
        r[:long_schedule],
        fn events ->
          Tables.long_schedule(events) <>
            "\nAn event means a process ran for 1 ms or more without yielding its scheduler, " <>
            "for whatever reason: a long NIF, or the OS giving the scheduler's core to another " <>
            "thread (two cores are shared with the Python workers, the NIF's threads and, on a " <>
            "busy machine, other programs). The *v2* phases call no NIF, and in the *raw* phases " <>
            "the VM is idle: their counts are the noise to compare the *native* phases with. The " <>
            "NIF target is judged on the traced NIF durations below.\n"
        end
      ),
      section("NIF calls, traced", r[:nif_probe], fn probe ->
        Tables.nif_probe(probe) <>
          "\nEvery `DSPex.NativePool.Nif` call of one process, timed from call to return by trace " <>
          "timestamps: *CPU* is the scheduler thread's CPU time (`:cpu_timestamp`), *wall* includes " <>
          "any time the OS gave the core to another thread. The two clocks come from two runs of " <>
          "the same calls and each over-counts in its own way (CPU time also counts whatever " <>
          "else ran on the thread between the trace events), so the target takes, per NIF, the " <>
          "lower of the two maxima: a call that really held its scheduler for over 1 ms exceeds " <>
          "it on both. Dirty NIFs have no CPU figures: their call and return are traced on " <>
          "two threads, whose CPU clocks do not compare. Dirty NIFs (from the crate's " <>
          "source): " <>
          "#{Enum.map_join(probe.dirty, ", ", &"`#{&1}`")}.\n"
      end),
      section("JSON in Elixir (V2's codec, `Bench.JSON`), per request", r[:json_cost], fn rows ->
        Tables.json_cost(rows) <>
          "\nV2 pays one encode and one decode per call, in the calling process. Jason is not " <>
          "available here; `Bench.JSON` finds runs of plain bytes with `:binary.match/2` and skips " <>
          "UTF-8 validation, so if anything it is cheaper than Jason.\n"
      end)
    ]
    |> Enum.reject(&is_nil/1)
    |> Enum.join("\n")
  end

  defp section(_title, nil, _render), do: nil
  defp section(title, data, render), do: "## #{title}\n\n" <> render.(data)

  defp method(plan) do
    """
    * **Workload.** The bridge's built-in `echo`: arguments `%{"data" => <N bytes of "x">}`, and the
      same map back, for N = 100 B, 10 KB and 1 MB. Each call checks the echo came back whole.
    * **Peers.** *NativePool*: `DSPex.NativePool.execute/3`. *V2*: `bench/support/v2/` — a
      NimblePool-style checkout pool; on checkout the worker's Port (`{:spawn_executable, python}`,
      `[:binary, {:packet, 4}, :nouse_stdio, :exit_status]`) is `Port.connect`ed to the caller, which
      encodes, sends, receives and decodes itself and checks the worker back in (V2's per-request
      Logger calls are left out). Its workers run the bridge with `DSPEX_WORKER_JSON=json`, the
      standard library's JSON, since V2's own bridge had no accelerator; in the V2 target's case a
      second V2 pool on the orjson bridge is measured too, and the target's note quotes it. *Raw*: `bench/raw_limit`, N worker processes spawned by the pool's
      own Rust code (`dspex_pool_core`: fds 3/4, same framing and envelope) and C client threads.
      By default (`--raw-handoff barging`) a client takes an idle worker, does the round trip
      itself and gives it back, and a freed worker goes to whoever asks first: no thread sits
      between a client and a pipe, the highest throughput this program reaches. With more clients
      than workers, OS threads handing workers to each other cost CPU that BEAM processes do not,
      so for those cases the same program also runs with one client thread per worker, back to
      back, and the limit is the better of the two (`clients` in `results.json` says which):
      the best this client does, one request at a time per worker. `fifo` (fair hand-off) and
      `dispatch` (a thread per worker serving a queue, the pool's design without the BEAM) are
      the alternatives. All peers run the same interpreter, script and arguments.
    * **CPU placement.** NativePool runs with its defaults, so a pool of 1 or 2 workers pins
      each worker and its slot thread to a CPU of its own (`pin_cpus`), and a pool of 4 on two
      cores pins nothing. `raw_limit` applies the same rule (`--pin-cpus true`, its default), and
      its client threads move to their worker's CPU when they do not outnumber the workers, so
      the limit is measured on the same placement; pinned, its lone-caller round trip is about
      six times faster than unpinned on this VM. V2's workers are not pinned: V2 had no such
      option.
    * **Load.** A closed loop: C callers (BEAM processes, or threads for raw) each send their next
      request as soon as the last returns. #{plan.warmup_ms} ms of warm-up, then a #{plan.window_ms} ms
      window; a request counts if it completes inside the window. Throughput is that count over the
      window. Latency is measured around each call; p50/p99 are nearest-rank.
    * **Rounds.** One native pool and one V2 pool per worker count. Each case runs
      #{plan.rounds} rounds of native, V2, raw, back to back, so all three see the same machine:
      it is shared, its load drifts, and on a small VM a round trip costs several times more
      when the OS puts its two ends on different cores than on the same one, which changes from
      run to run. A case reports the mean throughput of its rounds and the median of their
      p50s and p99s; `results.json` has every round.
    * **Start-up.** Time from `start_link` to its return (every worker answered its init ping) with
      every worker importing DSPy (`bench/python/bench_dspy_handlers.py`), against N single-worker
      pools started one after another. The first start of a run only warms the page cache.
    * **Memory.** Deltas of `:erlang.memory(:total)`, of the VM's VmRSS and of its thread count,
      after a garbage collection of every process. Memory the NIF takes from the system allocator
      shows in VmRSS only. Python's VmRSS is separate, per worker.
    * **Long schedules.** `:erlang.system_monitor(self(), [{:long_schedule, 1}])` for the whole run
      (1 ms is the smallest threshold the VM offers).
    * **Caveats.** Two cores are shared by the VM's schedulers, the NIF's threads and the Python
      workers, so CPU spent anywhere costs throughput everywhere. A quick run (#{quick_note()}) is a
      smoke test, not a measurement.
    """
  end

  defp quick_note do
    quick = Bench.Plan.get(:quick)

    "#{quick.rounds} rounds of #{quick.warmup_ms} ms warm-up and #{quick.window_ms} ms window, " <>
      "one start-up repetition"
  end

  # Atoms, tuples and MFAs become strings so the figures can be written as JSON.
  defp plain(results) do
    results
    |> Map.drop([:write_benchmarks_md])
    |> plain_value()
  end

  defp plain_value(%{__struct__: _} = struct), do: inspect(struct)

  defp plain_value(map) when is_map(map),
    do: Map.new(map, fn {k, v} -> {plain_key(k), plain_value(v)} end)

  defp plain_value(list) when is_list(list), do: Enum.map(list, &plain_value/1)
  defp plain_value(tuple) when is_tuple(tuple), do: inspect(tuple)
  defp plain_value(value) when is_float(value), do: Float.round(value, 3)

  defp plain_value(value) when is_pid(value) or is_port(value) or is_reference(value),
    do: inspect(value)

  defp plain_value(value) when is_function(value), do: inspect(value)
  defp plain_value(value), do: value

  defp plain_key(key) when is_atom(key) or is_binary(key), do: key
  defp plain_key(key), do: inspect(key)
end
