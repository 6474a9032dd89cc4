defmodule DSPex.NativePool.SessionPoolV2.Owner do
  @moduledoc false
  # The process `SessionPoolV2.start_link/1` returns, standing where V2's pool manager stood:
  # linked to its caller and not trapping exits, it dies with it at once, as V2's did (V2's
  # callers stop it with `GenServer.stop/3` only if it is still alive). The pool it started is
  # linked to it and then stops in its own time, giving running requests `:shutdown_timeout`.
  # `GenServer.stop/3` on it stops the pool first.

  use GenServer

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @impl true
  def init(opts) do
    case DSPex.NativePool.start_link(opts) do
      {:ok, pool} -> {:ok, pool}
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl true
  def terminate(_reason, pool) do
    GenServer.stop(pool, :normal, :infinity)
  catch
    :exit, _ -> :ok
  end
end
