defmodule DSPex.NativePool.Replay do
  @moduledoc false
  # State that must outlive a worker: the bridge's DSPy commands that define it, and how the
  # pool remembers them so that a replacement worker is given the same state.
  #
  # * Pool-wide (`configure_lm`, `create_program`, `delete_program`, `reset_state` outside a
  #   session): run on every worker; what succeeded is remembered and replayed on every worker
  #   started later.
  # * A session's (`configure_lm`, `create_program`, `delete_program` in a session): run on the
  #   session's worker; remembered for the session when they succeed, replayed on that worker's
  #   replacement before the session's next request.
  #
  # Only calls that succeeded are remembered: replaying a failing one would give a new worker
  # a state none of the others has.

  alias DSPex.NativePool.{Call, Nif, Options}

  @pool_wide ["configure_lm", "create_program", "delete_program", "reset_state"]

  @doc false
  def pool_wide, do: @pool_wide

  @doc false
  def pool_wide?(command), do: command in @pool_wide

  @doc false
  # Runs a pool-wide command on every worker; returns the first worker's result, or the first
  # error.
  def run_pool_wide(%Call{} = call) do
    with {:ok, call} <- with_program_id(call) do
      forget_before(call)
      results = Call.run_everywhere(call)
      results = if applied?(results), do: remember(call, results), else: results

      case Enum.find(results, fn {_worker, result} -> match?({:error, _}, result) end) do
        nil -> results |> Enum.min_by(&elem(&1, 0)) |> elem(1)
        {_worker, error} -> error
      end
    end
  end

  # Deleting is forgotten first: a worker started meanwhile must not get it back.
  defp forget_before(%Call{context: %{command: "delete_program"}} = call),
    do: Nif.forget(call.resource, program_key(call.args))

  defp forget_before(%Call{context: %{command: "reset_state"}} = call),
    do: Nif.forget(call.resource, "program:")

  defp forget_before(_call), do: :ok

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
  defp remember(%Call{context: %{command: command}} = call, results)
       when command in ["configure_lm", "create_program"] do
    key = if command == "configure_lm", do: "configure_lm", else: program_key(call.args)
    _ = Nif.record_global(call.resource, key, command, call.args)

    Map.new(results, fn
      {worker, {:ok, _} = ok} -> {worker, ok}
      {worker, {:error, _}} -> {worker, retry_on(call, worker)}
    end)
  end

  defp remember(_call, results), do: results

  defp retry_on(call, worker) do
    ref = make_ref()
    call = %{call | context: %{call.context | worker_id: worker}}

    case Call.start(call, ref, {:worker, worker}) do
      {:ok, ticket} -> Call.await_reply(ref, ticket, call.timeout, call.timeout, call.context)
      error -> error
    end
  end

  @doc false
  # What to remember for a session if `call` succeeds: `{call, record}`, where `record` is
  # `nil`, `{:put, session, key}` or `{:delete, session, key}`.
  def session_call(%Call{} = call, session_id) do
    args = call.args |> Map.delete(:session_id) |> Map.put("session_id", session_id)
    call = %{call | args: args}

    case call.context.command do
      "configure_lm" ->
        {:ok, call, {:put, session_id, "configure_lm"}}

      "create_program" ->
        with {:ok, call} <- with_program_id(call),
             do: {:ok, call, {:put, session_id, program_key(call.args)}}

      "delete_program" ->
        with {:ok, key} <- checked_program_key(call),
             do: {:ok, call, {:delete, session_id, key}}

      _ ->
        {:ok, call, nil}
    end
  end

  # A create_program without an id gets one here, so that its replay keeps it.
  defp with_program_id(%Call{context: %{command: "create_program"}} = call) do
    case program_id(call.args) do
      nil ->
        id = "prog_" <> Integer.to_string(System.unique_integer([:positive]), 36)
        {:ok, %{call | args: Map.put(call.args, "program_id", id)}}

      _id ->
        with {:ok, _key} <- checked_program_key(call), do: {:ok, call}
    end
  end

  defp with_program_id(%Call{context: %{command: "delete_program"}} = call) do
    with {:ok, _key} <- checked_program_key(call), do: {:ok, call}
  end

  defp with_program_id(call), do: {:ok, call}

  defp checked_program_key(call) do
    id = program_id(call.args)

    if is_nil(id) or (is_binary(id) and String.valid?(id)) or is_atom(id) or is_integer(id) do
      {:ok, program_key(call.args)}
    else
      Call.invalid(
        :invalid_args,
        "program_id must be a string, got #{Options.describe(id)}",
        call.context
      )
    end
  end

  defp program_key(args), do: "program:" <> to_string(program_id(args))

  # V2 callers name it "id".
  defp program_id(args) do
    Enum.find_value(["program_id", :program_id, "id", :id], &Map.get(args, &1))
  end
end
