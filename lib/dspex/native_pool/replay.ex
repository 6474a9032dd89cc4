defmodule DSPex.NativePool.Replay do
  @moduledoc false
  # State that must outlive a worker, for any command `DSPex.NativePool.DSPy` (the one module
  # that knows which commands define state) says defines some:
  #
  # * pool-wide: run on every worker; what succeeded is remembered and replayed on every
  #   worker started later;
  # * a session's: run on the session's worker; remembered for the session when it succeeds,
  #   replayed on that worker's replacement before the session's next request.
  #
  # Only calls that succeeded are remembered: replaying a failing one would give a new worker
  # a state none of the others has.

  alias DSPex.NativePool.{Call, DSPy, Nif}

  @doc false
  defdelegate pool_wide?(command), to: DSPy

  @doc false
  # Runs a pool-wide command on every worker; returns the first worker's result, or the first
  # error.
  def run_pool_wide(%Call{} = call) do
    with {:ok, call} <- prepared(call) do
      forget_before(call)
      results = Call.run_everywhere(call)
      results = if applied?(results), do: remember(call, results), else: results

      case Enum.find(results, fn {_worker, result} -> match?({:error, _}, result) end) do
        nil -> results |> Enum.min_by(&elem(&1, 0)) |> elem(1)
        {_worker, error} -> error
      end
    end
  end

  # Forgotten first: a worker started meanwhile must not get it back.
  defp forget_before(%Call{context: %{command: command}} = call) do
    case DSPy.forgets(command, call.args) do
      nil -> :ok
      prefix -> Nif.forget(call.resource, prefix)
    end
  end

  # Succeeded where it ran: no worker refused it. Workers that died or timed out say nothing
  # about the command itself.
  defp applied?(results) do
    Enum.any?(results, fn {_worker, result} -> match?({:ok, _}, result) end) and
      not Enum.any?(results, fn {_worker, result} -> refused?(result) end)
  end

  defp refused?({:error, {category, _type, _message, _context}}),
    do: category in [:system_error, :validation_error]

  defp refused?(_result), do: false

  # Remembered, then sent again to each worker that did not get it (its process was replaced
  # during the call, and its replacement started before it was remembered).
  defp remember(%Call{context: %{command: command}} = call, results) do
    case DSPy.remembers(command, call.args) do
      nil ->
        results

      key ->
        _ = Nif.record_global(call.resource, key, command, call.args)

        Map.new(results, fn
          {worker, {:ok, _} = ok} -> {worker, ok}
          {worker, {:error, _}} -> {worker, retry_on(call, worker)}
        end)
    end
  end

  defp retry_on(call, worker) do
    ref = make_ref()
    call = %{call | context: %{call.context | worker_id: worker}}

    case Call.start(call, ref, {:worker, worker}) do
      {:ok, ticket} -> Call.await_reply(ref, ticket, call.timeout, call.timeout, call.context)
      error -> error
    end
  end

  @doc false
  # `call` made a call of session `session_id` (checked here), and what to remember for the
  # session if it succeeds: `{:ok, call, record}`, where `record` is `nil`,
  # `{:put, session, key}` or `{:delete, session, key}`.
  def session_call(%Call{} = call, session_id) do
    context = Map.put(call.context, :session_id, session_id)
    args = call.args |> Map.delete(:session_id) |> Map.put("session_id", session_id)

    with :ok <- Call.check_session(session_id, context),
         {:ok, call} <- prepared(%{call | args: args, context: context}) do
      record =
        case DSPy.session_record(call.context.command, call.args) do
          nil -> nil
          {kind, key} -> {kind, session_id, key}
        end

      {:ok, call, record}
    end
  end

  defp prepared(%Call{context: %{command: command} = context} = call) do
    with {:ok, args} <- prepare_args(command, call.args, context), do: {:ok, %{call | args: args}}
  end

  @doc false
  # A call's arguments as they must be sent and remembered (see `DSPy.prepare/2`).
  def prepare_args(command, args, context) do
    case DSPy.prepare(command, args) do
      {:ok, args} -> {:ok, args}
      {:error, message} -> Call.invalid(:invalid_args, message, context)
    end
  end

  @doc false
  # Runs what must follow a successful call (`DSPy.follow_up/2`) the way the call ran:
  # pool-wide, or in the same session. The call's result stands unless the follow-up fails.
  def follow_up(%Call{context: context} = call, {:ok, result} = ok, session_id) do
    case DSPy.follow_up(context.command, result) do
      nil ->
        ok

      {command, args} ->
        opts = [pool: context.pool, timeout: call.timeout]

        followed =
          if session_id,
            do: DSPex.NativePool.execute_in_session(session_id, command, args, opts),
            else: DSPex.NativePool.execute(command, args, opts)

        with {:ok, _} <- followed, do: ok
    end
  end

  def follow_up(_call, outcome, _session_id), do: outcome
end
