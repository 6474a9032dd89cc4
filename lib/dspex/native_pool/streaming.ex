defmodule DSPex.NativePool.Streaming do
  @moduledoc false
  # Streaming replies: a command that is a generator sends chunks before its result. The
  # consumer credits each chunk it takes (the worker may run `:stream_window` chunks ahead,
  # no more), and a consumer that stops early cancels the request in Python; once the
  # request is cancelled no chunk can reach the mailbox, and those already there are removed.

  alias DSPex.NativePool.{Call, Error, Nif, Options, Replay, Telemetry}

  @doc false
  # The lazy Enumerable of `DSPex.NativePool.execute_stream/3`.
  def stream(command, args, opts) do
    Stream.resource(
      fn -> start(command, args, opts) end,
      &next/1,
      &stop/1
    )
  end

  defp start(command, args, opts) do
    {window, session_id, opts} = pop_stream_options(opts)
    # :stream_window and :session were taken out above; they are listed for the message.
    known = [:pool, :timeout, :tools, :stream_window, :session]

    started =
      with {:ok, call} <- Call.prepare(command, args, opts, known),
           {:ok, window} <- window(window, call) do
        case route(call, session_id) do
          {:ok, call, target, record} -> submit(call, session_id, target, window, record)
          done_or_error -> done_or_error
        end
      end

    case started do
      {:done, result} -> %{done: true, result: result}
      {:error, reason} -> raise Error, reason
      state -> state
    end
  end

  defp submit(call, session_id, target, window, record) do
    # The tag is an integer: chunks are built on the worker's side without the reply's
    # environment (see the NIF's ProcessCaller).
    ref = System.unique_integer([:positive, :monotonic])
    {id, cleanup} = Call.register_tools(call)

    case Call.start(call, ref, target, window, id, record) do
      {:ok, ticket} ->
        %{
          ref: ref,
          ticket: ticket,
          call: call,
          session_id: session_id,
          deadline: Call.deadline(call.timeout),
          worker: nil,
          id: nil,
          done: false,
          started: System.monotonic_time(),
          chunks: 0,
          cleanup: cleanup
        }

      {:error, _reason} = error ->
        # Never submitted: its own tools would otherwise stay registered.
        cleanup.()
        error
    end
  end

  @doc false
  # `{stream_window, session, other options}`: the two this module handles itself.
  def pop_stream_options(opts) do
    if is_list(opts) and Keyword.keyword?(opts) do
      {window, opts} = Keyword.pop(opts, :stream_window)
      {session_id, opts} = Keyword.pop(opts, :session)
      {window, session_id, opts}
    else
      {nil, nil, opts}
    end
  end

  # Where the request goes: the session's worker (with what it sets up there remembered, as
  # in `execute_in_session/4`), any worker, or, for a pool-wide command, every worker at
  # once without streaming (its result is the stream's one item).
  defp route(call, nil) do
    if Replay.pool_wide?(call.context.command) do
      case Replay.run_pool_wide(call) do
        {:ok, result} -> {:done, result}
        {:error, reason} -> {:error, reason}
      end
    else
      {:ok, call, nil, nil}
    end
  end

  defp route(call, session_id) do
    with {:ok, call, record} <- Replay.session_call(call, session_id),
         do: {:ok, call, {:session, session_id}, record}
  end

  defp window(nil, call), do: {:ok, call.config[:stream_window]}
  defp window(n, _call) when is_integer(n) and n >= 1 and n <= 65_536, do: {:ok, n}

  defp window(other, call) do
    got = if is_integer(other), do: Integer.to_string(other), else: Options.describe(other)

    Call.invalid(
      :invalid_options,
      "invalid :stream_window: expected an integer from 1 to 65536, got #{got}",
      call.context
    )
  end

  defp next(%{done: true, result: result} = state),
    do: {[{:done, result}], Map.delete(state, :result)}

  defp next(%{done: true} = state), do: {:halt, state}

  defp next(%{ref: ref, call: call} = state) do
    receive do
      {^ref, {:chunk, value, worker, id}} ->
        # Taken by the consumer: the worker may send one more.
        Nif.stream_credit(call.resource, worker, id, 1)
        {[{:chunk, value}], %{state | worker: worker, id: id, chunks: state.chunks + 1}}

      {^ref, outcome} ->
        outcome = Call.outcome(outcome, call.context)

        case Replay.follow_up(call, outcome, state.session_id) do
          {:ok, result} ->
            {[{:done, result}], finished(state, :done)}

          {:error, reason} ->
            finished(state, :error)
            raise Error, reason
        end
    after
      wait(state) ->
        given_up = Call.give_up(ref, state.ticket, call.timeout, call.context, true)

        case Replay.follow_up(call, given_up, state.session_id) do
          {:ok, result} ->
            {[{:done, result}], %{state | done: true}}

          {:error, reason} ->
            flush(ref)
            raise Error, reason
        end
    end
  end

  defp finished(state, how) do
    state.cleanup.()
    duration = System.monotonic_time() - state.started
    context = Map.put(state.call.context, :outcome, how)
    Telemetry.stream(%{duration: duration, chunks: state.chunks}, context)
    %{state | done: true}
  end

  defp wait(%{deadline: :infinity}), do: :infinity
  defp wait(%{deadline: deadline}), do: Call.remaining(deadline)

  # Halted early (Enum.take/2, an exception in the consumer): the request is cancelled and
  # told to stop in Python; no chunk arrives after this.
  defp stop(%{done: true}), do: :ok

  defp stop(%{ref: ref, ticket: ticket, call: call} = state) do
    finished(state, :halted)
    Nif.cancel(ticket)
    if state.worker, do: Nif.stream_cancel(call.resource, state.worker, state.id)
    flush(ref)
    :ok
  end

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> true
    end
  end
end
