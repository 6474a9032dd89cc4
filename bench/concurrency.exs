# Echo on workers that run many requests at once, against the raw limit, in one run.
#
#   mix run bench/concurrency.exs [--rounds 3] [--window-ms 1500] [--callers 16] [--concurrency 8]
#
# Each round measures, back to back so that they see the same machine:
#
#   * raw: bench/raw_limit driving 2 workers from 2 threads, one per worker, pinned as the
#     pool pins them: the best a client can do one request at a time per worker;
#   * native at `concurrency: 1` and at `--concurrency`, 2 workers, `--callers` callers each
#     calling `execute("echo", 100 B)` back to back.
#
# Each pool runs alone (a pool pins its workers to CPUs only if no other pool holds them, as
# raw_limit pins its own). It prints each round and the median of each peer's throughput, with
# the ratios to raw.

Logger.configure(level: :warning)

__DIR__
|> Path.join("support/**/*.ex")
|> Path.wildcard()
|> Kernel.ParallelCompiler.require()

defmodule ConcurrencyBench do
  alias Bench.{Format, Load, Python, RawLimit, Stats}

  @workers 2
  @payload 100

  def main(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [rounds: :integer, window_ms: :integer, callers: :integer, concurrency: :integer]
      )

    rounds = Keyword.get(opts, :rounds, 3)
    window = Keyword.get(opts, :window_ms, 1_500)
    callers = Keyword.get(opts, :callers, 16)
    concurrency = Keyword.get(opts, :concurrency, 8)
    RawLimit.build!()

    IO.puts("2 workers, #{@payload} B echo, #{callers} callers; raw: 1 thread per worker\n")

    results =
      for round <- 1..rounds do
        raw = raw(window)
        serial = native(1, callers, window)
        multiplexed = native(concurrency, callers, window)

        IO.puts(
          "round #{round}: raw #{Format.int(raw)}, concurrency 1 #{Format.int(serial)}, " <>
            "concurrency #{concurrency} #{Format.int(multiplexed)} req/s"
        )

        %{raw: raw, serial: serial, multiplexed: multiplexed}
      end

    median = fn key -> results |> Enum.map(& &1[key]) |> Stats.median() end
    raw = median.(:raw)

    IO.puts("""

    median over #{rounds} rounds (req/s):
      raw limit, 1 thread per worker: #{Format.int(raw)}
      concurrency 1:  #{Format.int(median.(:serial))} (#{ratio(median.(:serial), raw)} the raw limit)
      concurrency #{concurrency}: #{Format.int(median.(:multiplexed))} (#{ratio(median.(:multiplexed), raw)} the raw limit)
    """)
  end

  defp raw(window) do
    plan = %{warmup_ms: 300, window_ms: window, raw_handoff: "barging"}
    RawLimit.run(%{workers: @workers, callers: @workers, payload: @payload}, plan).throughput
  end

  # One pool at a time: the pool pins its workers to CPUs only if no other pool holds them.
  defp native(concurrency, callers, window) do
    pool = :"bench_concurrency_#{concurrency}"
    opts = Python.native_options(pool, @workers) ++ [concurrency: concurrency]
    {:ok, pid} = DSPex.NativePool.start_link(opts)
    args = %{"data" => String.duplicate("x", @payload)}

    call = fn ->
      case DSPex.NativePool.execute("echo", args, pool: pool) do
        {:ok, ^args} -> :ok
        other -> {:error, other}
      end
    end

    pids = pool |> DSPex.NativePool.stats() |> Map.fetch!(:workers) |> Enum.map(& &1.os_pid)
    load = Load.run(call, callers: callers, warmup_ms: 300, window_ms: window, python_pids: pids)
    GenServer.stop(pid)
    load.throughput
  end

  defp ratio(_value, nil), do: "–"
  defp ratio(value, raw), do: "#{Float.round(value / raw, 2)}×"
end

ConcurrencyBench.main(System.argv())
