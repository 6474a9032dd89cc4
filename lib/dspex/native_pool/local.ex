defmodule DSPex.NativePool.Local do
  @moduledoc false
  # Calls on this node's pool, which `DSPex.NativePool` makes unless the pool is clustered
  # (then `DSPex.NativePool.Cluster` picks a member, and on that member's node comes here).

  alias DSPex.NativePool.{Call, Nif, Replay}

  @doc false
  # `execute/3` with an optional checkout deadline (see `DSPex.NativePool.SessionPoolV2`).
  def run_anonymous(command, args, opts, checkout) do
    with {:ok, call} <- Call.prepare(command, args, opts, [:pool, :timeout, :tools]) do
      outcome =
        if Replay.pool_wide?(call.context.command),
          do: Replay.run_pool_wide(call),
          else: Call.run(call, nil, nil, checkout)

      Replay.follow_up(call, outcome, nil)
    end
  end

  @doc false
  # `execute_in_session/4` with an optional checkout deadline.
  def run_in_session(session_id, command, args, opts, checkout) do
    with {:ok, call} <- Call.prepare(command, args, opts, [:pool, :timeout, :tools]),
         {:ok, call, record} <- Replay.session_call(call, session_id) do
      outcome = Call.run(call, {:session, session_id}, record, checkout)
      Replay.follow_up(call, outcome, session_id)
    end
  end

  @doc false
  def end_session(session_id, opts) do
    with {:ok, call} <- Call.prepare("cleanup_session", %{session_id: session_id}, opts),
         context = Map.put(call.context, :session_id, session_id),
         :ok <- Call.check_session(session_id, context) do
      case Nif.end_session(call.resource, session_id) do
        nil ->
          :ok

        worker ->
          case Call.run(%{call | context: context}, {:worker, worker}, nil) do
            {:ok, _} -> :ok
            {:error, _} = error -> error
          end
      end
    end
  end
end
