defmodule DSPex.NativePool.Cluster.Directory do
  @moduledoc false
  # One per node, started by the library's application: what this node knows of the pools
  # started with `cluster: true` on every node of the cluster, in one public ETS table.
  #
  # * `{{:member, pool, pid}, node, load}`: a member pool (its owner process `pid`) and the
  #   load it published last (see `publish/2`); removed when that process goes (its pool
  #   stopped, its node went down or away).
  # * `{{:global, pool, key}, seq, command, args}`: the pool-wide state every member must
  #   have (`configure_lm`, global programs), replayed on members that join later.
  # * `{{:session, pool, session_id, key}, seq, command, args}`: what a session set up, to
  #   re-create it on another node if its own goes away.
  #
  # Directories find each other through the `:pg` scope `scope/0`, whose group
  # `:directories` every one of them joins; `:pg` follows nodes as they connect and leave.

  use GenServer

  @scope :dspex_native_pool_cluster
  @table __MODULE__

  @doc false
  def scope, do: @scope

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  def child_spec(opts),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, type: :worker}

  @doc false
  # Every member of `pool` known here: `%{pid:, node:, load:}`, this node's first.
  def members(pool) do
    @table
    |> :ets.match_object({{:member, pool, :_}, :_, :_})
    |> Enum.map(fn {{:member, _, pid}, node, load} -> %{pid: pid, node: node, load: load} end)
    |> Enum.sort_by(&{&1.node != node(), &1.node})
  rescue
    ArgumentError -> []
  end

  @doc false
  # Counts a call this node sent to member `pid` (`+1`) or got back from it (`-1`): between
  # two publications a member's load as published does not show them.
  def sent(pool, pid, delta) do
    :ets.update_counter(@table, {:sent, pool, pid}, delta, {{:sent, pool, pid}, 0})
  rescue
    ArgumentError -> 0
  end

  @doc false
  # Calls this node sent to member `pid` and has not got back.
  def outstanding(pool, pid) do
    case :ets.lookup(@table, {:sent, pool, pid}) do
      [{_, n}] -> n
      [] -> 0
    end
  rescue
    ArgumentError -> 0
  end

  @doc false
  # Sends the load of member `pid` of `pool` to every directory of the cluster.
  def publish(pool, load), do: tell_all({:load, pool, self(), node(), load})

  @doc false
  # State every member of `pool` must have, or must forget, told to every directory:
  # `{:put_global, key, command, args}`, `{:forget_global, prefix}`,
  # `{:put_session, session_id, key, command, args}`, `{:delete_session, session_id, key}`,
  # `{:end_session, session_id}` or `:reset` (the pool starts afresh: no member was left).
  def record(pool, change), do: tell_all({:record, pool, change})

  @doc false
  # The pool-wide state of `pool` known here, as `{command, args}` in the order it was set.
  def globals(pool), do: ordered({{:global, pool, :_}, :_, :_, :_})

  @doc false
  # What session `session_id` of `pool` set up, as `{command, args}` in order.
  def session_records(pool, session_id),
    do: ordered({{:session, pool, session_id, :_}, :_, :_, :_})

  @doc false
  # Every record of `pool` known here, for a directory that has none (see `adopt/2`).
  def export(pool) do
    @table
    |> :ets.match_object({{:global, pool, :_}, :_, :_, :_})
    |> Kernel.++(:ets.match_object(@table, {{:session, pool, :_, :_}, :_, :_, :_}))
    |> Enum.sort_by(&elem(&1, 1))
  rescue
    ArgumentError -> []
  end

  @doc false
  # Takes the records of another node's directory (a pool joining a running cluster).
  def adopt(pool, records), do: GenServer.call(__MODULE__, {:adopt, pool, records})

  defp ordered(pattern) do
    @table
    |> :ets.match_object(pattern)
    |> Enum.sort_by(&elem(&1, 1))
    |> Enum.map(fn {_key, _seq, command, args} -> {command, args} end)
  rescue
    ArgumentError -> []
  end

  defp tell_all(message) do
    for directory <- :pg.get_members(@scope, :directories), do: send(directory, message)
    :ok
  end

  @impl true
  def init(nil) do
    # This node may run no pool, whose start would check for :telemetry.
    DSPex.NativePool.Telemetry.refresh()
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    :ok = :pg.join(@scope, :directories, self())
    {:ok, %{monitored: MapSet.new()}}
  end

  @impl true
  def handle_call({:adopt, pool, records}, _from, state) do
    for {key, _seq, command, args} <- records,
        elem(key, 1) == pool,
        do: :ets.insert(@table, {key, seq(), command, args})

    {:reply, :ok, state}
  end

  @impl true
  def handle_info({:load, pool, pid, node, load}, state) do
    :ets.insert(@table, {{:member, pool, pid}, node, load})

    if MapSet.member?(state.monitored, pid) do
      {:noreply, state}
    else
      Process.monitor(pid)
      {:noreply, %{state | monitored: MapSet.put(state.monitored, pid)}}
    end
  end

  def handle_info({:record, pool, change}, state) do
    apply_change(pool, change)
    {:noreply, state}
  end

  def handle_info({:DOWN, _ref, :process, pid, _reason}, state) do
    :ets.match_delete(@table, {{:member, :_, pid}, :_, :_})
    :ets.match_delete(@table, {{:sent, :_, pid}, :_})
    {:noreply, %{state | monitored: MapSet.delete(state.monitored, pid)}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp apply_change(pool, {:put_global, key, command, args}),
    do: :ets.insert(@table, {{:global, pool, key}, seq(), command, args})

  defp apply_change(pool, {:forget_global, prefix}) do
    for {{:global, ^pool, key} = row, _, _, _} <-
          :ets.match_object(@table, {{:global, pool, :_}, :_, :_, :_}),
        String.starts_with?(key, prefix),
        do: :ets.delete(@table, row)
  end

  defp apply_change(pool, {:put_session, session_id, key, command, args}),
    do: :ets.insert(@table, {{:session, pool, session_id, key}, seq(), command, args})

  defp apply_change(pool, {:delete_session, session_id, key}),
    do: :ets.delete(@table, {:session, pool, session_id, key})

  defp apply_change(pool, {:end_session, session_id}),
    do: :ets.match_delete(@table, {{:session, pool, session_id, :_}, :_, :_, :_})

  defp apply_change(pool, :reset) do
    :ets.match_delete(@table, {{:global, pool, :_}, :_, :_, :_})
    :ets.match_delete(@table, {{:session, pool, :_, :_}, :_, :_, :_})
  end

  defp seq, do: System.unique_integer([:monotonic])
end
