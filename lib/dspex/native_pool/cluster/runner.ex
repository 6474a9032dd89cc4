defmodule DSPex.NativePool.Cluster.Runner do
  @moduledoc false
  # One call on a member pool: here, or on another node in a process spawned there for it,
  # which sends the outcome straight to the caller. The caller monitors that process (a node
  # that goes down fails the call at once, with `:node_down`, not at its deadline), and that
  # process watches the caller (a caller that dies, or whose node goes, ends the call there,
  # which cancels the request as a local caller's death would).

  alias DSPex.NativePool.{Call, Local}

  # How long past the call's own deadline the caller waits for the other node to answer.
  @network_grace 1_000

  @doc false
  # Runs a call on this node's pool; `session` is nil or `{session_id, replays}`, where
  # `replays` re-create the session here first (it moved from a node that went away).
  def local(_pool, nil, command, args, opts), do: Local.run_anonymous(command, args, opts, nil)

  def local(_pool, {session_id, replays}, command, args, opts) do
    with :ok <- replay(session_id, replays, Keyword.take(opts, [:pool, :timeout])),
         do: Local.run_in_session(session_id, command, args, opts, nil)
  end

  defp replay(_session_id, [], _opts), do: :ok

  defp replay(session_id, [{command, args} | rest], opts) do
    case Local.run_in_session(session_id, command, args, opts, nil) do
      {:ok, _} -> replay(session_id, rest, opts)
      error -> error
    end
  end

  @doc false
  # Runs a call on `node`'s member and waits for its outcome.
  def remote(node, pool, session, command, args, deadline) do
    timeout = Call.remaining(deadline)
    ref = make_ref()
    spawn_args = [self(), ref, pool, session, command, args, timeout]
    {pid, monitor} = :erlang.spawn_monitor(node, __MODULE__, :serve, spawn_args)
    context = %{pool: pool, command: to_string(command), worker_id: nil, node: node}

    receive do
      {^ref, outcome} ->
        Process.demonitor(monitor, [:flush])
        outcome

      {:DOWN, ^monitor, :process, ^pid, reason} ->
        {:error, down(reason, node, context)}
    after
      wait(timeout) ->
        Process.exit(pid, :kill)
        # Whatever it sent before it died arrives before its :DOWN.
        receive do
          {:DOWN, ^monitor, :process, ^pid, _} -> :ok
        after
          @network_grace -> Process.demonitor(monitor, [:flush])
        end

        flush(ref)

        {:error,
         {:timeout_error, :request_timeout,
          "no answer from node #{inspect(node)} within the call's timeout", context}}
    end
  end

  defp wait(:infinity), do: :infinity
  defp wait(timeout), do: timeout + @network_grace

  defp down(:noconnection, node, context) do
    {:communication_error, :node_down,
     "node #{inspect(node)} went down or became unreachable while it ran the call; whether the call ran is unknown",
     context}
  end

  defp down(reason, node, context) do
    {:system_error, :remote_call_failed,
     "the call's process on node #{inspect(node)} failed: #{inspect(reason, limit: 20)}", context}
  end

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  @doc false
  # The other node's side of `remote/6`.
  def serve(caller, ref, pool, session, command, args, timeout) do
    runner = self()

    watcher =
      spawn_link(fn ->
        monitor = Process.monitor(caller)

        receive do
          {:DOWN, ^monitor, :process, _, _} -> Process.exit(runner, :kill)
        end
      end)

    outcome = local(pool, session, command, args, pool: pool, timeout: timeout)
    send(caller, {ref, outcome})
    Process.unlink(watcher)
    Process.exit(watcher, :kill)
  end
end
