defmodule DSPex.NativePool.SessionPoolV2Test do
  # DSPex V2's SessionPoolV2 contract, as its callers rely on it: names, arities, options,
  # result and error shapes. Not async: V2's session tracking is one table for the whole VM.
  use DSPex.NativePool.PoolCase, async: false

  alias DSPex.NativePool.SessionPoolV2

  @moduletag timeout: 120_000

  setup do
    on_exit(fn -> :ets.delete_all_objects(:dspex_pool_sessions) end)
    name = unique_name("v2")

    {:ok, pid} =
      SessionPoolV2.start_link(name: name, pool_size: 2, overflow: 1, worker_module: V2Worker)

    # The pool stops with this test's process, which its owner is linked to: wait until its
    # process is gone, and with it every worker and CPU it held.
    server = Process.whereis(name)

    on_exit(fn ->
      ref = Process.monitor(server)

      receive do
        {:DOWN, ^ref, _, _, _} -> :ok
      after
        30_000 -> flunk("the pool did not stop")
      end
    end)

    %{name: name, pool: SessionPoolV2.get_pool_name_for(name), pid: pid}
  end

  test "GenServer.stop/3 on the process start_link/1 returned stops its pool" do
    name = unique_name("v2_stop")
    {:ok, pid} = SessionPoolV2.start_link(name: name, pool_size: 1)
    [os_pid] = worker_os_pids(name)
    assert :ok = GenServer.stop(pid, :normal, 10_000)
    assert {:error, {:resource_error, :pool_not_found, _, _}} = NativePool.stats(name)
    refute os_process_exists?(os_pid)
  end

  test "start_link/1 refuses options that are not a keyword list, starting nothing" do
    assert {:error, {:validation_error, :invalid_options, message, _}} =
             SessionPoolV2.start_link(%{name: unique_name("v2_map"), pool_size: 1})

    assert message =~ "keyword list"
    assert {:error, {:resource_error, :pool_not_found, _, _}} = NativePool.stats(NativePool)
  end

  test "start_link/1 takes V2's options; the status has V2's keys", %{name: name, pid: pid} do
    assert Process.alive?(pid)

    assert %{
             pool_size: 2,
             max_overflow: 1,
             active_sessions: 0,
             sessions: [],
             uptime_ms: uptime,
             session_affinity: %{}
           } = SessionPoolV2.get_pool_status(name)

    assert is_integer(uptime) and uptime >= 0
    assert SessionPoolV2.get_pool_name_for(name) == :"#{name}_pool"
    assert {:ok, :healthy} = SessionPoolV2.health_check(name)
  end

  test "a child spec starts the same pool under a supervisor" do
    name = unique_name("v2_child")
    start_supervised!({SessionPoolV2, name: name, pool_size: 1, overflow: 3})
    assert %{pool_size: 1, max_overflow: 3} = SessionPoolV2.get_pool_status(name)
  end

  test "calls take V2's pool name or the pool's own, and atom commands", ctx do
    assert {:ok, %{"status" => "ok"}} =
             SessionPoolV2.execute_in_session("s1", :ping, %{test: true}, pool_name: ctx.pool)

    assert {:ok, %{"status" => "ok"}} =
             SessionPoolV2.execute_anonymous(:ping, %{}, pool_name: ctx.name)

    assert [%{session_id: "s1", operations: 1, started_at: t0, last_activity: t1}] =
             SessionPoolV2.get_session_info()

    assert is_integer(t0) and t1 >= t0
  end

  test "a session's operations accumulate, and it stays on one worker", ctx do
    for _ <- 1..3 do
      assert {:ok, _} = SessionPoolV2.execute_in_session("s2", :ping, %{}, pool_name: ctx.pool)
    end

    assert [%{operations: 3}] = SessionPoolV2.get_session_info()

    assert %{active_sessions: 1, session_affinity: %{workers: %{"s2" => worker}}} =
             SessionPoolV2.get_pool_status(ctx.name)

    assert worker in [0, 1]
  end

  test "a pool that is not running is :pool_not_available, naming it" do
    for call <- [
          fn -> SessionPoolV2.execute_in_session("s", :ping, %{}, pool_name: :no_such_pool) end,
          fn -> SessionPoolV2.execute_anonymous(:ping, %{}, pool_name: :no_such_pool) end
        ] do
      assert {:error,
              {:resource_error, :pool_not_available, message, %{pool_name: :no_such_pool}}} =
               call.()

      assert message =~ "no_such_pool"
    end
  end

  test "a request no worker takes within :pool_timeout is :checkout_timeout" do
    source = "import time\ndef sleep(args):\n    time.sleep(args['s'])\n    return 'slept'\n"
    {opts, _dir} = handler_opts(source)
    name = unique_name("v2_busy")
    {:ok, _} = SessionPoolV2.start_link([name: name, pool_size: 1] ++ opts)
    busy = Task.async(fn -> SessionPoolV2.execute_anonymous(:sleep, %{s: 2}, pool_name: name) end)
    eventually(fn -> hd(NativePool.stats(name).workers).state == :busy end)

    assert {:error, {:timeout_error, :checkout_timeout, _, context}} =
             SessionPoolV2.execute_in_session("s3", :sleep, %{s: 0},
               pool_name: name,
               pool_timeout: 50
             )

    assert %{pool_name: ^name, session_id: "s3"} = context

    assert {:error, {:timeout_error, :checkout_timeout, _, context}} =
             SessionPoolV2.execute_anonymous(:sleep, %{s: 0}, pool_name: name, pool_timeout: 50)

    refute Map.has_key?(context, :session_id)
    assert {:ok, "slept"} = Task.await(busy, 10_000)
    # Neither ran: the worker served only the first request.
    assert hd(NativePool.stats(name).workers).requests == 1
  end

  test "call options that are not a keyword list, or a bad :pool_timeout, are :invalid_options",
       ctx do
    assert {:error, {:validation_error, :invalid_options, message, %{pool_name: nil}}} =
             SessionPoolV2.execute_anonymous(:echo, %{}, %{pool_name: ctx.pool})

    assert message =~ "keyword list, got a map"

    for bad <- [-1, "75s", 1.5, 4_294_967_296] do
      assert {:error, {:validation_error, :invalid_options, message, context}} =
               SessionPoolV2.execute_in_session("s4", :echo, %{},
                 pool_name: ctx.pool,
                 pool_timeout: bad
               )

      assert message =~ "invalid :pool_timeout"
      assert %{pool_name: _, session_id: "s4"} = context
    end

    assert {:ok, %{"a" => 1}} =
             SessionPoolV2.execute_anonymous(:echo, %{a: 1},
               pool_name: ctx.pool,
               pool_timeout: :infinity
             )
  end

  test "a request a worker took is not cut short by :pool_timeout", ctx do
    assert {:ok, %{"text" => "x"}} =
             SessionPoolV2.execute_anonymous(:echo, %{text: "x"},
               pool_name: ctx.pool,
               pool_timeout: 0
             )
  end

  test "track_session, update_session_activity and end_session keep V2's table" do
    :ok = SessionPoolV2.track_session("t1")
    assert [%{session_id: "t1", operations: 0}] = SessionPoolV2.get_session_info()
    :ok = SessionPoolV2.update_session_activity("t1")
    assert [%{operations: 1}] = SessionPoolV2.get_session_info()
    :ok = SessionPoolV2.end_session("t1")
    assert SessionPoolV2.get_session_info() == []
    assert :ets.whereis(:dspex_pool_sessions) != :undefined
  end

  test "V2's session calls take any id and any pool name, and answer :ok" do
    for id <- [nil, 42, "not-tracked"] do
      assert :ok = SessionPoolV2.track_session(id)
      assert :ok = SessionPoolV2.update_session_activity(id)
      assert :ok = SessionPoolV2.end_session(id, pool_name: :no_such_pool)
      assert :ok = SessionPoolV2.end_session(id, pool_name: "not an atom")
    end

    assert SessionPoolV2.get_session_info() == []
  end

  test "end_session/1 frees the session on the worker of the pool it ran on", ctx do
    {:ok, _} = SessionPoolV2.execute_in_session("s4", :echo, %{}, pool_name: ctx.pool)

    assert [%{id: "s4"}] = NativePool.sessions(ctx.name)
    assert :ok = SessionPoolV2.end_session("s4")
    assert NativePool.sessions(ctx.name) == []
  end

  test "a session the pool forgets when idle leaves V2's table too" do
    name = unique_name("v2_ttl")
    {:ok, _pid} = SessionPoolV2.start_link(name: name, pool_size: 1, session_ttl: 200)
    {:ok, _} = SessionPoolV2.execute_in_session("idle", :echo, %{}, pool_name: name)
    SessionPoolV2.track_session("tracked by hand")

    assert Enum.any?(SessionPoolV2.get_session_info(), &(&1.session_id == "idle"))
    eventually(fn -> NativePool.sessions(name) == [] end)

    eventually(fn ->
      Enum.map(SessionPoolV2.get_session_info(), & &1.session_id) == ["tracked by hand"]
    end)
  end

  test "concurrent session and anonymous calls all succeed", ctx do
    results =
      1..10
      |> Enum.map(fn i ->
        Task.async(fn ->
          if rem(i, 2) == 0,
            do: SessionPoolV2.execute_in_session("c#{i}", :ping, %{i: i}, pool_name: ctx.pool),
            else: SessionPoolV2.execute_anonymous(:ping, %{i: i}, pool_name: ctx.pool)
        end)
      end)
      |> Task.await_many(30_000)

    assert Enum.all?(results, &match?({:ok, %{"status" => "ok"}}, &1))
  end
end
