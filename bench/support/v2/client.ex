defmodule Bench.V2 do
  @moduledoc """
  The V2 peer's call path (`SessionPoolV2.execute_anonymous/3`): check a worker out, encode the
  request in the caller, `Port.command/2` it, `receive` the reply from the port, decode it, and
  check the worker back in (`:close` if the conversation went wrong).
  """

  alias Bench.V2.{Pool, Protocol, Worker}

  @doc "Starts a V2 pool of `size` bridges; `bridge` is `%{python:, args:, env:}` (see `Bench.Python`)."
  def start_pool(name, size, bridge) do
    Pool.start_link(name: name, pool_size: size, worker: {Worker, bridge})
  end

  def stop_pool(name), do: Pool.stop(name)

  def os_pids(name), do: name |> Pool.workers() |> Enum.map(&Worker.os_pid/1)

  @spec execute(atom, String.t(), map, timeout) :: {:ok, term} | {:error, term}
  def execute(pool, command, args, timeout \\ 60_000) do
    Pool.checkout!(pool, &call(&1, command, args, timeout), timeout)
  end

  defp call(%{port: port}, command, args, timeout) do
    id = System.unique_integer([:positive, :monotonic])
    Port.command(port, Protocol.encode_request(id, command, args))

    receive do
      {^port, {:data, data}} ->
        case Protocol.decode_response(data) do
          {:ok, ^id, result} -> {{:ok, result}, :ok}
          {:error, ^id, error} -> {{:error, {:python_error, error}}, :ok}
          other -> {{:error, {:bad_reply, other}}, :close}
        end

      {^port, {:exit_status, status}} ->
        {{:error, {:port_exited, status}}, :close}
    after
      timeout -> {{:error, :timeout}, :close}
    end
  end
end
