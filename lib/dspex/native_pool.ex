defmodule DSPex.NativePool do
  @moduledoc """
  A pool of Python worker processes, run by a Rust NIF.

  Each worker is a Python process that runs commands: the built-in `ping`, `echo` and
  `get_stats`, and the public functions of a handler module you name. A call encodes its
  arguments to JSON in Rust, puts the request on the pool's queue and waits for the reply (see
  "Waiting for a reply"); the first idle worker's native thread writes it to its Python process,
  reads the reply, decodes it and sends it straight to the caller. No Elixir process sits
  between caller and worker.

  ## Example

      children = [{DSPex.NativePool, name: MyPool, pool_size: 4}]
      Supervisor.start_link(children, strategy: :one_for_one)

      {:ok, %{"status" => "ok"}} = DSPex.NativePool.execute("ping", %{}, pool: MyPool)
      {:ok, %{"text" => "hi"}} = DSPex.NativePool.execute("echo", %{text: "hi"}, pool: MyPool)

  Your own commands live in a Python module; each public function takes the arguments as a
  dict and returns anything JSON can carry:

      # /app/python/my_handlers.py
      def add(args):
          return {"sum": args["a"] + args["b"]}

      {DSPex.NativePool, name: MyPool, handlers: "my_handlers", python_path: ["/app/python"]}

      {:ok, %{"sum" => 3}} = DSPex.NativePool.execute("add", %{a: 1, b: 2}, pool: MyPool)

  ## Options

  | option | default | meaning |
  |---|---|---|
  | `:name` | `DSPex.NativePool` | the pool's name, used as `:pool` in calls |
  | `:pool_size` | schedulers online | number of Python worker processes |
  | `:python` | `.venv/bin/python` made by `bin/setup`, else `python3` (`DSPEX_PYTHON` overrides) | the Python executable |
  | `:handlers` | `nil` | a Python module whose public functions `fun(args: dict)` become commands |
  | `:python_path` | `[]` | directories put on the workers' import path |
  | `:env` | `%{}` | extra environment variables for the workers (strings) |
  | `:startup_timeout` | `30_000` | ms a worker has to start and answer its init ping |
  | `:max_frame` | `67_108_864` (64 MiB) | largest request or reply, in bytes |
  | `:max_queue` | `10_000` | requests that may wait for a worker; beyond, calls fail at once with `:pool_saturated` |
  | `:health_interval` | `30_000` | ms of idleness after which a worker is pinged |
  | `:health_timeout` | `5_000` | ms a health ping may take before the worker is replaced |
  | `:max_backoff` | `5_000` | longest wait, in ms, between attempts to replace a failing worker |
  | `:max_requests` | `nil` | retire and replace a worker after this many requests |
  | `:kill_on_timeout` | `true` | kill (and replace) a worker still running a request at its deadline; `false` keeps it and drops the late reply |
  | `:pin_cpus` | `true` | give each worker a CPU of its own, shared by its Python process and the thread that talks to it, when the VM may run on enough CPUs that no other pool of the machine holds; otherwise, or with `false`, nothing is pinned. See "CPU pinning" below |
  | `:busy_wait_us` | `50` | µs a call whose request went straight to a waiting worker polls for its reply, yielding to other processes between looks, before it sleeps in `receive`; `0` turns it off. See "Waiting for a reply" below |
  | `:shutdown_timeout` | `5_000` | ms running requests get to finish when the pool stops, before workers are killed |
  | `:session_ttl` | `3_600_000` | ms after which an idle session is forgotten and its state freed on its worker |

  Invalid options make `start_link/1` return `{:error, {:validation_error, :invalid_options,
  message, context}}`.

  ## Errors

  Calls return `{:ok, result}` or `{:error, {category, type, message, context}}`; the categories
  and types are listed in `DSPex.NativePool.Error`.

  ## Lifecycle

  Workers start in parallel; `start_link/1` returns once every one has answered an init ping
  carrying its worker id, or `{:error, reason}` quoting the stderr of a worker that could not
  start. Stopping the pool (supervisor shutdown, `GenServer.stop/1`, or the death of the process
  that owns it) ends every worker process. A worker also exits by itself when its request pipe
  closes, and is killed by the kernel if the VM dies.

  ## Waiting for a reply

  A call whose request a waiting worker took at once expects its reply within one round trip,
  often a few microseconds. For up to `:busy_wait_us` it polls its mailbox, yielding to every
  other runnable process between looks, before it sleeps in `receive`: a scheduler that went to
  sleep must be woken by the worker's thread, which costs more than the round trip itself. A
  request that waits in the queue, or a reply that takes longer, costs at most that much CPU on
  a scheduler that had nothing else to run.

  ## CPU pinning

  Each request is a hand-off between a worker's Python process and the native thread that
  talks to it. With `pin_cpus: true` (the default) and a CPU free for every worker, both are
  pinned to that CPU, so each hand-off stays on one CPU with warm caches. On a 2-core machine
  this raised 100-byte echo throughput from about 49k to 68k requests/s (2 workers, 16 callers)
  and a lone caller's from 32k to 55k (see `BENCHMARKS.md`).

  A CPU is held by one worker of the whole machine at most (a lock file per CPU in the
  temporary directory, which the kernel releases when its holder exits, even killed): a pool
  that finds too few free CPUs, or one larger than the machine, is not pinned, so two busy
  workers are never stuck on one CPU while another idles. `stats/1` shows each worker's CPU.
  What a worker runs stays on its CPU too, so a command that needs several cores (threads in
  native code, subprocesses) wants `pin_cpus: false`.
  """

  use GenServer
  require Logger

  alias DSPex.NativePool.{Error, Nif, Options, Telemetry}

  @default_timeout 60_000
  # Commands whose effect must hold on every worker; see execute/3.
  @pool_wide ["configure_lm", "create_program", "delete_program", "reset_state"]
  # Deadlines are tracked in Rust too; :infinity there is this long.
  @infinity_ms 100 * 365 * 24 * 3600 * 1000

  @typedoc "A pool name, as given in `:name`."
  @type pool :: atom

  @typedoc "What a failed call returns; see `DSPex.NativePool.Error`."
  @type error :: {:error, Error.reason()}

  @typedoc "Options of `execute/3`: `:pool` (default `DSPex.NativePool`) and `:timeout` (ms, default 60 s)."
  @type call_option :: {:pool, pool} | {:timeout, timeout}

  defmodule Handle do
    @moduledoc "A request started with `DSPex.NativePool.execute_async/3`, for `DSPex.NativePool.await/2`."
    @enforce_keys [:ref, :ticket, :deadline, :owner, :context]
    defstruct [:ref, :ticket, :deadline, :owner, :context]

    @type t :: %__MODULE__{
            ref: reference,
            ticket: reference,
            deadline: integer | :infinity,
            owner: pid,
            context: map
          }
  end

  ## Starting

  @doc """
  Starts a pool linked to the caller. See the options table in the module doc.

      {:ok, pid} = DSPex.NativePool.start_link(name: MyPool, pool_size: 2)
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    case Options.validate(opts) do
      {:ok, config} ->
        GenServer.start_link(__MODULE__, config, name: config[:name])

      {:error, message} ->
        {:error, {:validation_error, :invalid_options, message, %{pool: opts[:name]}}}
    end
  end

  @doc """
  A child spec; the supervisor waits `:shutdown_timeout` plus a margin for the pool to stop.

      children = [{DSPex.NativePool, name: MyPool}]
  """
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts) do
    shutdown = Keyword.get(opts, :shutdown_timeout, Options.defaults()[:shutdown_timeout])

    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      shutdown: (is_integer(shutdown) && shutdown + 5_000) || 10_000,
      type: :worker
    }
  end

  ## Calling

  @doc """
  Runs `command` with `args` on an idle worker and returns its result.

  `args` is a map (atom or string keys) or keyword list; values may be maps, lists, strings,
  numbers, booleans, `nil` and atoms. Options: `:pool` (default `DSPex.NativePool`) and
  `:timeout`, in ms or `:infinity` (default 60 000): one deadline that covers waiting in the
  queue and running.

  Commands that define pool-wide state (#{Enum.map_join(@pool_wide, ", ", &"`#{&1}`")}) run on
  every worker, as with `broadcast/3`, and are replayed on workers that replace them; the
  first worker's result is returned.

      {:ok, %{"text" => "hi"}} = DSPex.NativePool.execute("echo", %{text: "hi"}, pool: MyPool)
      {:error, {:timeout_error, :request_timeout, _, _}} =
        DSPex.NativePool.execute("slow", %{}, pool: MyPool, timeout: 100)
  """
  @spec execute(String.t() | atom, map | keyword, [call_option]) :: {:ok, term} | error
  def execute(command, args \\ %{}, opts \\ []) do
    with {:ok, call} <- prepare(command, args, opts) do
      if call.context.command in @pool_wide,
        do: pool_wide(call),
        else: run(call, nil, nil)
    end
  end

  @doc """
  Like `execute/3`, but returns the result or raises `DSPex.NativePool.Error`.

      %{"text" => "hi"} = DSPex.NativePool.execute!("echo", %{text: "hi"}, pool: MyPool)
  """
  @spec execute!(String.t() | atom, map | keyword, [call_option]) :: term
  def execute!(command, args \\ %{}, opts \\ []) do
    case execute(command, args, opts) do
      {:ok, result} -> result
      {:error, reason} -> raise Error, reason
    end
  end

  @doc """
  Runs `command` on the worker that holds session `session_id`, binding the session to the
  least-loaded worker on first use. `"session_id"` is added to `args`.

  What a session creates there (`create_program`; `delete_program` forgets it) is remembered:
  if the worker dies, a replacement re-creates it before the session's next request runs.
  A `create_program` without a `program_id` gets one here, so the re-creation keeps it.

      {:ok, %{"program_id" => id}} =
        DSPex.NativePool.execute_in_session("user-42", "create_program",
          %{signature: "question -> answer"}, pool: MyPool)

      {:ok, %{"outputs" => _}} =
        DSPex.NativePool.execute_in_session("user-42", "execute_program",
          %{program_id: id, inputs: %{question: "2+2?"}}, pool: MyPool)
  """
  @spec execute_in_session(String.t(), String.t() | atom, map | keyword, [call_option]) ::
          {:ok, term} | error
  def execute_in_session(session_id, command, args \\ %{}, opts \\ [])

  def execute_in_session(session_id, command, args, opts) when is_binary(session_id) do
    with {:ok, call} <- prepare(command, args, opts) do
      call = %{call | context: Map.put(call.context, :session_id, session_id)}
      {call, record} = session_record(call, session_id)
      run(call, {:session, session_id}, record)
    end
  end

  def execute_in_session(session_id, _command, _args, opts) do
    {:error,
     {:validation_error, :invalid_session,
      "a session id must be a string, got: #{inspect(session_id)}",
      %{pool: Keyword.get(opts, :pool, __MODULE__), session_id: session_id}}}
  end

  @doc """
  Ends a session: its state is freed on its worker (`cleanup_session`) and it is forgotten.
  Returns `:ok` whether or not the session existed.

      :ok = DSPex.NativePool.end_session("user-42", pool: MyPool)
  """
  @spec end_session(String.t(), [call_option]) :: :ok | error
  def end_session(session_id, opts \\ []) when is_binary(session_id) do
    with {:ok, call} <- prepare("cleanup_session", %{session_id: session_id}, opts) do
      case Nif.end_session(call.resource, session_id) do
        nil ->
          :ok

        worker ->
          call = %{call | context: Map.put(call.context, :session_id, session_id)}

          case run(call, {:worker, worker}, nil) do
            {:ok, _} -> :ok
            {:error, _} = error -> error
          end
      end
    end
  end

  @doc """
  The live sessions of a pool: `:id`, `:worker` (the worker index holding it), `:requests`,
  `:age_ms`, `:idle_ms` and `:definitions` (the number of remembered creations).

      [%{id: "user-42", worker: 1}] = DSPex.NativePool.sessions(MyPool)
  """
  @spec sessions(pool) :: [map] | error
  def sessions(pool \\ __MODULE__) do
    with {:ok, resource, _config} <- lookup(pool), do: Nif.list_sessions(resource)
  end

  @doc """
  Runs `command` on every worker and returns each worker's result, keyed by worker index.

      {:ok, %{0 => {:ok, %{"status" => "ok"}}, 1 => {:ok, _}}} =
        DSPex.NativePool.broadcast("ping", %{}, pool: MyPool)
  """
  @spec broadcast(String.t() | atom, map | keyword, [call_option]) ::
          {:ok, %{non_neg_integer => {:ok, term} | error}} | error
  def broadcast(command, args \\ %{}, opts \\ []) do
    with {:ok, call} <- prepare(command, args, opts), do: {:ok, run_everywhere(call)}
  end

  @doc """
  Configures the language model on every worker, now and on every worker started later.
  `config` is what the bridge's `configure_lm` takes: `%{model: "openai/gpt-4o-mini"}` (keys
  from the environment) or `%{model: "dummy", answers: [%{answer: "Paris"}]}` for offline use.

      {:ok, _} = DSPex.NativePool.configure_lm(%{model: "dummy", answers: [%{answer: "4"}]}, pool: MyPool)
  """
  @spec configure_lm(map | keyword, [call_option]) :: {:ok, term} | error
  def configure_lm(config, opts \\ []), do: execute("configure_lm", config, opts)

  @doc """
  Starts a request and returns at once with a handle; `await/2` collects the result. Only the
  calling process may await it. The deadline (`:timeout`) starts now.

      handles = for i <- 1..100, do: DSPex.NativePool.execute_async("echo", %{i: i}, pool: MyPool)
      results = Enum.map(handles, &DSPex.NativePool.await/1)
  """
  @spec execute_async(String.t() | atom, map | keyword, [call_option]) :: Handle.t() | error
  def execute_async(command, args \\ %{}, opts \\ []) do
    with {:ok, call} <- prepare(command, args, opts) do
      %{resource: resource, args: args, timeout: timeout, context: context} = call
      ref = make_ref()

      case submit(resource, ref, context.command, args, timeout, nil, nil) do
        {:ok, ticket, _idle_worker?} ->
          %Handle{
            ref: ref,
            ticket: ticket,
            deadline: deadline(timeout),
            owner: self(),
            context: context
          }

        {:error, reason} ->
          rejected(reason, call)
      end
    end
  end

  @doc """
  Waits for a request started by `execute_async/3`: until its deadline, or `timeout` ms if that
  comes first, after which the request is cancelled. An error tuple from `execute_async/3` is
  passed through, so results can be piped.

      handle = DSPex.NativePool.execute_async("echo", %{a: 1}, pool: MyPool)
      {:ok, %{"a" => 1}} = DSPex.NativePool.await(handle)
  """
  @spec await(Handle.t() | error, timeout) :: {:ok, term} | error
  def await(handle, timeout \\ :infinity)

  def await({:error, _} = error, _timeout), do: error

  def await(%Handle{owner: owner} = handle, timeout) do
    if owner != self() do
      raise ArgumentError, "a handle can only be awaited by the process that started it"
    end

    %Handle{ref: ref, ticket: ticket, context: context} = handle
    await_reply(ref, ticket, min_timeout(remaining(handle.deadline), timeout), context)
  end

  ## Introspection

  @doc """
  A snapshot of the pool: `:pool_size`, `:queue_length`, `:available`, `:sessions`, `:uptime_ms`,
  `:counters` (`:completed`, `:timed_out`, `:rejected`, `:dropped`, `:worker_exited`,
  `:invalid_reply`, `:pool_closed`, `:pool_unavailable`) and one map per worker with `:id`,
  `:os_pid`, `:state` (`:starting`, `:idle`, `:busy`, `:restarting`, `:stopped`), `:requests`,
  `:restarts`, `:last_exit`, `:queue_length` and `:cpu` (the CPU it is pinned to, or `nil`; see
  "CPU pinning").

      %{pool_size: 4, workers: [%{id: 0, state: :idle} | _]} = DSPex.NativePool.stats(MyPool)
  """
  @spec stats(pool) :: map | error
  def stats(pool \\ __MODULE__) do
    with {:ok, resource, config} <- lookup(pool) do
      resource
      |> Nif.pool_stats()
      |> Map.merge(%{
        name: pool,
        sessions: length(Nif.list_sessions(resource)),
        uptime_ms: System.monotonic_time(:millisecond) - config[:started_at]
      })
    end
  end

  ## Internals of a call

  defp prepare(command, args, opts) do
    pool = Keyword.get(opts, :pool, __MODULE__)
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    context = %{pool: pool, command: command, worker_id: nil}

    cond do
      not (is_binary(command) or (is_atom(command) and not is_nil(command))) ->
        {:error,
         {:validation_error, :invalid_command,
          "the command must be a string or an atom, got: #{inspect(command)}", context}}

      not (timeout == :infinity or (is_integer(timeout) and timeout >= 0)) ->
        {:error,
         {:validation_error, :invalid_options,
          "timeout must be a non-negative integer (ms) or :infinity, got: #{inspect(timeout)}",
          context}}

      true ->
        context = %{context | command: to_string(command)}

        with {:ok, resource, config} <- lookup(pool),
             {:ok, args} <- normalize_args(args, context) do
          {:ok,
           %{resource: resource, config: config, args: args, timeout: timeout, context: context}}
        end
    end
  end

  defp normalize_args(args, _context) when is_map(args) and not is_struct(args), do: {:ok, args}

  defp normalize_args(args, context) when is_list(args) do
    if Keyword.keyword?(args),
      do: {:ok, Map.new(args)},
      else: invalid_args("args must be a map or a keyword list, got: #{inspect(args)}", context)
  end

  defp normalize_args(args, context),
    do: invalid_args("args must be a map or a keyword list, got: #{inspect(args)}", context)

  defp invalid_args(message, context),
    do: {:error, {:validation_error, :invalid_args, message, context}}

  # One request, from submit to reply, in the caller's process.
  defp run(call, target, record) do
    %{resource: resource, args: args, timeout: timeout, context: context} = call
    started = Telemetry.start(context)
    ref = make_ref()

    result =
      case submit(resource, ref, context.command, args, timeout, target, record) do
        {:ok, ticket, idle_worker?} ->
          case busy_wait(ref, idle_worker?, call.config) do
            {:ok, outcome} -> outcome(outcome, context)
            :none -> await_reply(ref, ticket, timeout, context)
          end

        {:error, reason} ->
          rejected(reason, call)
      end

    Telemetry.stop(started, context, result)
  end

  # A reply one round trip away comes within microseconds: polling for it, yielding to any other
  # process between looks, keeps this scheduler from going to sleep, whose wake-up by the
  # worker's thread costs more than the round trip itself. A queued request does not poll.
  defp busy_wait(_ref, false = _idle_worker?, _config), do: :none

  defp busy_wait(ref, true, config) do
    wait = System.convert_time_unit(config[:busy_wait_us], :microsecond, :native)
    poll_reply(ref, System.monotonic_time() + wait)
  end

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
  defp submit(resource, ref, command, args, timeout, target, record) do
    timeout_ms = if timeout == :infinity, do: @infinity_ms, else: timeout

    case Nif.submit(resource, ref, command, args, timeout_ms, target, record) do
      :dirty -> Nif.submit_dirty(resource, ref, command, args, timeout_ms, target, record)
      other -> other
    end
  end

  defp rejected(reason, call) do
    {:error, error} = {:error, Error.from_submit(reason, call.context, call.config)}
    Telemetry.rejected(call.context, error)
    {:error, error}
  end

  defp outcome({:ok, _} = ok, _context), do: ok
  defp outcome(error, context), do: {:error, Error.from_outcome(error, context)}

  # The deadline passed. Once cancel/1 returns, no reply can reach the mailbox, unless one
  # was already sent, in which case it is taken here.
  defp give_up(ref, ticket, timeout, context) do
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
            {:error,
             {:validation_error, :already_awaited, "this request's reply was already taken",
              context}}
        end

      :queued ->
        {:error,
         {:timeout_error, :queue_timeout,
          "no worker became free within #{timeout} ms; the request never ran", context}}

      :running ->
        {:error,
         {:timeout_error, :request_timeout,
          "the worker did not answer within #{timeout} ms; its reply will be dropped", context}}
    end
  end

  # Every worker gets its own request; all run concurrently under one deadline.
  defp run_everywhere(call) do
    %{resource: resource, args: args, timeout: timeout, context: context} = call
    deadline = deadline(timeout)

    pending =
      for worker <- 0..(call.config[:pool_size] - 1) do
        ref = make_ref()
        context = %{context | worker_id: worker}

        case submit(resource, ref, context.command, args, timeout, {:worker, worker}, nil) do
          {:ok, ticket, _idle_worker?} -> {worker, {ref, ticket, context}}
          {:error, reason} -> {worker, rejected(reason, %{call | context: context})}
        end
      end

    Map.new(pending, fn
      {worker, {ref, ticket, context}} ->
        {worker, await_reply(ref, ticket, remaining(deadline), context)}

      {worker, error} ->
        {worker, error}
    end)
  end

  defp await_reply(ref, ticket, wait, context) do
    receive do
      {^ref, outcome} -> outcome(outcome, context)
    after
      wait -> give_up(ref, ticket, wait, context)
    end
  end

  # Pool-wide state: remembered for future workers first, so none can miss it, then applied to
  # every current worker.
  defp pool_wide(call) do
    call = remember_pool_wide(call)
    results = run_everywhere(call)

    case Enum.find(results, fn {_worker, result} -> match?({:error, _}, result) end) do
      nil -> results |> Enum.min_by(&elem(&1, 0)) |> elem(1)
      {_worker, error} -> error
    end
  end

  defp remember_pool_wide(%{context: %{command: "create_program"}} = call) do
    call = ensure_program_id(call)
    key = "program:" <> to_string(program_id(call.args))
    # An unencodable definition is not remembered; the call itself reports why.
    _ = Nif.record_global(call.resource, key, "create_program", call.args)
    call
  end

  defp remember_pool_wide(%{context: %{command: "delete_program"}} = call) do
    Nif.forget(call.resource, "program:" <> to_string(program_id(call.args)))
    call
  end

  defp remember_pool_wide(%{context: %{command: "reset_state"}} = call) do
    Nif.forget(call.resource, "program:")
    call
  end

  defp remember_pool_wide(%{context: %{command: "configure_lm"}} = call) do
    # An unencodable configuration is not remembered; the call itself reports why.
    _ = Nif.record_global(call.resource, "configure_lm", "configure_lm", call.args)
    call
  end

  # Session state to remember on success: what create_program made, what delete_program drops.
  defp session_record(call, session_id) do
    call = %{call | args: Map.put(drop_key(call.args, :session_id), "session_id", session_id)}

    case call.context.command do
      "create_program" ->
        call = ensure_program_id(call)
        {call, {:put, session_id, "program:" <> to_string(program_id(call.args))}}

      "delete_program" ->
        {call, {:delete, session_id, "program:" <> to_string(program_id(call.args))}}

      _ ->
        {call, nil}
    end
  end

  defp ensure_program_id(call) do
    case program_id(call.args) do
      nil ->
        id = "prog_" <> Integer.to_string(System.unique_integer([:positive]), 36)
        %{call | args: Map.put(call.args, "program_id", id)}

      _id ->
        call
    end
  end

  # V2 callers name it "id".
  defp program_id(args) do
    Enum.find_value(["program_id", :program_id, "id", :id], &Map.get(args, &1))
  end

  defp drop_key(args, key), do: args |> Map.delete(key) |> Map.delete(Atom.to_string(key))

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: System.monotonic_time(:millisecond) + timeout

  defp remaining(:infinity), do: :infinity
  defp remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  defp min_timeout(:infinity, b), do: b
  defp min_timeout(a, :infinity), do: a
  defp min_timeout(a, b), do: min(a, b)

  defp lookup(pool) do
    case :persistent_term.get({__MODULE__, pool}, nil) do
      {resource, config} ->
        # An owner killed outside a supervisor never ran terminate/2: its pool is gone.
        if Process.alive?(config[:owner]) do
          {:ok, resource, config}
        else
          :persistent_term.erase({__MODULE__, pool})
          lookup(pool)
        end

      nil ->
        {:error,
         {:resource_error, :pool_not_found,
          "no pool named #{inspect(pool)} is running; start one with {DSPex.NativePool, name: #{inspect(pool)}}",
          %{pool: pool, command: nil, worker_id: nil}}}
    end
  end

  ## GenServer: owns the pool's lifecycle, never its requests

  @impl true
  def init(config) do
    # Terminate runs on shutdown, so workers are stopped gracefully.
    Process.flag(:trap_exit, true)
    # The VM ignores SIGCHLD by default, which makes the kernel discard exit statuses; the pool
    # reaps its own children, and ports reap theirs through erl_child_setup.
    :os.set_signal(:sigchld, :default)
    Telemetry.refresh()
    name = config[:name]

    case Nif.start_pool(Options.nif_config(config), self()) do
      {:ok, resource} ->
        deadline = System.monotonic_time(:millisecond) + config[:startup_timeout] + 5_000

        case await_workers(name, config[:pool_size], deadline) do
          :ok ->
            config =
              Keyword.merge(config,
                started_at: System.monotonic_time(:millisecond),
                owner: self()
              )

            :persistent_term.put({__MODULE__, name}, {resource, config})
            schedule_session_sweep(config)
            {:ok, %{name: name, resource: resource, config: config}}

          {:error, reason} ->
            Nif.stop_pool(resource, 0)
            {:stop, reason}
        end

      {:error, message} ->
        {:stop, {:resource_error, :startup_failed, message, %{pool: name}}}
    end
  end

  # Every worker must answer its init ping; the first that cannot start fails the pool.
  defp await_workers(_name, 0, _deadline), do: :ok

  defp await_workers(name, pending, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:dspex_native_pool, :worker_ready, worker, os_pid, restart?} ->
        worker_started(name, worker, os_pid, restart?)
        await_workers(name, pending - 1, deadline)

      {:dspex_native_pool, :worker_start_failed, worker, reason, _failures} ->
        {:error,
         {:resource_error, :worker_start_failed, reason, %{pool: name, worker_id: worker}}}

      {:dspex_native_pool, :log, worker, stream, line} ->
        log_line(name, worker, stream, line)
        await_workers(name, pending, deadline)
    after
      wait ->
        {:error,
         {:timeout_error, :startup_timeout, "#{pending} worker(s) did not become ready in time",
          %{pool: name}}}
    end
  end

  @impl true
  def handle_info({:dspex_native_pool, :log, worker, stream, line}, state) do
    log_line(state.name, worker, stream, line)
    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :worker_ready, worker, os_pid, restart?}, state) do
    worker_started(state.name, worker, os_pid, restart?)
    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :worker_exited, worker, os_pid, reason}, state) do
    Telemetry.worker(:exit, %{pool: state.name, worker_id: worker, os_pid: os_pid, reason: reason})

    unless String.starts_with?(reason, "stopped with the pool") do
      Logger.warning("worker #{worker} (os pid #{os_pid}) #{reason}",
        pool: state.name,
        worker_id: worker
      )
    end

    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :worker_start_failed, worker, reason, failures}, state) do
    Logger.error("worker #{worker} failed to start (attempt #{failures}): #{reason}",
      pool: state.name,
      worker_id: worker
    )

    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :warning, worker, message}, state) do
    Logger.warning(message, pool: state.name, worker_id: worker)
    {:noreply, state}
  end

  # Idle sessions are forgotten and their state freed on their workers.
  def handle_info(:sweep_sessions, state) do
    for {session_id, worker} <- Nif.expire_sessions(state.resource, state.config[:session_ttl]) do
      Logger.debug("session #{inspect(session_id)} expired", pool: state.name, worker_id: worker)
      args = %{"session_id" => session_id}

      Nif.submit(
        state.resource,
        make_ref(),
        "cleanup_session",
        args,
        30_000,
        {:worker, worker},
        nil
      )
    end

    schedule_session_sweep(state.config)
    {:noreply, state}
  end

  def handle_info({:EXIT, _from, reason}, state) do
    {:stop, reason, state}
  end

  # Replies to the session clean-ups sent above.
  def handle_info({ref, _outcome}, state) when is_reference(ref), do: {:noreply, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase({__MODULE__, state.name})
    Nif.stop_pool(state.resource, state.config[:shutdown_timeout])
    :ok
  end

  defp worker_started(name, worker, os_pid, restart?) do
    Telemetry.worker(:start, %{pool: name, worker_id: worker, os_pid: os_pid, restart: restart?})

    if restart? do
      Logger.info("worker #{worker} replaced (os pid #{os_pid})", pool: name, worker_id: worker)
    else
      Logger.debug("worker #{worker} ready (os pid #{os_pid})", pool: name, worker_id: worker)
    end
  end

  defp schedule_session_sweep(config) do
    Process.send_after(self(), :sweep_sessions, min(config[:session_ttl], 60_000))
  end

  defp log_line(name, slot, :stdout, line),
    do: Logger.info("[python] " <> line, pool: name, worker_id: slot)

  defp log_line(name, slot, :stderr, line),
    do: Logger.warning("[python] " <> line, pool: name, worker_id: slot)
end
