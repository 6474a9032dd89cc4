defmodule DSPex.NativePool.HostileWorkersTest do
  # Handlers that attack the pool from inside the worker: forked children holding its pipes,
  # forged reply frames, processes that ignore SIGTERM, workers that crash on every request.
  # Each expects a structured error for the caller who met it, and a sound pool for the next.
  use DSPex.NativePool.PoolCase, async: true

  @handlers ~S'''
  import json, os, signal, struct, subprocess, sys, threading, time

  def pid(args):
      return {"pid": os.getpid()}

  def fork_and_exit(args):
      # The child keeps a copy of the reply pipe (the bridge closes fds 3 and 4 in forked
      # children, not their duplicates) and would outlive its parent.
      os.dup(4)
      child = os.fork()
      if child == 0:
          time.sleep(args.get("child_seconds", 30))
          os._exit(0)
      with open(args["child_pid_file"], "w") as f:
          f.write(str(child))
      os._exit(args.get("status", 7))

  def fork_child(args):
      # A child in the worker's process group that would sleep on after its worker is gone.
      child = os.fork()
      if child == 0:
          time.sleep(60)
          os._exit(0)
      return {"child": child}

  def _frame(obj):
      body = json.dumps(obj).encode()
      return struct.pack(">I", len(body)) + body

  def forge_deep(args):
      # A reply for another request, nested past the decoder's limit.
      body = '{"id":%d,"success":true,"result":%s1%s}' % (args["id"], "[" * 600, "]" * 600)
      os.write(4, struct.pack(">I", len(body)) + body.encode())
      time.sleep(30)

  def garbage(args):
      # Bytes that are no frame: their "length" is over any frame cap.
      os.write(4, b"\xff\xfe not a frame")
      time.sleep(30)

  def _write_stale():
      time.sleep(0.05)
      os.write(4, _frame({"id": 1, "success": True, "result": "stale"}))
      print("stale frame written", flush=True)

  def stale_later(args):
      # A frame that answers nothing, written after this request's reply.
      threading.Thread(target=_write_stale).start()
      return "real"

  class _StuckOutput:
      # Flushing it never ends, so the worker cannot leave once its request pipe closes (it
      # flushes its output before it exits).
      def write(self, text):
          return len(text)

      def flush(self):
          time.sleep(60)

  def linger_on_stop(args):
      # A worker that does not leave when its request pipe closes, and may ignore SIGTERM.
      if args.get("ignore_term"):
          signal.signal(signal.SIGTERM, signal.SIG_IGN)
      sys.stdout = _StuckOutput()
      return "lingering"

  def escape(args):
      # A grandchild in a session of its own, holding the worker's stdout and stderr.
      child = subprocess.Popen(["sleep", "60"], start_new_session=True)
      return {"pid": child.pid}

  def crash(args):
      os._exit(3)

  def flood(args):
      # Far more output than the pool forwards: it is throttled, and says how much it dropped.
      for i in range(args["lines"]):
          print("flood line", i)
      sys.stdout.flush()
      time.sleep(1.1)
      print("flood done", flush=True)
      return "flooded"

  def sleep(args):
      time.sleep(args["s"])
      return {"pid": os.getpid()}
  '''

  setup do
    {opts, _dir} = handler_opts(@handlers)
    %{handler_opts: opts}
  end

  defp pool!(ctx, opts \\ []), do: start_pool!(ctx.handler_opts ++ opts).pool

  test "a worker that exits while its forked child holds the reply pipe fails the call at once",
       ctx do
    pool = pool!(ctx)
    [os_pid] = worker_os_pids(pool)

    pid_file = Path.join(System.tmp_dir!(), "np_child_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(pid_file) end)
    args = %{status: 7, child_pid_file: pid_file}

    assert {:error, {:communication_error, :worker_exited, message, _}} =
             NativePool.execute("fork_and_exit", args, pool: pool, timeout: 10_000)

    assert message =~ "exited with status 7"
    # The forked child was in the worker's process group: it went with the worker.
    child = pid_file |> File.read!() |> String.to_integer()
    eventually(fn -> not os_process_exists?(child) end, 2_000)
    eventually(fn -> (pids = idle_os_pids(pool)) && pids != [os_pid] end)
    assert {:ok, _} = NativePool.execute("pid", %{}, pool: pool)
  end

  test "what a worker forked goes with it when the pool stops, spawned or forked", ctx do
    for preload <- [false, []] do
      %{pool: pool, pid: pid} = start_pool!(ctx.handler_opts ++ [preload: preload])
      assert {:ok, %{"child" => child}} = NativePool.execute("fork_child", %{}, pool: pool)
      assert os_process_alive?(child)
      GenServer.stop(pid)
      # Not reaped by us: it was the worker's child, so only /proc says it is gone.
      eventually(fn -> not os_process_exists?(child) end, 2_000)
    end
  end

  test "a reply frame too deep to decode that answers another request replaces the worker",
       ctx do
    pool = pool!(ctx)
    [os_pid] = worker_os_pids(pool)

    assert {:error, {:communication_error, :wrong_reply_id, _, _}} =
             NativePool.execute("forge_deep", %{id: 1}, pool: pool, timeout: 10_000)

    assert {:ok, %{"pid" => new_pid}} = NativePool.execute("pid", %{}, pool: pool)
    assert new_pid != os_pid
  end

  test "bad output from a concurrent worker fails every request it held, saying what it wrote",
       ctx do
    pool = pool!(ctx, concurrency: 4)
    # A round trip first, so the worker is serving and takes both requests straight away.
    {:ok, %{"pid" => os_pid}} = NativePool.execute("pid", %{}, pool: pool)
    # Written to the worker before the garbage, so in flight when it comes.
    bystander = NativePool.execute_async("sleep", %{s: 30}, pool: pool, timeout: 20_000)

    assert {:error, {:communication_error, :worker_exited, message, _}} =
             NativePool.execute("garbage", %{}, pool: pool, timeout: 20_000)

    assert message =~ "was replaced while running \"garbage\" (it took down 2 requests)"
    assert message =~ "over the 67108864-byte frame cap"

    assert {:error, {:communication_error, :worker_exited, held, _}} = NativePool.await(bystander)

    assert held =~ "was replaced while running \"sleep\""
    assert {:ok, %{"pid" => new_pid}} = NativePool.execute("pid", %{}, pool: pool)
    assert new_pid != os_pid
  end

  test "a worker that wrote a frame nobody asked for is replaced before the next caller", ctx do
    pool = pool!(ctx)
    [os_pid] = worker_os_pids(pool)
    attach_logs(pool)
    assert {:ok, "real"} = NativePool.execute("stale_later", %{}, pool: pool)
    assert_receive {:pool_log, ^pool, _level, "[python] stale frame written", _meta}, 5_000
    # Its stale frame must not answer the next caller: that request runs on a new worker.
    assert {:ok, %{"pid" => new_pid}} = NativePool.execute("pid", %{}, pool: pool)
    assert new_pid != os_pid
    assert {:ok, _} = NativePool.execute("pid", %{}, pool: pool)
  end

  test "stopping a worker that lingers says how it was stopped, not just the signal", ctx do
    pool = pool!(ctx, max_requests: 1)
    assert {:ok, "lingering"} = NativePool.execute("linger_on_stop", %{}, pool: pool)
    eventually(fn -> hd(NativePool.stats(pool).workers).last_exit end, 10_000)
    last_exit = hd(NativePool.stats(pool).workers).last_exit
    assert last_exit =~ "retired after max_requests (sent SIGTERM by the pool after"

    eventually(fn -> all_idle?(pool) end)

    assert {:ok, "lingering"} =
             NativePool.execute("linger_on_stop", %{ignore_term: true}, pool: pool)

    eventually(
      fn -> hd(NativePool.stats(pool).workers).last_exit =~ "ignored SIGTERM" end,
      10_000
    )
  end

  test "a worker that crashes on every request is restarted with a growing backoff", ctx do
    pool = pool!(ctx, max_backoff: 400)

    backoffs =
      for _ <- 1..4 do
        eventually(fn -> all_idle?(pool) end)

        assert {:error, {:communication_error, :worker_exited, _, _}} =
                 NativePool.execute("crash", %{}, pool: pool)

        eventually(fn -> hd(NativePool.stats(pool).workers).state != :busy end)
        eventually(fn -> all_idle?(pool) end)
        hd(NativePool.stats(pool).workers).backoff_ms
      end

    assert backoffs == [100, 200, 400, 400]
    # A worker that answered resets it: it is replaced at once, and its replacement's early
    # crash waits the first step again.
    assert {:ok, _} = NativePool.execute("pid", %{}, pool: pool)
    assert {:error, _} = NativePool.execute("crash", %{}, pool: pool)
    eventually(fn -> all_idle?(pool) end)
    assert hd(NativePool.stats(pool).workers).backoff_ms == 0
    assert {:error, _} = NativePool.execute("crash", %{}, pool: pool)
    eventually(fn -> all_idle?(pool) end)
    assert hd(NativePool.stats(pool).workers).backoff_ms == 100
    assert NativePool.stats(pool).available
  end

  test "a running request whose caller was killed leaves its worker in service", ctx do
    pool = pool!(ctx, pool_size: 2, health_interval: 500, health_timeout: 500)
    pids = worker_os_pids(pool)
    test_pid = self()

    for _ <- 1..3 do
      caller =
        spawn(fn ->
          send(test_pid, :calling)
          NativePool.execute("sleep", %{s: 0.8}, pool: pool)
        end)

      assert_receive :calling
      eventually(fn -> Enum.any?(NativePool.stats(pool).workers, &(&1.state == :busy)) end)
      Process.exit(caller, :kill)
      eventually(fn -> all_idle?(pool) end, 5_000)
    end

    assert %{dropped: 3, completed: 0} = NativePool.stats(pool).counters

    for _ <- 1..5 do
      handle = NativePool.execute_async("pid", %{}, pool: pool)
      assert {:ok, _} = NativePool.await(handle)
    end

    assert worker_os_pids(pool) == pids
  end

  test "a worker flooding its stdout is throttled; the reply and the pool are unharmed", ctx do
    pool = pool!(ctx)
    attach_logs(pool)
    assert {:ok, "flooded"} = NativePool.execute("flood", %{lines: 50_000}, pool: pool)
    assert_receive {:pool_log, ^pool, _level, "[python] flood done", _meta}, 10_000
    {lines, notes} = count_flood_lines({0, []})
    # At most 1,000 lines a second get through; each second that dropped some says how many.
    dropped =
      Enum.map(notes, fn note ->
        [count] = Regex.run(~r/^(\d+) lines of output dropped/, note, capture: :all_but_first)
        String.to_integer(count)
      end)

    assert notes != []
    assert lines + Enum.sum(dropped) == 50_000
    assert lines <= 1_000 * (length(notes) + 1)
    assert {:ok, _} = NativePool.execute("pid", %{}, pool: pool)
  end

  # The reader forwards lines in order, so every earlier line is in the mailbox by now.
  defp count_flood_lines({n, notes}) do
    receive do
      {:pool_log, _pool, _level, "[python] flood line" <> _, _meta} ->
        count_flood_lines({n + 1, notes})

      {:pool_log, _pool, _level, "[python] (" <> note, _meta} ->
        count_flood_lines({n, [note | notes]})
    after
      0 -> {n, notes}
    end
  end
end
