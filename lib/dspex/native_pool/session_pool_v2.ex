defmodule DSPex.NativePool.SessionPoolV2 do
  @moduledoc """
  A drop-in for callers of DSPex V2's `DSPex.PythonBridge.SessionPoolV2`, on `DSPex.NativePool`.

  Every public function of V2's module is here with its arity, options and result shapes, so
  switching is an alias:

      alias DSPex.NativePool.SessionPoolV2

      {:ok, _pid} = SessionPoolV2.start_link(name: MyPool, pool_size: 2)

      {:ok, %{"program_id" => id}} =
        SessionPoolV2.execute_in_session("s1", :create_program,
          %{signature: "question -> answer"}, pool_name: SessionPoolV2.get_pool_name_for(MyPool))

      {:ok, _} = SessionPoolV2.execute_in_session("s1", :execute_program,
          %{program_id: id, inputs: %{question: "2+2?"}}, pool_name: MyPool)

      :ok = SessionPoolV2.end_session("s1")

  ## What is the same

    * `start_link/1` and `child_spec/1` take V2's `:name`, `:pool_size`, `:overflow` and
      `:worker_module` (and any option of `DSPex.NativePool`); `get_pool_name_for/1` answers
      V2's `:"\#{name}_pool"`, and calls accept that name or the pool's own as `:pool_name`.
    * Calls take `:pool_name`, `:timeout` (the run, default 60 s) and `:pool_timeout` (waiting
      for a worker, default 75 s, as in V2). A request no worker has taken within
      `:pool_timeout` fails with `{:timeout_error, :checkout_timeout, _, context}`; a pool that
      is not running, with `{:resource_error, :pool_not_available, _, context}`. Every error's
      `context` has `:pool_name` (and `:session_id` for session calls). Commands may be atoms.
    * Session tracking is V2's: a public ETS table `:dspex_pool_sessions` shared by every pool,
      read by `get_session_info/0` and `get_pool_status/1`, written by `track_session/1`,
      `update_session_activity/1` and `end_session/1`; a session the pool forgets (idle past
      `:session_ttl`) leaves it too.

  ## What differs

    * A session really runs on one worker, which holds its programs (V2 sent each call to any
      worker and copied program data along); `:session_affinity` in `get_pool_status/1` lists
      which worker holds each session, where V2 returned only a count.
    * `:overflow` is accepted and reported as `:max_overflow`, but no overflow workers start:
      the pool has `:pool_size` workers and a bounded queue.
    * `health_check/1` pings every worker (V2 answered `{:ok, :healthy}` without asking).
    * A late reply can never reach the next caller, and there is no checkout process.
    * Options V2 crashed on (options that are not a keyword list, a `:pool_timeout` that is
      neither ms nor `:infinity`) are `{:validation_error, :invalid_options, message, context}`.
  """

  alias DSPex.NativePool
  alias DSPex.NativePool.{CallOptions, Options}
  alias DSPex.NativePool.SessionPoolV2.{Owner, Tracker}

  @default_timeout 60_000
  @default_pool_timeout 75_000

  @typedoc "V2's call options: `:pool_name`, `:timeout`, `:pool_timeout`."
  @type option :: {:pool_name, atom} | {:timeout, timeout} | {:pool_timeout, timeout}

  @v2_only [:overflow, :worker_module]

  ## The pool

  @doc """
  Starts a pool named `:name` (default `DSPex.NativePool`). V2's `:overflow` and
  `:worker_module` are accepted; every other option is `DSPex.NativePool`'s.

  The process returned owns the pool, as V2's pool manager did: stopping it, or the death of
  the process that started it, stops the pool (running requests get `:shutdown_timeout`).
  """
  @spec start_link(keyword) :: GenServer.on_start()
  def start_link(opts \\ []) do
    if Keyword.keyword?(opts) do
      name = Keyword.get(opts, :name, NativePool)
      overflow = Keyword.get(opts, :overflow, 0)
      :persistent_term.put({__MODULE__, name}, %{max_overflow: overflow})
      Owner.start_link(Keyword.drop(opts, @v2_only))
    else
      # Never the defaults in place of what was given: the pool's validation says what is wrong.
      NativePool.start_link(opts)
    end
  end

  @doc "A child spec for `start_link/1`."
  @spec child_spec(keyword) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      NativePool.child_spec(Keyword.drop(opts, @v2_only))
      | start: {__MODULE__, :start_link, [NativePool.Options.Env.hide_in(opts)]}
    }
  end

  @doc "V2's name for the pool behind `name`: `:\"\#{name}_pool\"`."
  @spec get_pool_name_for(atom) :: atom
  def get_pool_name_for(name \\ NativePool), do: :"#{name}_pool"

  ## Calls

  @doc "Runs `command` on the session's worker. See `DSPex.NativePool.execute_in_session/4`."
  @spec execute_in_session(String.t(), atom | String.t(), map, [option]) ::
          {:ok, term} | NativePool.error()
  def execute_in_session(session_id, command, args, opts \\ []) do
    with {:ok, pool, pool_name, call_opts, checkout} <-
           call_options(opts, %{session_id: session_id}) do
      if is_binary(session_id), do: Tracker.ensure(session_id, pool)

      session_id
      |> DSPex.NativePool.Local.run_in_session(command, args, call_opts, checkout)
      |> counted(session_id)
      |> with_pool_name(pool_name)
    end
  end

  @doc "Runs `command` on any worker. See `DSPex.NativePool.execute/3`."
  @spec execute_anonymous(atom | String.t(), map, [option]) :: {:ok, term} | NativePool.error()
  def execute_anonymous(command, args, opts \\ []) do
    with {:ok, _pool, pool_name, call_opts, checkout} <- call_options(opts, %{}) do
      command
      |> DSPex.NativePool.Local.run_anonymous(args, call_opts, checkout)
      |> with_pool_name(pool_name)
    end
  end

  defp counted({:ok, _} = ok, session_id) do
    update_session_activity(session_id)
    ok
  end

  defp counted(error, _session_id), do: error

  defp with_pool_name({:error, {category, type, message, context}}, pool_name),
    do: {:error, {category, type, message, Map.put(context, :pool_name, pool_name)}}

  defp with_pool_name(result, _pool_name), do: result

  # V2's options to the pool's: one deadline (`timeout` + `pool_timeout`), and `pool_timeout`
  # for the wait for a worker.
  defp call_options(opts, context) do
    if Keyword.keyword?(opts) do
      pool_options(opts, Map.put(context, :pool_name, Keyword.get(opts, :pool_name, NativePool)))
    else
      message = "call options must be a keyword list, got #{Options.describe(opts)}"
      invalid(message, Map.put(context, :pool_name, nil))
    end
  end

  defp pool_options(opts, %{pool_name: pool_name} = context) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    pool_timeout = Keyword.get(opts, :pool_timeout, @default_pool_timeout)

    with :ok <- pool_timeout(pool_timeout, context) do
      case resolve(pool_name) do
        {:ok, pool} ->
          {:ok, pool, pool_name, [pool: pool, timeout: total(timeout, pool_timeout)],
           checkout(pool_timeout)}

        :error ->
          {:error,
           {:resource_error, :pool_not_available, "no pool #{inspect(pool_name)} is running",
            context}}
      end
    end
  end

  defp pool_timeout(p, context) do
    case CallOptions.check_timeout(p, :pool_timeout) do
      {:ok, _} -> :ok
      {:error, message} -> invalid(message, context)
    end
  end

  defp invalid(message, context),
    do: {:error, {:validation_error, :invalid_options, message, context}}

  defp total(t, p) when is_integer(t) and is_integer(p), do: t + p
  defp total(t, _p), do: t

  defp checkout(p) when is_integer(p), do: p
  defp checkout(:infinity), do: nil

  # The pool's own name, or V2's `:"#{name}_pool"` for it.
  defp resolve(pool_name) when is_atom(pool_name) do
    cond do
      running?(pool_name) ->
        {:ok, pool_name}

      String.ends_with?(Atom.to_string(pool_name), "_pool") ->
        base = pool_name |> Atom.to_string() |> String.replace_suffix("_pool", "")

        try do
          pool = String.to_existing_atom(base)
          if running?(pool), do: {:ok, pool}, else: :error
        rescue
          ArgumentError -> :error
        end

      true ->
        :error
    end
  end

  defp resolve(_pool_name), do: :error

  # The pool `name` stands for, or nil if none is running: then nothing is left to free.
  defp running_pool(name) do
    case resolve(name) do
      {:ok, pool} -> pool
      :error -> nil
    end
  end

  defp running?(pool), do: match?({:ok, _resource, _config}, DSPex.NativePool.Call.lookup(pool))

  ## Session tracking (V2's, for observability)

  @doc "Starts tracking a session in V2's table (from zero operations)."
  @spec track_session(String.t()) :: :ok
  def track_session(session_id), do: Tracker.track(session_id)

  @doc "Counts one more operation of a session and updates its `:last_activity`."
  @spec update_session_activity(String.t()) :: :ok
  def update_session_activity(session_id), do: Tracker.touch(session_id)

  @doc """
  Ends a session: it is no longer tracked, and its state is freed on the worker of the pool it
  ran on (or of `:pool_name`). Always `:ok`, as in V2.
  """
  @spec end_session(String.t(), [option]) :: :ok
  def end_session(session_id, opts \\ []) do
    ran_on = Tracker.forget(session_id)
    opts = if Keyword.keyword?(opts), do: opts, else: []

    pool =
      case Keyword.fetch(opts, :pool_name) do
        {:ok, name} -> running_pool(name)
        :error -> ran_on
      end

    if is_atom(pool) and pool != nil, do: _ = NativePool.end_session(session_id, pool: pool)
    :ok
  end

  @doc """
  V2's list of tracked sessions, across every pool: maps with `:session_id`, `:started_at` and
  `:last_activity` (monotonic ms), and `:operations`.
  """
  @spec get_session_info() :: [map]
  def get_session_info, do: Tracker.all()

  ## Status

  @doc """
  V2's status map: `:pool_size`, `:max_overflow`, `:active_sessions` and `:sessions` (the
  tracked sessions), `:uptime_ms`, `:session_affinity` (`%{active_sessions: n, workers:
  %{session_id => worker}}`: where the pool runs each session), plus `:workers` and
  `:counters` from `DSPex.NativePool.stats/1`.
  """
  @spec get_pool_status(atom) :: map | NativePool.error()
  def get_pool_status(name \\ NativePool) do
    with {:ok, pool} <- resolve(name) |> found(name),
         %{} = stats <- NativePool.stats(pool) do
      sessions = get_session_info()
      bound = Map.new(NativePool.sessions(pool), &{&1.id, &1.worker})
      v2 = :persistent_term.get({__MODULE__, pool}, %{max_overflow: 0})

      %{
        pool_size: stats.pool_size,
        max_overflow: v2.max_overflow,
        active_sessions: length(sessions),
        sessions: sessions,
        uptime_ms: stats.uptime_ms,
        session_affinity: %{active_sessions: map_size(bound), workers: bound},
        workers: stats.workers,
        counters: stats.counters
      }
    end
  end

  @doc """
  Pings every worker: `{:ok, :healthy}` when all answer, else the first error.
  """
  @spec health_check(atom) :: {:ok, :healthy} | NativePool.error()
  def health_check(name \\ NativePool) do
    with {:ok, pool} <- resolve(name) |> found(name),
         {:ok, results} <- NativePool.broadcast("ping", %{}, pool: pool, timeout: 5_000) do
      case Enum.find(results, fn {_worker, result} -> match?({:error, _}, result) end) do
        nil -> {:ok, :healthy}
        {_worker, error} -> error
      end
    end
  end

  defp found({:ok, pool}, _name), do: {:ok, pool}

  defp found(:error, name) do
    {:error,
     {:resource_error, :pool_not_available, "no pool #{inspect(name)} is running",
      %{pool_name: name}}}
  end
end
