defmodule DSPex.NativePool.Cluster do
  @moduledoc false
  # Calls to a pool started with `cluster: true`, from any node (see the README's "Cluster"):
  #
  # * a call runs on this node's member while it has a free slot, else on the member with the
  #   most free capacity (as members last published it, see `Directory`), trying the next on
  #   `:pool_saturated`; `node:` pins it. A call to another node runs there in a process of
  #   its own (`Runner`), which sends the outcome straight to the caller; the caller monitors
  #   it, so a node that goes down fails the call at once with `:node_down`.
  # * a session belongs to one member (registered with `:global`, so every node agrees); what
  #   it sets up is recorded in every directory, and if its node goes away its next call
  #   re-creates it on another member first.
  # * pool-wide state (`configure_lm`, global programs) runs on every member and is recorded
  #   in every directory; a member that joins later replays it before it takes calls.

  alias DSPex.NativePool.{Call, CallOptions, DSPy, Options, Replay, Telemetry}
  alias DSPex.NativePool.Cluster.{Directory, Member, Runner}

  @known [:pool, :timeout, :tools, :node]

  @doc false
  # Whether a call to `opts[:pool]` goes through the cluster: its pool here was started with
  # `cluster: true`, or there is none here but other nodes have members, or `node:` is given.
  def routed?(opts) do
    if is_list(opts) and Keyword.keyword?(opts) do
      pool = Keyword.get(opts, :pool, DSPex.NativePool)

      case :persistent_term.get({DSPex.NativePool, pool}, nil) do
        {_resource, config} -> config[:cluster] == true
        nil -> Keyword.has_key?(opts, :node) or Directory.members(pool) != []
      end
    else
      false
    end
  end

  @doc false
  def execute(command, args, opts) do
    with {:ok, pool, timeout, opts} <- options(command, opts),
         {:ok, args} <- prepared_args(command, args, pool) do
      if Replay.pool_wide?(to_string(command)),
        do: everywhere(pool, command, args, timeout, opts),
        else: anywhere(pool, command, args, timeout, opts)
    end
  end

  @doc false
  def execute_in_session(session_id, command, args, opts) do
    with {:ok, pool, timeout, opts} <- options(command, opts),
         :ok <- Call.check_session(session_id, Call.context(pool, command)),
         {:ok, args} <- prepared_args(command, args, pool) do
      in_session(pool, session_id, command, args, timeout, opts, 3)
    end
  end

  @doc false
  def cluster_stats(pool) do
    for %{node: node, load: load} <- Directory.members(pool) do
      Map.put(Map.take(load, [:pool_size, :in_flight, :queue_length]), :node, node)
    end
  end

  ## Options and arguments

  defp options(command, opts) do
    context = Call.context(Keyword.get(opts, :pool, DSPex.NativePool), command)

    with :ok <- Call.check_command(command, context),
         :ok <- check_keys(opts, context),
         :ok <- check_node(opts, context),
         {:ok, timeout} <- Call.timeout_option(opts, context),
         {:ok, opts} <- tools_here(opts, context) do
      {:ok, Keyword.get(opts, :pool, DSPex.NativePool), timeout, opts}
    end
  end

  # A call's own tools are functions of this node: the call runs on this node's member.
  defp tools_here(opts, context) do
    cond do
      not Keyword.has_key?(opts, :tools) ->
        {:ok, opts}

      Keyword.get(opts, :node, node()) == node() ->
        {:ok, Keyword.put(opts, :node, node())}

      true ->
        Call.invalid(
          :invalid_options,
          "a call with its own :tools runs on this node's member only, not on another node",
          context
        )
    end
  end

  defp check_node(opts, context) do
    case Keyword.fetch(opts, :node) do
      {:ok, node} when is_atom(node) and node not in [nil, true, false] ->
        :ok

      {:ok, other} ->
        Call.invalid(
          :invalid_options,
          "invalid :node: expected a node name (an atom such as :\"py1@host\"), got " <>
            Options.describe(other),
          context
        )

      :error ->
        :ok
    end
  end

  defp check_keys(opts, context) do
    case CallOptions.check_keys(opts, @known, "call options") do
      :ok -> :ok
      {:error, message} -> Call.invalid(:invalid_options, message, context)
    end
  end

  # Prepared once, here, so that every node gets the same arguments (a `create_program`
  # without an id gets its id now).
  defp prepared_args(command, args, pool) do
    context = Call.context(pool, command)

    with {:ok, args} <- Call.normalize_args(args, context),
         do: Replay.prepare_args(context.command, args, context)
  end

  ## Where a call runs

  # This node while it has a free slot, else every member by free capacity (this node's
  # counted now, the others' as they last published it, less what this node sent them since);
  # only the member on `node:` when it is given.
  defp candidates(pool, opts) do
    members = Directory.members(pool)

    case Keyword.fetch(opts, :node) do
      {:ok, node} ->
        Enum.filter(members, &(&1.node == node))

      :error ->
        local = local_free(pool)

        case Enum.split_with(members, &(&1.node == node())) do
          {[here], _others} when is_integer(local) and local > 0 ->
            [here | members -- [here]]

          _ ->
            # Ties broken at random: callers that see the same loads do not all pick one.
            Enum.sort_by(members, &{-free(pool, &1, local), :rand.uniform()})
        end
    end
  end

  defp free(_pool, %{node: node}, local) when node == node(), do: local || 0

  defp free(pool, %{pid: pid, load: load}, _local),
    do: Member.free(load) - Directory.outstanding(pool, pid)

  # Free places of this node's member now (negative when calls wait), or nil if it has none.
  defp local_free(pool) do
    case Call.lookup(pool) do
      {:ok, resource, config} -> Member.free(Member.load(resource, config))
      _ -> nil
    end
  end

  defp anywhere(pool, command, args, timeout, opts) do
    deadline = Call.deadline(timeout)

    case candidates(pool, opts) do
      [] -> no_member(pool, command, opts)
      members -> first_unsaturated(members, pool, command, args, deadline, opts)
    end
  end

  defp first_unsaturated([member | rest], pool, command, args, deadline, opts) do
    case run_on(member, pool, nil, command, args, deadline, opts) do
      {:error, {:resource_error, :pool_saturated, _, _}} when rest != [] ->
        first_unsaturated(rest, pool, command, args, deadline, opts)

      outcome ->
        outcome
    end
  end

  defp no_member(pool, command, opts) do
    where = if opts[:node], do: " on node #{inspect(opts[:node])}", else: " in the cluster"

    {:error,
     {:resource_error, :pool_not_found, "no member of pool #{inspect(pool)}#{where}",
      Map.put(Call.context(pool, command), :node, opts[:node])}}
  end

  # Pool-wide state: on every member at once; recorded in every directory if it succeeded.
  defp everywhere(pool, command, args, timeout, opts) do
    deadline = Call.deadline(timeout)
    members = Directory.members(pool)
    command = to_string(command)

    if members == [] do
      no_member(pool, command, opts)
    else
      outcomes =
        members
        |> Enum.map(fn member ->
          Task.async(fn -> run_on(member, pool, nil, command, args, deadline, opts) end)
        end)
        |> Task.await_many(:infinity)

      if Enum.any?(outcomes, &match?({:ok, _}, &1)), do: record_global(pool, command, args)
      Enum.find(outcomes, hd(outcomes), &match?({:error, _}, &1))
    end
  end

  defp record_global(pool, command, args) do
    with prefix when is_binary(prefix) <- DSPy.forgets(command, args),
         do: Directory.record(pool, {:forget_global, prefix})

    with key when is_binary(key) <- DSPy.remembers(command, args),
         do: Directory.record(pool, {:put_global, key, command, args})
  end

  ## Sessions

  defp in_session(pool, session_id, command, args, timeout, opts, tries) do
    deadline = Call.deadline(timeout)

    tools? = Keyword.has_key?(opts, :tools)

    case owner(pool, session_id, opts) do
      {:ok, %{node: node}, _replays} when node != node() and tools? ->
        Call.invalid(
          :invalid_options,
          "session #{inspect(session_id)} lives on node #{inspect(node)}; a call with its own :tools runs on this node's member only",
          Map.put(Call.context(pool, command), :node, node)
        )

      {:ok, member, replays} ->
        outcome = run_on(member, pool, {session_id, replays}, command, args, deadline, opts)
        record_session(pool, session_id, command, args, outcome)
        outcome

      :retry when tries > 1 ->
        in_session(pool, session_id, command, args, timeout, opts, tries - 1)

      _ ->
        no_member(pool, command, opts)
    end
  end

  # The session's member, and what it must replay first if the session moves to it now.
  defp owner(pool, session_id, opts) do
    name = {__MODULE__, pool, session_id}

    case :global.whereis_name(name) do
      pid when is_pid(pid) ->
        case Enum.find(Directory.members(pool), &(&1.pid == pid)) do
          nil -> {:ok, %{pid: pid, node: node(pid)}, []}
          member -> {:ok, member, []}
        end

      :undefined ->
        claim(name, pool, session_id, opts)
    end
  end

  defp claim(name, pool, session_id, opts) do
    case candidates(pool, opts) do
      [] ->
        :none

      [member | _] ->
        case :global.register_name(name, member.pid) do
          :yes ->
            replays = Directory.session_records(pool, session_id)
            if replays != [], do: Telemetry.session_moved(pool, session_id, member.node)
            {:ok, member, replays}

          :no ->
            :retry
        end
    end
  end

  defp record_session(pool, session_id, command, args, {:ok, _}) do
    case DSPy.session_record(to_string(command), args) do
      {:put, key} -> Directory.record(pool, {:put_session, session_id, key, command, args})
      {:delete, key} -> Directory.record(pool, {:delete_session, session_id, key})
      nil -> :ok
    end
  end

  defp record_session(_pool, _session_id, _command, _args, _outcome), do: :ok

  @doc false
  def end_session(pool, session_id) do
    Directory.record(pool, {:end_session, session_id})
    name = {__MODULE__, pool, session_id}

    case :global.whereis_name(name) do
      pid when is_pid(pid) ->
        :global.unregister_name(name)

        :erpc.call(
          node(pid),
          DSPex.NativePool.Local,
          :end_session,
          [session_id, [pool: pool]],
          5_000
        )

      :undefined ->
        :ok
    end
  catch
    _, _ -> :ok
  end

  @doc false
  # Why a call that uses this node's member only cannot run here, when other nodes have
  # members of `pool`; nil when none has.
  def members_elsewhere(pool) do
    case Directory.members(pool) do
      [] ->
        nil

      members ->
        nodes = members |> Enum.map(& &1.node) |> Enum.uniq() |> inspect()

        "pool #{inspect(pool)} has no member on this node (its members run on #{nodes}): " <>
          "execute/3, execute_in_session/4, configure_lm/2, end_session/2 and cluster_stats/1 " <>
          "reach other nodes' members, but this function uses this node's only; start a " <>
          "member here with {DSPex.NativePool, name: #{inspect(pool)}, cluster: true}"
    end
  end

  @doc false
  # A session its member forgot (idle past `:session_ttl`), called in that member: the cluster
  # forgets it too, its records in every directory and its `:global` name, which would
  # otherwise outlive it on every node.
  def session_expired(pool, session_id) do
    Directory.record(pool, {:end_session, session_id})
    name = {__MODULE__, pool, session_id}
    if :global.whereis_name(name) == self(), do: :global.unregister_name(name)
    :ok
  end

  ## Running on a member

  # Every error of a call that reached a member says which node's member that was.
  defp run_on(member, pool, session, command, args, deadline, opts) do
    case run_on_member(member, pool, session, command, args, deadline, opts) do
      {:error, {category, type, message, context}} when is_map(context) ->
        {:error, {category, type, message, Map.put_new(context, :node, member.node)}}

      outcome ->
        outcome
    end
  end

  defp run_on_member(%{node: node}, pool, session, command, args, deadline, opts)
       when node == node() do
    opts = [pool: pool, timeout: Call.remaining(deadline)] ++ Keyword.take(opts, [:tools])
    Runner.local(pool, session, command, args, opts)
  end

  defp run_on_member(%{node: node} = member, pool, session, command, args, deadline, _opts) do
    pid = Map.get(member, :pid)
    if pid, do: Directory.sent(pool, pid, 1)

    try do
      Runner.remote(node, pool, session, command, args, deadline)
    after
      if pid, do: Directory.sent(pool, pid, -1)
    end
  end
end
