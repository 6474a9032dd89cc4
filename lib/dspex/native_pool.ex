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

  #{DSPex.NativePool.Options.table()}

  Invalid options make `start_link/1` return `{:error, {:validation_error, :invalid_options,
  message, context}}`.

  ## Errors

  Calls return `{:ok, result}` or `{:error, {category, type, message, context}}` (see `Error`).

  ## Lifecycle

  Workers start in parallel; `start_link/1` returns once every one has answered an init ping,
  or `{:error, reason}` quoting the stderr of a worker that could not start. Stopping the pool
  (supervisor shutdown, `GenServer.stop/1`, its owner's death) ends every worker process; a
  worker also exits by itself when its request pipe closes, or when the VM dies.

  ## Environment

  Workers get the VM's environment as it is when the pool starts, then the pool's defaults
  (`PYTHONPATH`, thread limits), then `:env`; `inherit_env: false` leaves out the VM's.

  ## Waiting for a reply

  A call whose request a waiting worker took at once polls its mailbox for up to
  `:busy_wait_us`, yielding between looks, before it sleeps in `receive`: waking a sleeping
  scheduler costs more than the round trip itself. It does not poll when its scheduler runs on
  the CPU that worker is pinned to (a VM started with `+sbt db` binds its schedulers to CPUs),
  since the poll would take that CPU from the worker.

  ## CPU pinning

  With `pin_cpus: true` (the default) and a free CPU for every worker, each worker's Python
  process and its native thread share one CPU, so each hand-off stays on warm caches (about
  1.4× the 100-byte echo throughput on a 2-core machine; see `BENCHMARKS.md`). A CPU is held by
  one worker of the machine at most (a lock file the kernel releases when its holder exits); a
  pool that finds too few free CPUs is not pinned. A command that needs several cores (native
  threads, subprocesses) wants `pin_cpus: false`. `stats/1` shows each worker's CPU.
  """

  alias DSPex.NativePool.{Call, Cluster, Error, Handle, Local, Nif, Options, Server, WorkerSpec}

  @typedoc "A pool name, as given in `:name`."
  @type pool :: atom

  @typedoc "What a failed call returns; see `DSPex.NativePool.Error`."
  @type error :: {:error, Error.reason()}

  @typedoc """
  Options of a call: `:pool` (default `DSPex.NativePool`) and `:timeout` (ms up to
  4_294_967_295, or `:infinity`; default 60 s). Any other option is refused with
  `:invalid_options`.
  """
  @type call_option :: {:pool, pool} | {:timeout, timeout}

  ## Starting

  @doc """
  Starts a pool linked to the caller. See the options table in the module doc.

      iex> {:ok, pid} = DSPex.NativePool.start_link(name: ExamplePool, pool_size: 1)
      iex> {:ok, %{"status" => "ok"}} = DSPex.NativePool.execute("ping", %{}, pool: ExamplePool)
      iex> GenServer.stop(pid)
      :ok
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    case Options.validate(opts) do
      {:ok, config} ->
        Server.start_link(Keyword.put(config, :python_source, WorkerSpec.python_source(opts)))

      {:error, message} ->
        name = if Keyword.keyword?(List.wrap(opts)), do: Keyword.get(List.wrap(opts), :name)
        {:error, {:validation_error, :invalid_options, message, %{pool: name}}}
    end
  end

  @doc """
  A child spec; the supervisor waits `:shutdown_timeout` plus a margin for the pool to stop.

      iex> DSPex.NativePool.child_spec(name: MyPool).start
      {DSPex.NativePool, :start_link, [[name: MyPool]]}
  """
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts) do
    shutdown = Keyword.get(opts, :shutdown_timeout, Options.defaults()[:shutdown_timeout])

    %{
      id: Keyword.get(opts, :name, __MODULE__),
      # Supervisor reports print the start call's arguments: :env's values stay out of them.
      start: {__MODULE__, :start_link, [Options.Env.hide_in(opts)]},
      shutdown: (is_integer(shutdown) && shutdown + 5_000) || 10_000,
      type: :worker
    }
  end

  ## Calling

  @doc """
  Runs `command` with `args` on an idle worker and returns its result.

  `args` is a map (atom or string keys) or keyword list; values may be maps, lists, strings,
  numbers, booleans, `nil` and atoms. Options: `:pool` (default `DSPex.NativePool`),
  `:timeout`, in ms or `:infinity` (default 60 000): one deadline that covers waiting in the
  queue and running; `:tools`: Elixir tools for this call, merged over the pool's (see
  the `:tools` option), and, for a pool started with `cluster: true`, `:node`: the node whose
  member runs the call (see the README's "Cluster").

  Commands that define pool-wide state (#{Enum.map_join(DSPex.NativePool.DSPy.pool_wide(), ", ", &"`#{&1}`")}) run on
  every worker, as with `broadcast/3`, and are replayed on workers that replace them if they
  succeeded; the first worker's result is returned.

      iex> DSPex.NativePool.execute("echo", %{text: "hi"}, pool: MyPool)
      {:ok, %{"text" => "hi"}}
      iex> {:error, {:validation_error, :unknown_command, message, _}} =
      ...>   DSPex.NativePool.execute("no_such_command", %{}, pool: MyPool)
      iex> message =~ "no_such_command"
      true

  A command still running at its deadline fails with `:request_timeout`:

      {:error, {:timeout_error, :request_timeout, _, _}} =
        DSPex.NativePool.execute("slow", %{}, pool: MyPool, timeout: 100)
  """
  @spec execute(String.t() | atom, map | keyword, [call_option]) :: {:ok, term} | error
  def execute(command, args \\ %{}, opts \\ []) do
    if Cluster.routed?(opts),
      do: Cluster.execute(command, args, opts),
      else: Local.run_anonymous(command, args, opts, nil)
  end

  @doc """
  Like `execute/3`, but returns the result or raises `DSPex.NativePool.Error`.

      iex> DSPex.NativePool.execute!("echo", %{text: "hi"}, pool: MyPool)
      %{"text" => "hi"}
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

  What a session sets up there (`configure_lm`, `create_program`; `delete_program` forgets a
  program) is remembered when it succeeds: if the worker dies, a replacement re-creates it
  before the session's next request runs. A `create_program` without a `program_id` gets one
  here, so the re-creation keeps it. An LM configured in a session applies to that session's
  calls only.

      {:ok, %{"program_id" => id}} =
        DSPex.NativePool.execute_in_session("user-42", "create_program",
          %{signature: "question -> answer"}, pool: MyPool)

      {:ok, %{"outputs" => _}} =
        DSPex.NativePool.execute_in_session("user-42", "execute_program",
          %{program_id: id, inputs: %{question: "2+2?"}}, pool: MyPool)
  """
  @spec execute_in_session(String.t(), String.t() | atom, map | keyword, [call_option]) ::
          {:ok, term} | error
  def execute_in_session(session_id, command, args \\ %{}, opts \\ []) do
    if Cluster.routed?(opts),
      do: Cluster.execute_in_session(session_id, command, args, opts),
      else: Local.run_in_session(session_id, command, args, opts, nil)
  end

  @doc """
  Ends a session: its state is freed on its worker (`cleanup_session`) and it is forgotten.
  Returns `:ok` whether or not the session existed.

      iex> DSPex.NativePool.end_session("no-such-session", pool: MyPool)
      :ok
  """
  @spec end_session(String.t(), [call_option]) :: :ok | error
  def end_session(session_id, opts \\ []) do
    if Cluster.routed?(opts) and is_binary(session_id),
      do: Cluster.end_session(Keyword.get(opts, :pool, __MODULE__), session_id),
      else: Local.end_session(session_id, opts)
  end

  @doc """
  The members of a pool started with `cluster: true` on every node, as they last published
  their load (every 100 ms): one map per member with `:node`, `:pool_size`, `:in_flight` and
  `:queue_length`. `[]` when no node runs such a pool.
  """
  @spec cluster_stats(pool) :: [map]
  def cluster_stats(pool \\ __MODULE__), do: Cluster.cluster_stats(pool)

  @doc """
  The live sessions of a pool: `:id`, `:worker` (the worker index holding it), `:requests`,
  `:age_ms`, `:idle_ms` and `:definitions` (the number of remembered set-ups).

      [%{id: "user-42", worker: 1}] = DSPex.NativePool.sessions(MyPool)
  """
  @spec sessions(pool) :: [map] | error
  def sessions(pool \\ __MODULE__) do
    with {:ok, resource, _config} <- Call.lookup(pool), do: Nif.list_sessions(resource)
  end

  @doc """
  Runs `command` on every worker and returns each worker's result, keyed by worker index.

      iex> DSPex.NativePool.broadcast("echo", %{n: 1}, pool: MyPool)
      {:ok, %{0 => {:ok, %{"n" => 1}}, 1 => {:ok, %{"n" => 1}}}}
  """
  @spec broadcast(String.t() | atom, map | keyword, [call_option]) ::
          {:ok, %{non_neg_integer => {:ok, term} | error}} | error
  def broadcast(command, args \\ %{}, opts \\ []) do
    with {:ok, call} <- Call.prepare(command, args, opts), do: {:ok, Call.run_everywhere(call)}
  end

  @doc """
  Configures the language model: on every worker, now and on every worker started later; or,
  with `session: id`, for that session's calls only (on its worker, and on that worker's
  replacement). `config` is what the bridge's `configure_lm` takes: `%{model:
  "openai/gpt-4o-mini"}` (keys from the environment) or `%{model: "dummy", answers: [%{answer:
  "Paris"}]}` for offline use. It is remembered only if it succeeds.

      {:ok, _} = DSPex.NativePool.configure_lm(%{model: "dummy", answers: [%{answer: "4"}]}, pool: MyPool)
  """
  @spec configure_lm(map | keyword, [call_option | {:session, String.t()}]) ::
          {:ok, term} | error
  def configure_lm(config, opts \\ []) do
    if is_list(opts) and Keyword.keyword?(opts) and Keyword.has_key?(opts, :session) do
      {session_id, opts} = Keyword.pop(opts, :session)
      execute_in_session(session_id, "configure_lm", config, opts)
    else
      execute("configure_lm", config, opts)
    end
  end

  @doc """
  Starts a request and returns at once with a handle; `await/2` collects the result. Only the
  calling process may await it, once. The deadline (`:timeout`) starts now.

      iex> handles = for i <- 1..3, do: DSPex.NativePool.execute_async("echo", %{i: i}, pool: MyPool)
      iex> Enum.map(handles, &DSPex.NativePool.await/1)
      [{:ok, %{"i" => 1}}, {:ok, %{"i" => 2}}, {:ok, %{"i" => 3}}]
  """
  @spec execute_async(String.t() | atom, map | keyword, [call_option]) :: Handle.t() | error
  def execute_async(command, args \\ %{}, opts \\ []) do
    with {:ok, call} <- Call.prepare(command, args, opts) do
      ref = make_ref()

      with {:ok, ticket} <- Call.start(call, ref) do
        %Handle{
          ref: ref,
          ticket: ticket,
          deadline: Call.deadline(call.timeout),
          timeout: call.timeout,
          owner: self(),
          context: call.context
        }
      end
    end
  end

  @doc """
  Runs a streaming command and returns a lazy Enumerable of its chunks, `{:chunk, value}`,
  then `{:done, result}`. The request starts when the stream is enumerated. A command
  streams when it is a generator (`def` or `async def` with `yield`): each yielded value is a
  chunk, its return value the result. Options: those of `execute/3`, whose `:timeout` covers
  the whole stream; `:stream_window` (default: the pool's): how many chunks the worker
  may run ahead of the consumer; `:session`: run it in that session, as
  `execute_in_session/4` does. Halting early (`Enum.take/2`) cancels the request in
  Python; no chunk arrives after that. A failure raises `DSPex.NativePool.Error`. With
  `execute/3` the same command returns its result alone.

      iex> DSPex.NativePool.execute_stream("echo", %{a: 1}, pool: MyPool) |> Enum.to_list()
      [{:done, %{"a" => 1}}]
  """
  @spec execute_stream(String.t() | atom, map | keyword, keyword) :: Enumerable.t()
  def execute_stream(command, args \\ %{}, opts \\ []),
    do: DSPex.NativePool.Streaming.stream(command, args, opts)

  @doc """
  Like `execute_stream/3`, but the chunks go to `pid` as messages: `{ref, {:chunk, value}}`,
  then `{ref, {:done, result}}` or `{ref, {:error, reason}}`. Returns `{:ok, ref}` at once.
  A process of the pool's caller relays them, holding back while `pid` has
  `:stream_window` messages waiting, and cancels the request as soon as `pid` exits, even
  while the worker is between two chunks. `pid` may be on another node (a LiveView on a web
  node, say): its node is then asked how many messages it has waiting once a window's worth
  may be, not before every chunk.
  """
  @spec stream_to(pid, String.t() | atom, map | keyword, keyword) :: {:ok, reference}
  def stream_to(pid, command, args \\ %{}, opts \\ []) when is_pid(pid),
    do: DSPex.NativePool.StreamRelay.start(pid, command, args, opts)

  @doc """
  Waits for a request started by `execute_async/3`: until its deadline, or `timeout` ms if that
  comes first, after which the request is cancelled. An error tuple from `execute_async/3` is
  passed through, so results can be piped. A handle is awaited once: a second `await/2`
  returns `:already_awaited` at once. An invalid `timeout` returns `:invalid_options` and
  leaves the handle as it was, to be awaited again (its reply, like a `Task`'s, waits in the
  mailbox until then).

      iex> handle = DSPex.NativePool.execute_async("echo", %{a: 1}, pool: MyPool)
      iex> DSPex.NativePool.await(handle)
      {:ok, %{"a" => 1}}
      iex> DSPex.NativePool.await(handle)
      {:error, {:validation_error, :already_awaited, "this handle was already awaited",
                %{command: "echo", pool: MyPool, worker_id: nil}}}
  """
  @spec await(Handle.t() | error, timeout) :: {:ok, term} | error
  def await(handle, timeout \\ :infinity)

  def await({:error, _} = error, _timeout), do: error

  def await(%Handle{owner: owner} = handle, timeout) do
    if owner != self() do
      raise ArgumentError, "a handle can only be awaited by the process that started it"
    end

    Handle.await(handle, timeout)
  end

  def await(other, _timeout) do
    Call.invalid(
      :invalid_options,
      "await/2 takes a handle from execute_async/3, got #{Options.describe(other)}",
      %{pool: nil, command: nil, worker_id: nil}
    )
  end

  ## Introspection

  @doc """
  A snapshot of the pool: `:pool_size`, `:queue_length`, `:available` (`false` once every
  worker keeps failing to start, or while the pool stops), `:sessions`, `:uptime_ms`,
  `:counters` (`:completed`; `:timed_out`, requests still running at their deadline;
  `:rejected`, refused with `:pool_saturated`; `:dropped`, requests whose caller died or gave
  up before they ran, or died while they ran; `:worker_exited`, `:invalid_reply`,
  `:pool_closed`, `:pool_unavailable`) and one map per worker with `:id`,
  `:os_pid`, `:state` (`:starting`, `:idle`, `:busy`, `:draining` (the pool is stopping; it finishes what it runs), `:restarting`, `:stopped`), `:requests`,
  `:restarts`, `:last_exit`, `:backoff_ms` (the wait before its latest restart), `:queue_length`
  and `:cpu` (the CPU it is pinned to, or `nil`; see "CPU pinning").

      iex> %{pool_size: 2, workers: [%{id: 0} | _]} = DSPex.NativePool.stats(MyPool)
  """
  @spec stats(pool) :: map | error
  def stats(pool \\ __MODULE__) do
    with {:ok, resource, config} <- Call.lookup(pool) do
      resource
      |> Nif.pool_stats()
      |> Map.merge(%{
        name: pool,
        uptime_ms: System.monotonic_time(:millisecond) - config[:started_at]
      })
    end
  end
end
