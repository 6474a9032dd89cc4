defmodule DSPex.NativePool.ConcurrentWorkersTest do
  # Workers that run many requests at once (`concurrency` above 1), multiplexed by id on
  # their pipes, against real DSPy talking HTTP to a local OpenAI-compatible server.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.LMServer

  @moduletag timeout: 120_000

  @handlers ~S'''
  import asyncio, os, threading, time
  from dspex_bridge.concurrent import cancelled, current_request_id

  _peak = {"now": 0, "max": 0}
  _lock = threading.Lock()

  def _enter():
      with _lock:
          _peak["now"] += 1
          _peak["max"] = max(_peak["max"], _peak["now"])

  def _leave():
      with _lock:
          _peak["now"] -= 1

  def wait_thread(args):
      _enter()
      try:
          time.sleep(args["s"])
          return {"pid": os.getpid(), "tag": args.get("tag")}
      finally:
          _leave()

  async def wait_async(args):
      _enter()
      try:
          await asyncio.sleep(args["s"])
          return {"pid": os.getpid(), "tag": args.get("tag")}
      finally:
          _leave()

  def peak(args):
      return _peak["max"]

  def until_cancelled(args):
      # A thread command that polls the cancellation flag, as documented.
      deadline = time.monotonic() + 30
      while not cancelled() and time.monotonic() < deadline:
          time.sleep(0.01)
      print("saw cancel", flush=True)
      return "stopped"

  def counts_forever(args):
      # A generator run through by execute/3: it never ends by itself.
      n = 0
      try:
          while True:
              n += 1
              yield n
      finally:
          print("generator closed", flush=True)

  def ignores_cancel(args):
      time.sleep(args["s"])
      return "late"

  def tagged_print(args):
      print("hello from", current_request_id(), flush=True)
      return current_request_id()

  def pid(args):
      return os.getpid()

  def crash(args):
      time.sleep(args.get("after", 0))
      os._exit(9)

  def hog(args):
      # C code that holds the interpreter lock for minutes: nothing else in the worker runs.
      import re
      return bool(re.match(r"(a+)+$", "a" * 34 + "b"))
  '''

  defp pool!(opts) do
    start_pool!([handlers_source: @handlers, startup_timeout: 60_000] ++ opts).pool
  end

  test "one worker runs many thread and async commands at once, replies in any order" do
    pool = pool!(concurrency: 16)

    handles =
      for i <- 1..16 do
        command = if rem(i, 2) == 0, do: "wait_thread", else: "wait_async"
        # Later ones finish first.
        NativePool.execute_async(command, %{s: (17 - i) * 0.02, tag: i}, pool: pool)
      end

    results = Enum.map(handles, &NativePool.await/1)
    assert Enum.map(results, fn {:ok, %{"tag" => tag}} -> tag end) == Enum.to_list(1..16)
    assert {:ok, peak} = NativePool.execute("peak", %{}, pool: pool)
    assert peak > 8, "only #{peak} of 16 ran at once"
    assert %{in_flight: 0, workers: [%{in_flight: 0, requests: 17}]} = NativePool.stats(pool)
  end

  test "new requests go to the worker with the fewest in flight" do
    pool = pool!(pool_size: 2, concurrency: 4)

    handles =
      for i <- 1..4, do: NativePool.execute_async("wait_async", %{s: 0.3, tag: i}, pool: pool)

    eventually(fn -> NativePool.stats(pool).in_flight == 4 end)
    assert Enum.map(NativePool.stats(pool).workers, & &1.in_flight) == [2, 2]
    pids = handles |> Enum.map(&NativePool.await/1) |> Enum.map(fn {:ok, r} -> r["pid"] end)
    assert length(Enum.uniq(pids)) == 2
  end

  test "a timed-out async request is cancelled; its worker and its other requests carry on" do
    pool = pool!(concurrency: 4)
    [os_pid] = worker_os_pids(pool)
    other = NativePool.execute_async("wait_async", %{s: 0.3, tag: :other}, pool: pool)

    assert {:error, {:timeout_error, :request_timeout, message, _}} =
             NativePool.execute("wait_async", %{s: 30}, pool: pool, timeout: 500)

    assert message =~ "the request is cancelled in the worker, which carries on"

    assert {:ok, %{"tag" => "other"}} = NativePool.await(other)
    eventually(fn -> NativePool.stats(pool).in_flight == 0 end)
    assert worker_os_pids(pool) == [os_pid]
    # Counted once, whether the caller or the pool saw the deadline first.
    assert %{timed_out: 1, completed: 1, dropped: 0} = NativePool.stats(pool).counters
    refute_received _stray
  end

  test "a thread command sees cancelled() turn true when its caller gives up" do
    pool = pool!(concurrency: 2)
    attach_logs(pool)
    [os_pid] = worker_os_pids(pool)

    assert {:error, {:timeout_error, :request_timeout, _, _}} =
             NativePool.execute("until_cancelled", %{}, pool: pool, timeout: 500)

    assert_receive {:pool_log, ^pool, _, "[python] [request " <> rest, _}, 5_000
    assert rest =~ "saw cancel"
    eventually(fn -> NativePool.stats(pool).in_flight == 0 end)
    assert worker_os_pids(pool) == [os_pid]
  end

  test "a request whose caller dies is cancelled in the worker, which carries on" do
    pool = pool!(concurrency: 2)
    attach_logs(pool)
    [os_pid] = worker_os_pids(pool)

    # Started on an idle worker by the caller's own write; nobody gives up on it but the
    # pool, which watches the caller.
    caller =
      spawn(fn -> NativePool.execute("until_cancelled", %{}, pool: pool, timeout: 60_000) end)

    eventually(fn -> NativePool.stats(pool).in_flight == 1 end)
    Process.exit(caller, :kill)

    assert_receive {:pool_log, ^pool, _, "[python] [request " <> rest, _}, 5_000
    assert rest =~ "saw cancel"
    eventually(fn -> NativePool.stats(pool).in_flight == 0 end)
    assert worker_os_pids(pool) == [os_pid]
    assert NativePool.stats(pool).counters.dropped == 1
  end

  test "a generator run through by execute/3 stops at its next yield when cancelled" do
    # cancel_grace far above the test's own waits: the worker must not be replaced to end it.
    pool = pool!(concurrency: 2, cancel_grace: 60_000)
    attach_logs(pool)
    [os_pid] = worker_os_pids(pool)

    assert {:error, {:timeout_error, :request_timeout, _, _}} =
             NativePool.execute("counts_forever", %{}, pool: pool, timeout: 300)

    assert_receive {:pool_log, ^pool, _, "[python] [request " <> rest, _}, 5_000
    assert rest =~ "generator closed"
    eventually(fn -> NativePool.stats(pool).in_flight == 0 end)
    assert worker_os_pids(pool) == [os_pid]

    assert {:ok, %{"tag" => "after"}} =
             NativePool.execute("wait_thread", %{s: 0, tag: :after}, pool: pool)
  end

  test "a cancelled request that does not end within cancel_grace gets its worker replaced" do
    pool = pool!(concurrency: 2, cancel_grace: 200)
    [os_pid] = worker_os_pids(pool)
    held = NativePool.execute_async("wait_thread", %{s: 5}, pool: pool)

    assert {:error, {:timeout_error, :request_timeout, _, _}} =
             NativePool.execute("ignores_cancel", %{s: 5}, pool: pool, timeout: 500)

    assert {:error, {:communication_error, :worker_exited, message, _}} = NativePool.await(held)
    assert message =~ "cancel_grace"
    eventually(fn -> (pids = idle_os_pids(pool)) && pids != [os_pid] end)
  end

  test "requests that find the worker's pipe full wait in its queue and all run" do
    pool = pool!(concurrency: 4096, health_interval: 60_000)
    [os_pid] = worker_os_pids(pool)
    # A stopped worker reads nothing: 400 requests of 4 KB overflow its 1 MB request pipe.
    {_, 0} = System.cmd("kill", ["-STOP", "#{os_pid}"])
    data = String.duplicate("x", 3_900)

    handles =
      for i <- 1..400,
          do: NativePool.execute_async("echo", %{data: data, i: i}, pool: pool, timeout: 60_000)

    assert NativePool.stats(pool).queue_length > 0
    {_, 0} = System.cmd("kill", ["-CONT", "#{os_pid}"])

    for {handle, i} <- Enum.with_index(handles, 1) do
      assert {:ok, %{"i" => ^i, "data" => ^data}} = NativePool.await(handle)
    end

    assert %{in_flight: 0, queue_length: 0} = NativePool.stats(pool)
    assert worker_os_pids(pool) == [os_pid]
  end

  test "a worker that dies fails every request it held at once; queued ones run elsewhere" do
    pool = pool!(pool_size: 2, concurrency: 3)
    {:ok, _} = NativePool.execute("pid", %{}, pool: pool)
    crash = NativePool.execute_async("crash", %{after: 0.2}, pool: pool)
    # Two more land on the same worker, the others on the second one.
    held = for i <- 1..5, do: NativePool.execute_async("wait_async", %{s: 1, tag: i}, pool: pool)

    assert {:error, {:communication_error, :worker_exited, message, _}} = NativePool.await(crash)
    results = Enum.map(held, &NativePool.await/1)

    exited =
      Enum.count(results, &match?({:error, {:communication_error, :worker_exited, _, _}}, &1))

    # Those the crashing worker held failed with it, and it says how many; the rest ran.
    assert exited >= 1
    assert message =~ "took down #{exited + 1} requests"
    assert Enum.count(results, &match?({:ok, _}, &1)) == 5 - exited
  end

  test "print() in a concurrent request names the request in the log" do
    pool = pool!(concurrency: 2)
    attach_logs(pool)
    assert {:ok, id} = NativePool.execute("tagged_print", %{}, pool: pool)
    assert_receive {:pool_log, ^pool, _, "[python] [request " <> rest, _}, 5_000
    assert rest == "#{id}] hello from #{id}"
  end

  test "the health check gets through a worker whose every thread is busy" do
    pool = pool!(concurrency: 2, health_interval: 100, health_timeout: 1_000)
    [os_pid] = worker_os_pids(pool)
    busy = for _ <- 1..2, do: NativePool.execute_async("wait_thread", %{s: 1.5}, pool: pool)
    assert Enum.all?(busy, &match?({:ok, _}, NativePool.await(&1)))
    assert worker_os_pids(pool) == [os_pid]
  end

  test "a worker whose interpreter is stuck is caught by the health check and replaced" do
    pool = pool!(concurrency: 4, health_interval: 200, health_timeout: 500)
    [os_pid] = worker_os_pids(pool)

    assert {:error, {:communication_error, :worker_exited, message, _}} =
             NativePool.execute("hog", %{}, pool: pool, timeout: 60_000)

    assert message =~ "health check"
    eventually(fn -> (pids = idle_os_pids(pool)) && pids != [os_pid] end, 10_000)
  end

  describe "DSPy over HTTP" do
    setup do
      server = LMServer.start!(latency_ms: 300)
      pool = pool!(concurrency: 64)
      assert {:ok, _} = NativePool.configure_lm(LMServer.lm_config(server), pool: pool)

      {:ok, %{"program_id" => id}} =
        NativePool.execute("create_program", %{signature: "question -> answer"}, pool: pool)

      LMServer.reset(server)
      %{server: server, pool: pool, id: id}
    end

    test "64 concurrent calls on one worker reach the LM server 64 at a time", ctx do
      results =
        for(
          i <- 1..64,
          do:
            NativePool.execute_async(
              "execute_program",
              %{program_id: ctx.id, inputs: %{question: "q#{i}"}},
              pool: ctx.pool,
              timeout: 60_000
            )
        )
        |> Enum.map(&NativePool.await/1)

      assert Enum.all?(results, &match?({:ok, %{"outputs" => %{"answer" => "42"}}}, &1))
      assert %{"max_active" => 64, "completed" => 64} = LMServer.stats(ctx.server)
    end

    test "a cancelled call closes its HTTP connection; the worker stays", ctx do
      LMServer.configure(ctx.server, %{latency_ms: 30_000})
      [os_pid] = worker_os_pids(ctx.pool)

      handle =
        NativePool.execute_async(
          "execute_program",
          %{program_id: ctx.id, inputs: %{question: "slow"}},
          pool: ctx.pool,
          timeout: 60_000
        )

      # Given up on once the LM server has it: the wait ends, and the call is cancelled.
      eventually(fn -> LMServer.stats(ctx.server)["active"] == 1 end, 30_000)
      assert {:error, {:timeout_error, :request_timeout, _, _}} = NativePool.await(handle, 50)

      eventually(fn -> LMServer.stats(ctx.server)["aborted"] == 1 end)
      LMServer.configure(ctx.server, %{latency_ms: 0})

      assert {:ok, _} =
               NativePool.execute(
                 "execute_program",
                 %{program_id: ctx.id, inputs: %{question: "q"}},
                 pool: ctx.pool
               )

      assert worker_os_pids(ctx.pool) == [os_pid]
    end

    test "a replaced worker gets the pool's LM, a session's LM and its programs back", ctx do
      other = LMServer.start!(answer: "session answer")
      LMServer.configure(ctx.server, %{latency_ms: 0})
      {:ok, _} = NativePool.configure_lm(LMServer.lm_config(other), session: "r", pool: ctx.pool)

      {:ok, %{"program_id" => sid}} =
        NativePool.execute_in_session("r", "create_program", %{signature: "question -> answer"},
          pool: ctx.pool
        )

      [os_pid] = worker_os_pids(ctx.pool)
      System.cmd("kill", ["-9", to_string(os_pid)])
      eventually(fn -> all_idle?(ctx.pool) and worker_os_pids(ctx.pool) != [os_pid] end, 30_000)

      assert {:ok, %{"outputs" => %{"answer" => "session answer"}}} =
               NativePool.execute_in_session(
                 "r",
                 "execute_program",
                 %{program_id: sid, inputs: %{question: "q"}},
                 pool: ctx.pool
               )

      assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
               NativePool.execute(
                 "execute_program",
                 %{program_id: ctx.id, inputs: %{question: "q"}},
                 pool: ctx.pool
               )
    end

    test "a per-call and a per-session LM apply to their calls only", ctx do
      other = LMServer.start!(answer: "from the other server")

      assert {:ok, %{"outputs" => %{"answer" => "from the other server"}}} =
               NativePool.execute(
                 "execute_program",
                 %{program_id: ctx.id, inputs: %{question: "q"}, lm: LMServer.lm_config(other)},
                 pool: ctx.pool
               )

      {:ok, _} = NativePool.configure_lm(LMServer.lm_config(other), session: "s", pool: ctx.pool)

      {:ok, %{"program_id" => sid}} =
        NativePool.execute_in_session("s", "create_program", %{signature: "question -> answer"},
          pool: ctx.pool
        )

      LMServer.configure(ctx.server, %{latency_ms: 0})

      ask = fn session, id ->
        args = %{program_id: id, inputs: %{question: "q"}}

        {:ok, %{"outputs" => %{"answer" => answer}}} =
          if session,
            do: NativePool.execute_in_session(session, "execute_program", args, pool: ctx.pool),
            else: NativePool.execute("execute_program", args, pool: ctx.pool)

        answer
      end

      answers =
        for(
          i <- 1..20,
          do: Task.async(fn -> if rem(i, 2) == 0, do: ask.("s", sid), else: ask.(nil, ctx.id) end)
        )
        |> Task.await_many(30_000)

      assert Enum.frequencies(answers) == %{"42" => 10, "from the other server" => 10}
    end
  end
end
