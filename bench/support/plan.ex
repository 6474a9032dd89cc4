defmodule Bench.Plan do
  @moduledoc """
  What a run measures. `:quick` is a subset that still covers every target (about 1–2 minutes);
  each case runs in `rounds` rounds of every peer, each with its own warm-up and window;
  `:full` is the cross product of payloads, callers and workers (about 15 minutes with the other sections).
  """

  @payloads [100, 10 * 1024, 1024 * 1024]
  @callers [1, 16, 256]
  @workers [1, 2, 4]

  # Every case a target reads is in both plans.
  @target_cases [
    %{workers: 1, callers: 1, payload: 100},
    %{workers: 2, callers: 16, payload: 100},
    %{workers: 2, callers: 16, payload: 1024 * 1024}
  ]

  @doc "The plan of a mode; `overrides` replace its fields (e.g. `raw_handoff`)."
  def get(mode, overrides \\ %{}), do: mode |> plan() |> Map.merge(overrides)

  defp plan(:quick) do
    extra = [
      %{workers: 2, callers: 1, payload: 100},
      %{workers: 2, callers: 256, payload: 100},
      %{workers: 4, callers: 16, payload: 100},
      %{workers: 2, callers: 16, payload: 10 * 1024},
      %{workers: 1, callers: 1, payload: 1024 * 1024}
    ]

    %{
      mode: :quick,
      cases: order(@target_cases ++ extra),
      rounds: 2,
      warmup_ms: 250,
      window_ms: 700,
      startup_sizes: [1, 2, 4],
      startup_reps: 1,
      json_cost_ms: 200,
      in_flight: 10_000,
      raw_handoff: "barging"
    }
  end

  defp plan(:full) do
    cases =
      for workers <- @workers, payload <- @payloads, callers <- @callers do
        %{workers: workers, callers: callers, payload: payload}
      end

    %{
      mode: :full,
      cases: order(cases),
      rounds: 3,
      warmup_ms: 500,
      window_ms: 1_500,
      startup_sizes: [1, 2, 4, 8],
      startup_reps: 3,
      json_cost_ms: 1_000,
      in_flight: 10_000,
      raw_handoff: "barging"
    }
  end

  def target_cases, do: @target_cases

  # Grouped by worker count, so each pool is started once per group.
  defp order(cases), do: Enum.sort_by(Enum.uniq(cases), &{&1.workers, &1.payload, &1.callers})
end
