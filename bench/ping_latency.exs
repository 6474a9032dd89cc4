# Latency of one `ping` round trip, one sequential caller: median (and p99) of N calls.
#
#     mix run ping_latency.exs [calls]
alias DSPex.NativePool

calls = System.argv() |> List.first("10000") |> String.to_integer()
Logger.configure(level: :warning)
{:ok, _} = NativePool.start_link(name: LatencyPool, pool_size: 1)

# Warm up the worker, the code paths and the caches.
for _ <- 1..1_000, do: {:ok, _} = NativePool.execute("ping", %{}, pool: LatencyPool)

samples =
  for _ <- 1..calls do
    t0 = System.monotonic_time(:nanosecond)
    {:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: LatencyPool)
    System.monotonic_time(:nanosecond) - t0
  end
  |> Enum.sort()

at = fn q -> Enum.at(samples, min(round(q * calls), calls - 1)) / 1000 end

IO.puts(
  "ping round trip over #{calls} calls: median #{Float.round(at.(0.5), 1)} µs, " <>
    "p99 #{Float.round(at.(0.99), 1)} µs, min #{Float.round(hd(samples) / 1000, 1)} µs"
)

GenServer.stop(LatencyPool)
