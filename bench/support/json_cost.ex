defmodule Bench.JsonCost do
  @moduledoc """
  What `Bench.JSON` costs V2 per request, alone: encoding the request and decoding the reply for
  each payload, timed in a loop for a fixed budget. Readers can set it against V2's latency to see
  how much of V2's cost is JSON in Elixir and how much is the checkout and the port.
  """

  alias Bench.V2.Protocol

  @payloads [100, 10 * 1024, 1024 * 1024]

  def run(plan) do
    Enum.map(@payloads, fn payload ->
      args = %{"data" => String.duplicate("x", payload)}
      reply = ~s({"id":1,"success":true,"result":) <> Bench.JSON.encode!(args) <> "}"

      %{
        payload: payload,
        encode_us: per_op(fn -> Protocol.encode_request(1, "echo", args) end, plan.json_cost_ms),
        decode_us: per_op(fn -> Protocol.decode_response(reply) end, plan.json_cost_ms)
      }
    end)
  end

  # Mean microseconds per call over at least `budget_ms`, in batches to keep clock reads rare.
  defp per_op(fun, budget_ms) do
    deadline = System.monotonic_time(:microsecond) + budget_ms * 1000
    started = System.monotonic_time(:microsecond)
    calls = batches(fun, deadline, 0)
    (System.monotonic_time(:microsecond) - started) / calls
  end

  defp batches(fun, deadline, calls) do
    Enum.each(1..10, fn _ -> fun.() end)
    calls = calls + 10

    if System.monotonic_time(:microsecond) < deadline,
      do: batches(fun, deadline, calls),
      else: calls
  end
end
