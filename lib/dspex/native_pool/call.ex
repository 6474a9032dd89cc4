defmodule DSPex.NativePool.Call do
  @moduledoc false
  # One call, from its options to its reply, in the caller's process: validation, submission
  # to the NIF, the wait for the reply, and giving up at the deadline. No process sits between
  # the caller and the worker's native thread, which sends the reply straight here.

  alias DSPex.NativePool.{CallOptions, Cluster, Error, Nif, Options, Telemetry}

  @default_timeout 60_000
  # Deadlines are tracked in Rust too; :infinity there is this long.
  @infinity_ms 100 * 365 * 24 * 3600 * 1000

  @enforce_keys [:resource, :config, :args, :timeout, :context]
  defstruct [:resource, :config, :args, :timeout, :context, tools: nil]

  @doc false
  # Checks a call's options, command and arguments, and finds its pool. `known` lists the
  # options this call accepts.
  def prepare(command, args, opts, known \\ [:pool, :timeout]) do
    case CallOptions.check_keys(opts, known, "call options") do
      :ok ->
        pool = Keyword.get(opts, :pool, DSPex.NativePool)
        context = context(pool, command)

        with {:ok, timeout} <- timeout_option(opts, context),
             {:ok, tools} <- tools_option(opts, context),
             :ok <- check_command(command, context),
             {:ok, resource, config} <- lookup(pool, context),
             {:ok, args} <- normalize_args(args, context) do
          {:ok,
           %__MODULE__{
             resource: resource,
             config: config,
             args: args,
             timeout: timeout,
             context: context,
             tools: tools
           }}
        end

      {:error, message} ->
        context = %{pool: pool_option(opts), command: command_name(command), worker_id: nil}
        invalid(:invalid_options, message, context)
    end
  end

  # The pool named in options that are not all valid, for the error's context.
  defp pool_option(opts) do
    if is_list(opts) and Keyword.keyword?(opts),
      do: Keyword.get(opts, :pool, DSPex.NativePool),
      else: DSPex.NativePool
  end

  @doc false
  # The context of a call's errors, before it reached a worker.
  def context(pool, command), do: %{pool: pool, command: command_name(command), worker_id: nil}

  @doc false
  def timeout_option(opts, context) do
    case CallOptions.check_timeout(Keyword.get(opts, :timeout, @default_timeout)) do
      {:ok, timeout} -> {:ok, timeout}
      {:error, message} -> invalid(:invalid_options, message, context)
    end
  end

  # A call's own tools (merged over the pool's for this call), or nil.
  defp tools_option(opts, context) do
    case Keyword.fetch(opts, :tools) do
      :error ->
        {:ok, nil}

      {:ok, tools} ->
        case DSPex.NativePool.Tools.validate(tools) do
          {:ok, tools} when map_size(tools) == 0 -> {:ok, nil}
          {:ok, tools} -> {:ok, tools}
          {:error, message} -> invalid(:invalid_options, "invalid :tools: " <> message, context)
        end
    end
  end

  @doc false
  # Registers a call's own tools under the request id it will have; `{id, cleanup}`.
  def register_tools(%__MODULE__{tools: nil}), do: {0, fn -> :ok end}

  def register_tools(%__MODULE__{tools: tools, config: config}) do
    id = Nif.next_request_id()
    table = config[:call_tools]
    :ets.insert(table, {id, tools, self()})
    {id, fn -> :ets.delete(table, id) end}
  end

  defp command_name(command) when is_binary(command), do: command
  defp command_name(command) when is_atom(command) and not is_nil(command), do: to_string(command)
  defp command_name(_command), do: nil

  @doc false
  def check_command(command, context) do
    case CallOptions.check_command(command) do
      :ok -> :ok
      {:error, message} -> invalid(:invalid_command, message, context)
    end
  end

  @doc false
  def normalize_args(args, _context) when is_map(args) and not is_struct(args), do: {:ok, args}

  def normalize_args(args, context) when is_list(args) do
    if Keyword.keyword?(args),
      do: {:ok, Map.new(args)},
      else: args_error(args, context)
  end

  def normalize_args(args, context), do: args_error(args, context)

  # Never the value itself: arguments may carry secrets (an API key for configure_lm).
  defp args_error(args, context) do
    invalid(
      :invalid_args,
      "args must be a map or a keyword list, got #{Options.describe(args)}",
      context
    )
  end

  @doc false
  def invalid(type, message, context), do: {:error, {:validation_error, type, message, context}}

  @doc false
  def check_session(session_id, context) do
    case CallOptions.check_session(session_id) do
      :ok -> :ok
      {:error, message} -> invalid(:invalid_session, message, context)
    end
  end

  # A pool not found, in the context of the call that wanted it.
  defp lookup(pool, context) do
    case lookup(pool) do
      {:error, {category, type, message, _}} -> {:error, {category, type, message, context}}
      found -> found
    end
  end

  @doc false
  def lookup(pool) do
    case :persistent_term.get({DSPex.NativePool, pool}, nil) do
      {resource, config} ->
        # An owner killed outside a supervisor never ran terminate/2: its pool is gone.
        if Process.alive?(config[:owner]) do
          {:ok, resource, config}
        else
          :persistent_term.erase({DSPex.NativePool, pool})
          lookup(pool)
        end

      nil ->
        {:error,
         {:resource_error, :pool_not_found, not_found(pool),
          %{pool: pool, command: nil, worker_id: nil}}}
    end
  end

  defp not_found(pool) when is_pid(pool),
    do: "pools are called by name, not by pid: pass pool: with the :name it was started with"

  defp not_found(pool) do
    Cluster.members_elsewhere(pool) ||
      "no pool named #{inspect(pool)} is running; start one with {DSPex.NativePool, name: #{inspect(pool)}}"
  end

  @doc false
  # One request, from submit to reply. `target`: nil (any worker), {:worker, i} or {:session, id}; `record`:
  # what the pool remembers for the session if the command succeeds. With `checkout: ms`, a
  # request no worker has taken within `ms` gives up with `:checkout_timeout` (DSPex V2's
  # `:pool_timeout`); the call's own deadline still covers the whole call.
  def run(%__MODULE__{} = call, target, record, checkout \\ nil) do
    %{resource: resource, args: args, timeout: timeout, context: context} = call
    started = Telemetry.start(context)
    ref = make_ref()
    # Only a call with a checkout phase needs its deadline here.
    deadline = if checkout, do: deadline(timeout)
    {id, cleanup} = register_tools(call)

    result =
      case submit(resource, ref, context.command, args, timeout, target, record, 0, id) do
        {:ok, ticket, placement} ->
          # A request handed straight to a waiting worker is checked out already.
          case busy_wait(ref, placement, call.config) do
            {:ok, outcome} ->
              outcome(outcome, context)

            :none when checkout == nil or placement != :queued ->
              await_reply(ref, ticket, timeout, timeout, context)

            :none ->
              await_checkout(ref, ticket, checkout, deadline, timeout, context)
          end

        {:error, reason} ->
          rejected(reason, call)
      end

    cleanup.()
    Telemetry.stop(started, context, result)
  end

  @doc false
  # Starts a request; the reply arrives later as `{ref, outcome}` (after its chunks,
  # `{ref, {:chunk, value, worker, id}}`, when `window` is above 0).
  def start(%__MODULE__{} = call, ref, target \\ nil, window \\ 0, id \\ 0, record \\ nil) do
    %{resource: resource, args: args, timeout: timeout, context: context} = call

    case submit(resource, ref, context.command, args, timeout, target, record, window, id) do
      {:ok, ticket, _placement} -> {:ok, ticket}
      {:error, reason} -> rejected(reason, call)
    end
  end

  # A reply one round trip away comes within microseconds: polling for it, yielding to any other
  # process between looks, keeps this scheduler from going to sleep, whose wake-up by the
  # worker's thread costs more than the round trip itself. A queued request does not poll, nor
  # one whose worker is pinned to this scheduler's own CPU (`:waiting_worker_here`), which the
  # poll would take from it.
  defp busy_wait(ref, :waiting_worker, config) do
    wait = System.convert_time_unit(config[:busy_wait_us], :microsecond, :native)
    poll_reply(ref, System.monotonic_time() + wait)
  end

  defp busy_wait(_ref, _placement, _config), do: :none

  # `until` is in native time units.
  defp poll_reply(ref, until) do
    receive do
      {^ref, outcome} -> {:ok, outcome}
    after
      0 ->
        if System.monotonic_time() < until do
          :erlang.yield()
          poll_reply(ref, until)
        else
          :none
        end
    end
  end

  # Small arguments are encoded inline; large ones on a dirty scheduler (the NIF says which).
  defp submit(resource, ref, command, args, timeout, target, record, window, id) do
    routing = {
      if(timeout == :infinity, do: @infinity_ms, else: timeout),
      target || :any,
      record || :none,
      window,
      id
    }

    case Nif.submit(resource, ref, command, args, routing) do
      :dirty -> Nif.submit_dirty(resource, ref, command, args, routing)
      other -> other
    end
  end

  defp rejected(reason, call) do
    error = Error.from_submit(reason, call.context, call.config)
    Telemetry.rejected(call.context, error)
    {:error, error}
  end

  @doc false
  def outcome({:ok, _} = ok, _context), do: ok
  def outcome(error, context), do: {:error, Error.from_outcome(error, context)}

  # Waits for the reply until a worker must have taken the request, then for the rest of the
  # call's deadline.
  defp await_checkout(ref, ticket, checkout, deadline, timeout, context) do
    receive do
      {^ref, outcome} -> outcome(outcome, context)
    after
      min_timeout(checkout, remaining(deadline)) ->
        if Nif.cancel_queued(ticket) do
          {:error,
           {:timeout_error, :checkout_timeout,
            "no worker took the request within #{checkout} ms (pool_timeout); it never ran",
            context}}
        else
          await_reply(ref, ticket, remaining(deadline), timeout, context)
        end
    end
  end

  @doc false
  def min_timeout(a, :infinity), do: a
  def min_timeout(a, b), do: min(a, b)

  @doc false
  # Waits up to `wait` ms for the reply; `timeout` is the call's own, for the message.
  def await_reply(ref, ticket, wait, timeout, context) do
    receive do
      {^ref, outcome} -> outcome(outcome, context)
    after
      wait -> give_up(ref, ticket, timeout, context)
    end
  end

  @doc false
  # The deadline passed. Once cancel/1 returns, no reply can reach the mailbox, unless one
  # was already sent, in which case it is taken here.
  def give_up(ref, ticket, timeout, context, stream? \\ false) do
    case Nif.cancel(ticket) do
      :answered ->
        receive do
          {^ref, outcome} -> outcome(outcome, context)
        end

      :delivered ->
        receive do
          {^ref, outcome} -> outcome(outcome, context)
        after
          0 ->
            invalid(:already_awaited, "this request's reply was already taken", context)
        end

      :queued ->
        {:error,
         {:timeout_error, :queue_timeout,
          "no worker became free within #{timeout} ms; the request never ran", context}}

      :running when stream? ->
        {:error,
         {:timeout_error, :request_timeout,
          "the stream did not end within #{timeout} ms; #{after_timeout(context.pool, true)}",
          context}}

      :running ->
        {:error,
         {:timeout_error, :request_timeout,
          "the worker did not answer within #{timeout} ms; #{after_timeout(context.pool, false)}",
          context}}
    end
  end

  # What the pool does with a request still running at its deadline (see :kill_on_timeout).
  defp after_timeout(pool, stream?) do
    case lookup(pool) do
      {:ok, _resource, config} ->
        cond do
          config[:concurrency] > 1 ->
            "the request is cancelled in the worker, which carries on"

          stream? and config[:kill_on_timeout] ->
            "it is told to stop at its next yield, and its worker replaced if it has not " <>
              "within #{config[:cancel_grace]} ms (cancel_grace)"

          config[:kill_on_timeout] ->
            "the worker is replaced (kill_on_timeout)"

          true ->
            "its reply will be dropped"
        end

      {:error, _} ->
        "its reply will be dropped"
    end
  end

  @doc false
  # Every worker gets its own request; all run concurrently under one deadline. Returns
  # `%{worker_index => result}`.
  def run_everywhere(%__MODULE__{} = call) do
    %{timeout: timeout, context: context} = call
    deadline = deadline(timeout)

    pending =
      for worker <- 0..(call.config[:pool_size] - 1) do
        ref = make_ref()
        call = %{call | context: %{context | worker_id: worker}}

        case start(call, ref, {:worker, worker}) do
          {:ok, ticket} -> {worker, {ref, ticket, call.context}}
          {:error, _} = error -> {worker, error}
        end
      end

    Map.new(pending, fn
      {worker, {ref, ticket, context}} ->
        {worker, await_reply(ref, ticket, remaining(deadline), timeout, context)}

      {worker, error} ->
        {worker, error}
    end)
  end

  @doc false
  def deadline(:infinity), do: :infinity
  def deadline(timeout), do: System.monotonic_time(:millisecond) + timeout

  @doc false
  def remaining(:infinity), do: :infinity
  def remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)
end
