defmodule DSPex.NativePool.SessionPoolV2.Tracker do
  @moduledoc false
  # DSPex V2's session tracking, kept for its callers: one public ETS table, named as V2 named
  # it (`:dspex_pool_sessions`), shared by every pool of the VM, holding
  # `{session_id, info, pool}` where `info` is V2's map (`:session_id`, `:started_at`,
  # `:last_activity` in monotonic ms, `:operations`). It is observability only: where a
  # session runs is decided by the pool (see `DSPex.NativePool.execute_in_session/4`).

  use GenServer

  @table :dspex_pool_sessions

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    {:ok, nil}
  end

  @doc "Starts tracking `session_id` (again, from zero operations)."
  def track(session_id, pool \\ nil)

  # Only sessions the pool could run are tracked; V2's callers still get `:ok`.
  def track(session_id, _pool) when not is_binary(session_id), do: :ok

  def track(session_id, pool) do
    now = System.monotonic_time(:millisecond)
    info = %{session_id: session_id, started_at: now, last_activity: now, operations: 0}
    :ets.insert(@table, {session_id, info, pool})
    :ok
  end

  @doc "Tracks `session_id` if it is not tracked yet, remembering the pool it runs on."
  def ensure(session_id, pool) do
    now = System.monotonic_time(:millisecond)
    info = %{session_id: session_id, started_at: now, last_activity: now, operations: 0}

    unless :ets.insert_new(@table, {session_id, info, pool}),
      do: :ets.update_element(@table, session_id, {3, pool})

    :ok
  end

  @doc "Counts one more operation of `session_id` (tracking it if it was not)."
  def touch(session_id) when not is_binary(session_id), do: :ok

  def touch(session_id) do
    now = System.monotonic_time(:millisecond)

    case :ets.lookup(@table, session_id) do
      [{^session_id, info, pool}] ->
        info = %{info | last_activity: now, operations: info.operations + 1}
        :ets.insert(@table, {session_id, info, pool})

      [] ->
        info = %{session_id: session_id, started_at: now, last_activity: now, operations: 1}
        :ets.insert(@table, {session_id, info, nil})
    end

    :ok
  end

  @doc "Stops tracking `session_id`; returns the pool it ran on, if known."
  def forget(session_id) do
    case :ets.take(@table, session_id) do
      [{_id, _info, pool}] -> pool
      [] -> nil
    end
  end

  @doc """
  Stops tracking `session_id` if it ran on `pool`, which has forgotten it (idle past
  `:session_ttl`): V2's table would otherwise keep every expired session forever.
  """
  def expired(session_id, pool) do
    :ets.match_delete(@table, {session_id, :_, pool})
    :ok
  rescue
    # The library's application (which owns the table) is not running.
    ArgumentError -> :ok
  end

  @doc "Every tracked session's info map."
  def all, do: :ets.select(@table, [{{:_, :"$1", :_}, [], [:"$1"]}])
end
