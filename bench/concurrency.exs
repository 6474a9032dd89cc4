# Echo pipelined per worker, against the raw limit and the bridge-alone ceiling, in one run.
#
#   mix run concurrency.exs [--rounds 3] [--window-ms 1500] [--callers 16] [--concurrency 8]
#
# The same measurement as the `pipelined` section of bench/run.exs (see Bench.Pipelined):
# it prints each round and the medians, with the ratios to the raw limit.

Logger.configure(level: :warning)

{opts, _, _} =
  OptionParser.parse(System.argv(),
    strict: [rounds: :integer, window_ms: :integer, callers: :integer, concurrency: :integer]
  )

alias Bench.{Format, RawLimit}

plan = %{
  rounds: Keyword.get(opts, :rounds, 3),
  warmup_ms: 300,
  window_ms: Keyword.get(opts, :window_ms, 1_500)
}

RawLimit.build!()
{:ok, _} = Bench.SchedMonitor.start_link()
concurrency = Keyword.get(opts, :concurrency, 8)
callers = Keyword.get(opts, :callers, 16)
IO.puts("2 workers, 100 B echo, #{callers} callers; raw: 1 thread per worker\n")

print_round = fn round, r ->
  IO.puts(
    "round #{round}: raw #{Format.int(r.raw)}, bridge alone #{Format.int(r.bridge_alone)}, " <>
      "concurrency 1 #{Format.int(r.serial)}, concurrency #{concurrency} #{Format.int(r.pipelined)} req/s"
  )
end

r = Bench.Pipelined.run(plan, callers: callers, concurrency: concurrency, on_round: print_round)

ratio = fn value -> if r.raw, do: "#{Float.round(value / r.raw, 2)}×", else: "–" end

IO.puts("""

median over #{r.rounds} rounds (req/s):
  raw limit, 1 thread per worker: #{Format.int(r.raw)}
  bridge alone (frames written in advance): #{Format.int(r.bridge_alone)} (#{ratio.(r.bridge_alone)} the raw limit)
  concurrency 1:  #{Format.int(r.serial)} (#{ratio.(r.serial)} the raw limit)
  concurrency #{concurrency}: #{Format.int(r.pipelined)} (#{ratio.(r.pipelined)} the raw limit)
""")
