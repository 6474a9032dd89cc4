defmodule Bench.Format do
  @moduledoc "Numbers for people: rates, latencies, sizes and ratios, as the tables print them."

  def int(nil), do: "–"
  def int(n) when is_float(n), do: int(round(n))

  def int(n) when is_integer(n) and n < 0, do: "-" <> int(-n)

  def int(n) when is_integer(n), do: DSPex.NativePool.Options.group_digits(n, ",")

  @doc "A latency given in microseconds, in the unit that keeps it short."
  def latency(nil), do: "–"
  def latency(us) when us < 100, do: "#{decimals(us, 1)} µs"
  def latency(us) when us < 1_000, do: "#{round(us)} µs"
  def latency(us) when us < 100_000, do: "#{decimals(us / 1000, 2)} ms"
  def latency(us) when us < 1_000_000, do: "#{round(us / 1000)} ms"
  def latency(us), do: "#{decimals(us / 1_000_000, 2)} s"

  def ms(nil), do: "–"
  def ms(ms) when ms < 10, do: "#{decimals(ms, 2)} ms"
  def ms(ms), do: "#{int(ms)} ms"

  def bytes(n) when n >= 1024 * 1024, do: "#{div(n, 1024 * 1024)} MB"
  def bytes(n) when n >= 1024, do: "#{div(n, 1024)} KB"
  def bytes(n), do: "#{n} B"

  @doc "A memory amount in bytes: B, KiB or MiB."
  def memory(nil), do: "–"
  def memory(b) when abs(b) >= 1024 * 1024, do: "#{decimals(b / 1024 / 1024, 1)} MiB"
  def memory(b) when abs(b) >= 1024, do: "#{decimals(b / 1024, 1)} KiB"
  def memory(b), do: "#{round(b)} B"

  @doc "The hypervisor's steal over a run (see `Bench.OS.steal_ms/0`)."
  def steal(%{ms: ms, of_ms: of}) when of > 0,
    do: "#{decimals(100 * ms / of, 1)}% of the CPU time (#{decimals(ms / 1000, 1)} s)"

  def steal(_), do: "not measured"

  def ratio(nil), do: "–"
  def ratio(x), do: "#{decimals(x, 2)}×"

  def us(nil), do: "–"
  def us(x), do: decimals(x, 1)

  def rate(nil), do: "–"
  def rate(x), do: int(x)

  def decimals(x, places), do: :erlang.float_to_binary(x / 1, decimals: places)

  @doc "Short throughput for the progress line and the chart: 950, 12.3k, 131k."
  def short_rate(nil), do: "–"
  def short_rate(x) when x >= 100_000, do: "#{round(x / 1000)}k"
  def short_rate(x) when x >= 1_000, do: "#{String.trim_trailing(decimals(x / 1000, 1), ".0")}k"
  def short_rate(x), do: "#{round(x)}"
end
