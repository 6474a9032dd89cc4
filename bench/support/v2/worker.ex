defmodule Bench.V2.Worker do
  @moduledoc """
  DSPex V2's pool worker (`PoolWorkerV2`), reduced to its mechanism: a Port on the Python bridge,
  `{:spawn_executable, python}` with `[:binary, {:packet, 4}, :nouse_stdio, :exit_status]`
  (`:nouse_stdio` puts the port on the child's fds 3 and 4, so the same bridge runs unchanged).
  It answers an init ping before it joins the pool; on checkout the port is connected to the
  caller, on checkin back to the pool. V2's per-request `Logger` calls are left out (they would
  only slow V2 down further).
  """

  alias Bench.V2.Protocol

  @init_timeout 30_000

  @doc "`arg`: `%{python:, args:, env:}` (bridge command line and environment)."
  def init_worker(%{python: python, args: args, env: env}) do
    args = args ++ ["--worker-id", Integer.to_string(System.unique_integer([:positive]))]

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        {:packet, 4},
        :nouse_stdio,
        :exit_status,
        args: args,
        env: Enum.map(env, fn {k, v} -> {to_charlist(k), to_charlist(v)} end)
      ])

    case init_ping(port) do
      :ok -> {:ok, %{port: port}}
      {:error, reason} -> {:error, reason}
    end
  end

  defp init_ping(port) do
    Port.command(port, Protocol.encode_request(0, "ping", %{"initialization" => true}))

    receive do
      {^port, {:data, data}} ->
        case Protocol.decode_response(data) do
          {:ok, 0, %{"status" => "ok"}} -> :ok
          other -> {:error, {:bad_init_reply, other}}
        end

      {^port, {:exit_status, status}} ->
        {:error, {:exited_during_init, status}}
    after
      @init_timeout -> {:error, :init_timeout}
    end
  end

  @doc "Hands the port to the caller, as V2's `safe_port_connect/3` did."
  def handle_checkout({pid, _ref}, %{port: port} = worker) do
    if Process.alive?(pid) and Port.info(port) != nil do
      Port.connect(port, pid)
      {:ok, worker, worker}
    else
      {:remove, :checkout_failed}
    end
  end

  @doc "Takes the port back (`Port.connect/2` to the pool), unless the caller asked to close it."
  def handle_checkin(:close, _worker), do: {:remove, :closed}

  # The caller may have died between its checkin and this reconnection, taking the port (it was
  # the owner) with it: V2 had the same race, and removed the worker.
  def handle_checkin(_ok, %{port: port} = worker) do
    Port.connect(port, self())
    {:ok, worker}
  rescue
    ArgumentError -> {:remove, :port_closed}
  end

  def handle_info({port, {:exit_status, _}}, %{port: port}), do: {:remove, :port_exited}
  def handle_info({:EXIT, port, _}, %{port: port}), do: {:remove, :port_exited}
  def handle_info(_message, worker), do: {:ok, worker}

  def terminate_worker(%{port: port}) do
    # Closing the port closes fd 3: the bridge exits on EOF.
    Port.close(port)
  catch
    :error, _ -> :ok
  end

  def os_pid(%{port: port}) do
    case Port.info(port, :os_pid) do
      {:os_pid, pid} -> pid
      nil -> nil
    end
  end
end
