defmodule DSPex.NativePool.ClusterTest do
  # Pools across nodes, with real `:peer` nodes on this machine running real pools: this VM
  # runs none (a web node), so every call crosses to a member.
  use DSPex.NativePool.PoolCase, async: false

  alias DSPex.NativePool.Cluster.Directory
  alias DSPex.NativePool.TestCluster

  @moduletag :cluster
  @moduletag timeout: 180_000

  setup_all do
    TestCluster.ensure_distributed!()
    dir = TestCluster.handlers_dir!()
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  setup %{dir: dir} do
    pool = unique_name("np_cluster")
    {peer_a, a} = TestCluster.start_peer!()
    {peer_b, b} = TestCluster.start_peer!()

    on_exit(fn -> Enum.each([peer_a, peer_b], &TestCluster.stop_peer/1) end)

    TestCluster.start_pool!(a, pool, "a", dir)
    TestCluster.start_pool!(b, pool, "b", dir)
    eventually(fn -> length(NativePool.cluster_stats(pool)) == 2 end)
    %{pool: pool, a: a, b: b, dir: dir}
  end

  test "every member is listed and gets calls; node: pins a call", %{pool: pool, a: a, b: b} do
    stats = NativePool.cluster_stats(pool)
    assert Enum.sort(Enum.map(stats, & &1.node)) == Enum.sort([a, b])
    assert Enum.all?(stats, &match?(%{pool_size: 1, in_flight: 0, queue_length: 0}, &1))

    tags =
      1..12
      |> Enum.map(fn _ ->
        Task.async(fn -> NativePool.execute("nap", %{s: 0.3}, pool: pool) end)
      end)
      |> Enum.map(&Task.await(&1, 30_000))
      |> Enum.map(fn {:ok, tag} -> tag end)

    assert Enum.sort(Enum.uniq(tags)) == ["a", "b"]

    assert {:ok, "b"} = NativePool.execute("whoami", %{}, pool: pool, node: b)
    assert {:ok, "a"} = NativePool.execute("whoami", %{}, pool: pool, node: a)

    assert {:error, {:resource_error, :pool_not_found, message, %{node: :nowhere@nohost}}} =
             NativePool.execute("whoami", %{}, pool: pool, node: :nowhere@nohost)

    assert message =~ "no member"

    # An error of a call that ran on a member names the member's node.
    assert {:error, {:validation_error, :unknown_command, _, %{node: ^b, pool: ^pool}}} =
             NativePool.execute("no_such_command", %{}, pool: pool, node: b)

    assert {:error, {:validation_error, :invalid_command, _, _}} =
             NativePool.execute(self(), %{}, pool: pool)

    # A call's own tools are this node's functions: not sent elsewhere.
    tools = [t: {fn _ -> 1 end, "t"}]

    assert {:error, {:validation_error, :invalid_options, _, _}} =
             NativePool.execute("whoami", %{}, pool: pool, node: a, tools: tools)

    # What uses this node's member only says so, and where the members are.
    assert {:error, {:resource_error, :pool_not_found, message, _}} =
             NativePool.execute_async("whoami", %{}, pool: pool)

    assert message =~ "no member on this node"
    assert message =~ inspect(a) and message =~ inspect(b)
    assert {:error, {:resource_error, :pool_not_found, ^message, _}} = NativePool.stats(pool)

    refute_received _
  end

  test "a session stays on one member, from any node", %{pool: pool, a: a, b: b} do
    {:ok, first} = NativePool.execute_in_session("s1", "whoami", %{}, pool: pool)

    for _ <- 1..5 do
      assert {:ok, ^first} = NativePool.execute_in_session("s1", "whoami", %{}, pool: pool)
    end

    # From the members' nodes too.
    for node <- [a, b] do
      assert {:ok, ^first} =
               :erpc.call(node, NativePool, :execute_in_session, [
                 "s1",
                 "whoami",
                 %{},
                 [pool: pool]
               ])
    end

    # A call's own tools cannot follow it to the session's node.
    tools = [t: {fn _ -> 1 end, "t"}]

    assert {:error, {:validation_error, :invalid_options, message, _}} =
             NativePool.execute_in_session("s1", "whoami", %{}, pool: pool, tools: tools)

    assert message =~ "lives on node"
    assert :ok = NativePool.end_session("s1", pool: pool)
  end

  test "a member whose queue is full passes the call to the next", %{a: a, b: b, dir: dir} do
    pool = unique_name("np_saturated")
    TestCluster.start_pool!(a, pool, "a", dir, max_queue: 1)
    TestCluster.start_pool!(b, pool, "b", dir)
    eventually(fn -> length(NativePool.cluster_stats(pool)) == 2 end)

    # a: one running and its one queue place taken; b: one running and three queued. a looks
    # the less loaded, but refuses.
    busy =
      for {node, n} <- [{a, 2}, {b, 4}], _ <- 1..n do
        Task.async(fn -> NativePool.execute("nap", %{s: 1}, pool: pool, node: node) end)
      end

    eventually(fn ->
      Enum.sort_by(NativePool.cluster_stats(pool), &(&1.node != a)) ==
        [
          %{node: a, pool_size: 1, in_flight: 1, queue_length: 1},
          %{node: b, pool_size: 1, in_flight: 1, queue_length: 3}
        ]
    end)

    assert {:ok, "b"} = NativePool.execute("whoami", %{}, pool: pool, timeout: 30_000)

    assert Enum.map(busy, &Task.await(&1, 30_000)) ==
             List.duplicate({:ok, "a"}, 2) ++ List.duplicate({:ok, "b"}, 4)
  end

  test "a session its member forgets when idle is forgotten by the cluster too",
       %{a: a, dir: dir} do
    pool = unique_name("np_cluster_ttl")
    TestCluster.start_pool!(a, pool, "a", dir, session_ttl: 1_000)
    eventually(fn -> NativePool.cluster_stats(pool) != [] end)
    name = {DSPex.NativePool.Cluster, pool, "idle"}

    assert {:ok, _} =
             NativePool.configure_lm(%{model: "dummy", answers: [%{answer: "x"}]},
               session: "idle",
               pool: pool
             )

    # Records reach every directory as messages: this node's has it soon, not at once.
    eventually(fn -> match?([{"configure_lm", _}], Directory.session_records(pool, "idle")) end)
    assert node(:global.whereis_name(name)) == a

    eventually(fn -> :global.whereis_name(name) == :undefined end)
    eventually(fn -> Directory.session_records(pool, "idle") == [] end)
    eventually(fn -> :erpc.call(a, Directory, :session_records, [pool, "idle"]) == [] end)
  end

  test "a caller that dies ends its call on the other node", %{pool: pool, b: b} do
    caller = spawn(fn -> NativePool.execute("nap", %{s: 30}, pool: pool, node: b) end)
    eventually(fn -> runners(b) != [] end)
    Process.exit(caller, :kill)
    # Its process there is gone: the pool sees its caller dead, as with a local caller.
    eventually(fn -> runners(b) == [] end)
  end

  defp runners(node) do
    for pid <- :erpc.call(node, Process, :list, []),
        :erpc.call(node, Process, :info, [pid, :initial_call]) ==
          {:initial_call, {DSPex.NativePool.Cluster.Runner, :serve, 7}},
        do: pid
  end

  test "a node killed mid-call fails the call at once with :node_down", %{pool: pool, b: b} do
    task =
      Task.async(fn ->
        NativePool.execute("nap", %{s: 30}, pool: pool, node: b, timeout: 60_000)
      end)

    eventually(fn ->
      Enum.any?(NativePool.cluster_stats(pool), &(&1.node == b and &1.in_flight == 1))
    end)

    started = System.monotonic_time(:millisecond)
    System.cmd("kill", ["-9", to_string(TestCluster.os_pid(b))])

    assert {:error, {:communication_error, :node_down, message, %{node: ^b}}} =
             Task.await(task, 10_000)

    assert System.monotonic_time(:millisecond) - started < 1_000
    assert message =~ "went down"

    # New calls go to the member left.
    eventually(fn -> length(NativePool.cluster_stats(pool)) == 1 end)
    assert {:ok, "a"} = NativePool.execute("whoami", %{}, pool: pool)
    refute_received _
  end

  test "pool-wide state reaches every member, and one that joins later; a session moves when its node goes",
       %{pool: pool, a: a, b: b, dir: dir} do
    dummy = %{model: "dummy", answers: [%{answer: "42"}]}
    assert {:ok, _} = NativePool.execute("configure_lm", dummy, pool: pool, timeout: 60_000)

    assert {:ok, %{"program_id" => "qa"}} =
             NativePool.execute(
               "create_program",
               %{program_id: "qa", signature: "question -> answer"},
               pool: pool
             )

    run = %{program_id: "qa", inputs: %{question: "?"}}

    for node <- [a, b] do
      assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
               NativePool.execute("execute_program", run, pool: pool, node: node, timeout: 60_000)
    end

    # A third node joins: it replays the pool-wide state before it takes calls.
    {peer_c, c} = TestCluster.start_peer!()
    on_exit(fn -> TestCluster.stop_peer(peer_c) end)
    TestCluster.start_pool!(c, pool, "c", dir)
    eventually(fn -> length(NativePool.cluster_stats(pool)) == 3 end)

    assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
             NativePool.execute("execute_program", run, pool: pool, node: c, timeout: 60_000)

    # A session's program, on the node that owns the session...
    create = %{program_id: "mine", signature: "question -> answer"}
    assert {:ok, _} = NativePool.execute_in_session("s2", "create_program", create, pool: pool)
    {:ok, owner_tag} = NativePool.execute_in_session("s2", "whoami", %{}, pool: pool)
    owner = Enum.find([a, b, c], &(tag(&1, pool) == owner_tag))

    # ... is re-created elsewhere when that node goes away.
    test_pid = self()
    handler = fn _event, _measurements, meta, _ -> send(test_pid, {:moved, meta}) end

    :telemetry.attach(
      "session-moved",
      [:dspex, :native_pool, :cluster, :session_moved],
      handler,
      nil
    )

    on_exit(fn -> :telemetry.detach("session-moved") end)
    System.cmd("kill", ["-9", to_string(TestCluster.os_pid(owner))])
    eventually(fn -> length(NativePool.cluster_stats(pool)) == 2 end)

    eventually(fn ->
      :global.whereis_name({DSPex.NativePool.Cluster, pool, "s2"}) == :undefined
    end)

    mine = %{program_id: "mine", inputs: %{question: "?"}}

    assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
             NativePool.execute_in_session("s2", "execute_program", mine,
               pool: pool,
               timeout: 60_000
             )

    {:ok, new_tag} = NativePool.execute_in_session("s2", "whoami", %{}, pool: pool)
    assert new_tag != owner_tag
    assert_received {:moved, %{pool: ^pool, session_id: "s2", node: node}}
    assert tag(node, pool) == new_tag
    refute_received _
  end

  defp tag(node, pool), do: elem(NativePool.execute("whoami", %{}, pool: pool, node: node), 1)
end
