defmodule Bench.Report.Tables do
  @moduledoc "The Markdown tables of a run, one function per section."

  alias Bench.{Format, SchedMonitor, Throughput}

  def targets(targets) do
    rows =
      Enum.map(targets, fn t ->
        verdict =
          case t.pass do
            true -> "**pass**"
            false -> "**FAIL**"
            nil -> "n/a"
          end

        [t.name, t.shown, t.limit, verdict, t.note || ""]
      end)

    table(["Target", "Measured", "Limit", "Result", "Note"], rows)
  end

  def throughput(cases) do
    rows =
      Enum.map(cases, fn c ->
        [Format.bytes(c.payload), c.workers, c.callers] ++
          peer_cells(c.native) ++
          peer_cells(c.v2) ++
          peer_cells(c.raw) ++
          [Format.ratio(Throughput.ratio(c, :v2)), Format.ratio(Throughput.ratio(c, :raw))]
      end)

    table(
      ["Payload", "Workers", "Callers"] ++
        peer_headers("NativePool") ++
        peer_headers("V2") ++ peer_headers("Raw") ++ ["Native ÷ V2", "Native ÷ raw"],
      rows
    )
  end

  defp peer_headers(name), do: ["#{name} req/s", "p50", "p99"]

  defp peer_cells(%{error: error}), do: ["failed: #{error}", "", ""]

  defp peer_cells(r) do
    errors = if r.errors > 0, do: " (#{r.errors} err)", else: ""
    [Format.rate(r.throughput) <> errors, Format.latency(r.p50_us), Format.latency(r.p99_us)]
  end

  @doc "Where the CPU went: µs of CPU per request on the client side and in Python."
  def cpu(cases) do
    rows =
      Enum.map(cases, fn c ->
        [Format.bytes(c.payload), c.workers, c.callers] ++
          Enum.flat_map([c.native, c.v2, c.raw], fn r ->
            [Format.us(r[:client_cpu_us_per_req]), Format.us(r[:python_cpu_us_per_req])]
          end)
      end)

    table(
      ["Payload", "Workers", "Callers", "NativePool: VM", "Python", "V2: VM", "Python"] ++
        ["Raw: client", "Python"],
      rows
    )
  end

  def pipelined(p) do
    rate = fn value -> if value, do: Format.int(value), else: "–" end
    ratio = fn value -> Format.ratio(p.raw && value && value / p.raw) end

    table(
      ["#{p.workers} workers, #{Format.bytes(p.payload)} echo", "req/s", "÷ the limit"],
      [
        ["The limit: raw client, one thread per worker", rate.(p.raw), "1.00×"],
        [
          "The bridge alone, frames written in advance",
          rate.(p.bridge_alone),
          ratio.(p.bridge_alone)
        ],
        ["NativePool, `concurrency: 1`, #{p.callers} callers", rate.(p.serial), ratio.(p.serial)],
        [
          "NativePool, `concurrency: #{p.concurrency}`, #{p.callers} callers",
          rate.(p.pipelined),
          ratio.(p.pipelined)
        ]
      ]
    )
  end

  def startup(s) do
    rows =
      Enum.map(s.sizes, fn n ->
        [
          n,
          Format.ms(s.forked_ms[n]),
          Format.ratio(s.one_start_ms && s.forked_ms[n] / s.one_start_ms),
          Format.ms(s.spawned_ms[n]),
          Format.ratio(s.one_start_ms && s.spawned_ms[n] / s.one_start_ms),
          Format.ms(s.v2_ms[n])
        ]
      end)

    table(
      [
        "Workers N",
        "Forked (`preload: :auto`): ready",
        "÷ one worker's start",
        "Spawned (`preload: false`): ready",
        "÷ one worker's start",
        "V2 pool ready"
      ],
      rows
    ) <>
      "\n" <>
      table(
        ["", "Forked from the template", "Spawned"],
        [
          [
            "`kill -9` of a worker to its replacement's first answer",
            Format.ms(s.replace_forked_ms),
            Format.ms(s.replace_spawned_ms)
          ],
          [
            "PSS of the Python processes",
            "#{Format.memory(s.pss_forked)} (#{s.pss_workers} workers and their template)",
            "#{Format.memory(s.pss_one)} (1 worker)"
          ]
        ]
      )
  end

  def memory(m) do
    idle = fn label, r ->
      [
        label,
        Format.memory(r.per_worker.erlang),
        Format.memory(r.per_worker.rss),
        Format.decimals(r.per_worker.threads, 1),
        "#{Format.memory(r.per_pool.erlang)} / #{Format.memory(r.per_pool.rss)}",
        Format.memory(r.python_rss_bytes)
      ]
    end

    idle_table =
      table(
        ["Idle worker", "`:erlang.memory` Δ", "VM RSS Δ", "VM threads Δ"] ++
          ["Pool fixed cost (`:erlang.memory` / RSS)", "Python VmRSS"],
        [idle.("NativePool", m.idle_native), idle.("V2", m.idle_v2)]
      )

    flight = fn label, r ->
      [
        label,
        Format.memory(r.erlang_bytes_per_request),
        Format.memory(r.rss_bytes_per_request),
        Format.memory(r.erlang_bytes),
        Format.int(r.queued_at_peak),
        Format.ms(r.submit_ms),
        "#{r.ok}/#{m.in_flight}"
      ]
    end

    flight_table =
      table(
        [
          "#{Format.int(m.in_flight)} echo requests in flight (100 B)",
          "`:erlang.memory` Δ per request"
        ] ++
          [
            "VM RSS Δ per request",
            "`:erlang.memory` Δ total",
            "queued in Rust",
            "to submit all",
            "ok"
          ],
        [
          flight.("NativePool (`execute_async`, one process)", m.in_flight_native),
          flight.("V2 (a process per call)", m.in_flight_v2)
        ]
      )

    idle_table <>
      "\nPer worker: `(pool of 5 − pool of 1) / 4`, median of 3 measurements. Python's VmRSS " <>
      "is each worker's own, " <>
      "outside the VM.\n\n" <>
      flight_table <>
      "\nBoth workers run a 1.5 s `sleep` while the echoes are submitted, so they are all " <>
      "waiting when memory is read.\n"
  end

  @doc "The longest `long_schedule` events, and the longest per phase kind."
  def long_schedule(events) do
    by_kind =
      events
      |> Enum.group_by(&phase_kind(&1.phase))
      |> Enum.map(fn {kind, list} ->
        library = Enum.count(list, &SchedMonitor.library_event?/1)
        [kind, length(list), "#{Enum.max_by(list, & &1.ms).ms} ms", library]
      end)
      |> Enum.sort()

    summary =
      table(
        ["Phase", "Events ≥ 1 ms", "Longest", "Scheduled in or out in DSPex.NativePool"],
        by_kind
      )

    top =
      events
      |> Enum.take(10)
      |> Enum.map(fn e -> ["#{e.ms} ms", phase_label(e.phase), mfa(e.in), mfa(e.out)] end)

    if events == [] do
      "No process or port held a normal scheduler for 1 ms or more.\n"
    else
      summary <>
        "\nLongest events:\n\n" <>
        table(["Time", "Phase", "Scheduled in at", "Scheduled out at"], top)
    end
  end

  def nif_probe(probe) do
    rows =
      Enum.map(probe.rows, fn r ->
        [
          "`#{r.function}`",
          r.label,
          r.scheduler,
          r.calls,
          Format.latency(r.cpu_p50_us),
          Format.latency(r.cpu_max_us),
          Format.latency(r.wall_p50_us),
          Format.latency(r.wall_max_us)
        ]
      end)

    table(
      ["NIF", "Payload", "Scheduler", "Calls", "CPU p50", "CPU max", "Wall p50", "Wall max"],
      rows
    )
  end

  def json_cost(rows) do
    table(
      ["Payload", "Encode request", "Decode reply", "Encode + decode"],
      Enum.map(rows, fn r ->
        [
          Format.bytes(r.payload),
          Format.latency(r.encode_us),
          Format.latency(r.decode_us),
          Format.latency(r.encode_us + r.decode_us)
        ]
      end)
    )
  end

  def machine(m) do
    table(
      ["", ""],
      [
        ["CPU", "#{m.cpu}, #{m.nproc} logical processors"],
        ["Memory", m.memory],
        ["OS", m.os],
        ["Erlang", "#{m.erlang}; #{m.schedulers}"],
        ["Elixir", m.elixir],
        ["Rust", m.rust || "?"],
        [
          "Python",
          "#{m.python} (#{m.python_path}), DSPy #{m.dspy || "?"}, orjson #{m.orjson || "–"}"
        ],
        [
          "Load average (1/5/15 min)",
          "#{m.load_average} at start, #{m[:load_average_end] || "?"} at end"
        ],
        ["CPU time stolen by the hypervisor", Format.steal(m[:steal])]
      ]
    )
  end

  def phase_kind({kind, _case}), do: to_string(kind)
  def phase_kind(kind), do: to_string(kind)

  def phase_label({kind, %{payload: p, workers: w, callers: c}}),
    do: "#{kind} #{Format.bytes(p)} w#{w} c#{c}"

  def phase_label(kind), do: to_string(kind)

  def mfa({m, f, a}), do: "`#{inspect(m)}.#{f}/#{a}`"
  def mfa(nil), do: "–"
  def mfa(other), do: "`#{inspect(other)}`"

  @doc "A Markdown table; cells are converted with `to_string/1`."
  def table(headers, rows) do
    line = fn cells -> "| " <> Enum.map_join(cells, " | ", &cell/1) <> " |\n" end
    line.(headers) <> line.(Enum.map(headers, fn _ -> "---" end)) <> Enum.map_join(rows, "", line)
  end

  defp cell(value), do: value |> to_string() |> String.replace("|", "\\|")
end
