defmodule DSPex.NativePool.Application do
  @moduledoc false
  # Starts what outlives any one pool: the session tracking table of the SessionPoolV2 drop-in,
  # and the `:pg` scope and directory of clustered pools (see `DSPex.NativePool.Cluster`).

  use Application

  @impl true
  def start(_type, _args) do
    children = [
      DSPex.NativePool.SessionPoolV2.Tracker,
      %{
        id: :pg,
        start: {:pg, :start_link, [DSPex.NativePool.Cluster.Directory.scope()]}
      },
      DSPex.NativePool.Cluster.Directory
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: DSPex.NativePool.Supervisor)
  end
end
