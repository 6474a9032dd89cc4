defmodule Bench.Stats do
  @moduledoc """
  Latency summaries. Percentiles are nearest-rank (the smallest sample with at least p% of the
  samples at or below it), the same definition `raw_limit` uses.
  """

  @doc "Summarises latencies in native time units: count, p50/p99/mean/max in microseconds."
  def summarize([]), do: %{count: 0, p50_us: 0.0, p99_us: 0.0, mean_us: 0.0, max_us: 0.0}

  def summarize(latencies) do
    sorted = latencies |> Enum.sort() |> List.to_tuple()
    count = tuple_size(sorted)
    # Native units per microsecond (the mean is not an integer, so no convert_time_unit).
    per_us = :erlang.convert_time_unit(1, :second, :native) / 1_000_000
    us = fn native -> native / per_us end

    %{
      count: count,
      p50_us: us.(percentile(sorted, 50)),
      p99_us: us.(percentile(sorted, 99)),
      mean_us: us.(Enum.sum(latencies) / count),
      max_us: us.(elem(sorted, count - 1))
    }
  end

  @doc "Nearest-rank percentile of a sorted tuple."
  def percentile(sorted, p) do
    rank = ceil(p / 100 * tuple_size(sorted))
    elem(sorted, min(max(rank, 1), tuple_size(sorted)) - 1)
  end

  @doc """
  One case's figures from its rounds: throughput is the mean of the rounds' (the rounds' windows
  are equal), p50 and p99 the median of the rounds' (percentiles cannot be merged), CPU per
  request the mean; each round's throughput, p50 and p99 are kept under `:rounds`. A failed
  round fails the case.
  """
  def combine(rounds) do
    case Enum.find(rounds, &Map.has_key?(&1, :error)) do
      nil ->
        %{
          throughput: mean(Enum.map(rounds, & &1.throughput)),
          p50_us: median(Enum.map(rounds, & &1.p50_us)),
          p99_us: median(Enum.map(rounds, & &1.p99_us)),
          mean_us: mean(Enum.map(rounds, & &1.mean_us)),
          max_us: rounds |> Enum.map(& &1.max_us) |> Enum.max(),
          count: rounds |> Enum.map(& &1.count) |> Enum.sum(),
          errors: rounds |> Enum.map(& &1.errors) |> Enum.sum(),
          first_error: Enum.find_value(rounds, & &1.first_error),
          client_cpu_us_per_req: mean(Enum.map(rounds, & &1[:client_cpu_us_per_req])),
          python_cpu_us_per_req: mean(Enum.map(rounds, & &1[:python_cpu_us_per_req])),
          rounds: Enum.map(rounds, &Map.take(&1, [:throughput, :p50_us, :p99_us, :steal_share]))
        }

      failed ->
        failed
    end
  end

  @doc "The mean of the values that are not nil, or nil if there are none."
  def mean(values) do
    case Enum.reject(values, &is_nil/1) do
      [] -> nil
      present -> Enum.sum(present) / length(present)
    end
  end

  def median([]), do: nil
  def median(values), do: values |> Enum.sort() |> List.to_tuple() |> percentile(50)
end
