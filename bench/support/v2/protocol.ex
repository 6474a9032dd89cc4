defmodule Bench.V2.Protocol do
  @moduledoc """
  V2's wire encoding, done in Elixir as V2 did it (`Jason.encode!/1` of a request map, and
  `Jason.decode/1` of the whole reply), here with `Bench.JSON`. The framing (4-byte length) is the
  port's `{:packet, 4}`.
  """

  alias Bench.JSON

  @spec encode_request(integer, String.t() | atom, map) :: binary
  def encode_request(id, command, args) do
    JSON.encode!(%{"id" => id, "command" => to_string(command), "args" => args})
  end

  @spec decode_response(binary) ::
          {:ok, integer, term} | {:error, integer, term} | {:error, term}
  def decode_response(data) do
    case JSON.decode(data) do
      {:ok, %{"id" => id, "success" => true, "result" => result}} -> {:ok, id, result}
      {:ok, %{"id" => id, "success" => false, "error" => error}} -> {:error, id, error}
      {:ok, other} -> {:error, {:malformed_reply, other}}
      {:error, reason} -> {:error, reason}
    end
  end
end
