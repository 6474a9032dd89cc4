defmodule Bench.RawLimit do
  @moduledoc """
  The no-BEAM limit: builds `bench/raw_limit` (a cargo project of its own) and runs it for a case. It
  spawns the same bridge with the pool's own Rust spawning and framing code, drives it from plain
  threads, and prints one JSON object, parsed here.
  """

  alias Bench.{JSON, Python}

  @project Path.join(Python.root(), "bench/raw_limit")

  def binary, do: Path.join(@project, "target/release/raw_limit")

  @doc "Builds the binary (cargo decides whether anything changed)."
  def build! do
    {out, status} =
      System.cmd("cargo", ["build", "--release", "--quiet"], cd: @project, stderr_to_stdout: true)

    if status != 0, do: raise("cargo build in bench/raw_limit failed:\n#{out}")
    :ok
  end

  @doc """
  Runs one case; returns the parsed result (atom keys) or `%{error: text}`. `handoff` is how the
  client threads share workers (see bench/raw_limit/src/sharing.rs).
  """
  def run(%{workers: workers, callers: callers, payload: payload}, plan, extra \\ []) do
    args =
      [
        "--python",
        Python.executable(),
        "--script",
        Python.script(),
        "--workers",
        to_string(workers),
        "--clients",
        to_string(callers),
        "--payload",
        to_string(payload),
        "--warmup-ms",
        to_string(plan.warmup_ms),
        "--duration-ms",
        to_string(plan.window_ms),
        "--handoff",
        Map.get(plan, :raw_handoff, "barging")
      ] ++ extra

    case System.cmd(binary(), args, cd: Python.root()) do
      {out, 0} ->
        out |> String.split("\n", trim: true) |> List.last() |> parse()

      {out, status} ->
        %{error: "raw_limit exited with status #{status}: #{String.slice(out, 0, 500)}"}
    end
  end

  # Same keys as `Bench.Load` results: raw's `requests` is their `count`; raw stops at an error.
  defp parse(line) do
    result =
      line
      |> JSON.decode!()
      |> Map.new(fn {key, value} -> {String.to_atom(key), value} end)

    Map.merge(result, %{count: Map.get(result, :requests), errors: 0, first_error: nil})
  end
end
