defmodule DSPex.NativePool.SessionPoolV2 do
  @moduledoc """
  A drop-in for callers of DSPex's `DSPex.PythonBridge.SessionPoolV2`, on `DSPex.NativePool`.

  The functions keep V2's names, arguments and result shapes, so switching is an alias:

      alias DSPex.NativePool.SessionPoolV2

      {:ok, %{"program_id" => id}} =
        SessionPoolV2.execute_in_session("s1", :create_program,
          %{signature: "question -> answer"}, pool_name: MyPool)

      {:ok, _} = SessionPoolV2.execute_in_session("s1", :execute_program,
          %{program_id: id, inputs: %{question: "2+2?"}}, pool_name: MyPool)

      :ok = SessionPoolV2.end_session("s1", pool_name: MyPool)

  Differences that only remove failure modes: a session really runs on one worker (V2 sent it
  to any worker and copied program data along), the deadline covers queueing and running
  (`:pool_timeout`, if given, is added to `:timeout`), and a call never waits for a checkout.
  Pool options are those of `DSPex.NativePool`; start the pool with
  `{DSPex.NativePool, name: MyPool}`.
  """

  alias DSPex.NativePool

  @typedoc "V2's call options: `:pool_name`, `:timeout`, `:pool_timeout`."
  @type option :: {:pool_name, atom} | {:timeout, timeout} | {:pool_timeout, timeout}

  @doc "Runs `command` on the session's worker. See `DSPex.NativePool.execute_in_session/4`."
  @spec execute_in_session(String.t(), atom | String.t(), map, [option]) ::
          {:ok, term} | NativePool.error()
  def execute_in_session(session_id, command, args, opts \\ []) do
    NativePool.execute_in_session(session_id, command, args, call_opts(opts))
  end

  @doc "Runs `command` on any worker. See `DSPex.NativePool.execute/3`."
  @spec execute_anonymous(atom | String.t(), map, [option]) :: {:ok, term} | NativePool.error()
  def execute_anonymous(command, args, opts \\ []) do
    NativePool.execute(command, args, call_opts(opts))
  end

  @doc "Ends a session and frees its state on its worker. Always `:ok`, as in V2."
  @spec end_session(String.t(), [option]) :: :ok
  def end_session(session_id, opts \\ []) do
    _ = NativePool.end_session(session_id, call_opts(opts))
    :ok
  end

  @doc """
  V2's session list: one map per live session with `:session_id`, `:started_at` and
  `:last_activity` (monotonic ms), `:operations`, plus `:worker_id`.
  """
  @spec get_session_info(atom) :: [map]
  def get_session_info(pool_name \\ NativePool) do
    now = System.monotonic_time(:millisecond)

    case NativePool.sessions(pool_name) do
      sessions when is_list(sessions) ->
        Enum.map(sessions, fn s ->
          %{
            session_id: s.id,
            started_at: now - s.age_ms,
            last_activity: now - s.idle_ms,
            operations: s.requests,
            worker_id: s.worker
          }
        end)

      {:error, _} ->
        []
    end
  end

  @doc """
  V2's status map: `:pool_size`, `:max_overflow` (always 0: workers are never overflowed),
  `:active_sessions`, `:sessions`, `:uptime_ms`, `:session_affinity`, plus `:workers` and
  `:counters` from `DSPex.NativePool.stats/1`.
  """
  @spec get_pool_status(atom) :: map | NativePool.error()
  def get_pool_status(pool_name \\ NativePool) do
    with %{} = stats <- NativePool.stats(pool_name) do
      sessions = get_session_info(pool_name)

      %{
        pool_size: stats.pool_size,
        max_overflow: 0,
        active_sessions: length(sessions),
        sessions: sessions,
        uptime_ms: stats.uptime_ms,
        session_affinity: %{active_sessions: length(sessions)},
        workers: stats.workers,
        counters: stats.counters
      }
    end
  end

  @doc """
  Pings every worker: `{:ok, :healthy}` when all answer, else the first error.
  (V2 answered `{:ok, :healthy}` without asking the workers.)
  """
  @spec health_check(atom) :: {:ok, :healthy} | NativePool.error()
  def health_check(pool_name \\ NativePool) do
    with {:ok, results} <- NativePool.broadcast("ping", %{}, pool: pool_name, timeout: 5_000) do
      case Enum.find(results, fn {_worker, result} -> match?({:error, _}, result) end) do
        nil -> {:ok, :healthy}
        {_worker, error} -> error
      end
    end
  end

  defp call_opts(opts) do
    timeout =
      case {Keyword.get(opts, :timeout, 60_000), Keyword.get(opts, :pool_timeout)} do
        {t, p} when is_integer(t) and is_integer(p) -> t + p
        {t, _} -> t
      end

    [pool: Keyword.get(opts, :pool_name, NativePool), timeout: timeout]
  end
end
