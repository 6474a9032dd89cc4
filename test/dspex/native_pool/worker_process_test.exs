defmodule DSPex.NativePool.WorkerProcessTest do
  use DSPex.NativePool.PoolCase, async: true

  describe "the worker's environment" do
    setup do
      start_pool!(handlers_source: :standard)
    end

    test "the worker holds no descriptor but stdio and its two protocol pipes", %{pool: pool} do
      assert {:ok, %{"fds" => fds, "links" => links}} = NativePool.execute("fds", %{}, pool: pool)

      # 0-4, plus the one os.listdir opened to list them.
      assert [0, 1, 2, 3, 4, listing_fd] = fds
      assert listing_fd > 4
      assert links["0"] == "/dev/null"

      for fd <- ~w(1 2 3 4) do
        assert links[fd] =~ ~r/^pipe:\[\d+\]$/, "fd #{fd} is #{links[fd]}"
      end

      # Four distinct pipes: stdout, stderr, requests, replies.
      assert links |> Map.take(~w(1 2 3 4)) |> Map.values() |> Enum.uniq() |> length() == 4
    end

    test "subprocesses report their real exit status (SIGCHLD is not ignored)", %{pool: pool} do
      assert {:ok, 3} = NativePool.execute("subprocess_status", %{}, pool: pool)
    end

    test "the worker runs in its own process group", %{pool: pool} do
      [os_pid] = worker_os_pids(pool)
      # Field 5 of /proc/PID/stat (after the parenthesised command) is the process group.
      stat = File.read!("/proc/#{os_pid}/stat")
      [_, after_comm] = String.split(stat, ") ", parts: 2)
      [_state, _ppid, pgrp | _] = String.split(after_comm)
      assert String.to_integer(pgrp) == os_pid
    end
  end

  describe "a worker that dies while running a request" do
    setup do
      start_pool!(handlers_source: :standard, pool_size: 2)
    end

    test "os._exit(3) fails the call with :worker_exited quoting the status and stderr", %{
      pool: pool
    } do
      old_os_pids = worker_os_pids(pool)

      assert {:error, {:communication_error, :worker_exited, message, context}} =
               NativePool.execute("crash_exit", %{status: 3}, pool: pool)

      assert message =~ "exited with status 3"
      assert message =~ "last words before exit"
      assert message =~ ~s(died while running "crash_exit")
      assert %{pool: ^pool, command: "crash_exit", worker_id: worker_id} = context
      assert worker_id in [0, 1]

      dead_os_pid = Enum.at(old_os_pids, worker_id)
      assert message =~ "os pid #{dead_os_pid}"
      assert_replaced(pool, old_os_pids, worker_id)
      assert NativePool.stats(pool).counters.worker_exited == 1
    end

    test "SIGKILL fails the call with :worker_exited naming the signal", %{pool: pool} do
      old_os_pids = worker_os_pids(pool)

      assert {:error, {:communication_error, :worker_exited, message, %{worker_id: worker_id}}} =
               NativePool.execute("crash_kill", %{}, pool: pool)

      assert message =~ "SIGKILL"
      assert_replaced(pool, old_os_pids, worker_id)
    end

    test "SystemExit raised by a command really exits the worker", %{pool: pool} do
      old_os_pids = worker_os_pids(pool)

      assert {:error, {:communication_error, :worker_exited, message, %{worker_id: worker_id}}} =
               NativePool.execute("system_exit", %{status: 4}, pool: pool)

      assert message =~ "exited with status 4"
      assert_replaced(pool, old_os_pids, worker_id)
    end
  end

  describe "failing workers" do
    # Importable unless `fail_import` exists in its dir.
    @fragile ~S'''
    import os

    if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fail_import")):
        raise RuntimeError("cannot start right now")


    def crash(args):
        os._exit(3)
    '''

    test "a pool whose workers keep failing to start is :pool_unavailable until one starts" do
      {opts, dir} = handler_opts(@fragile)
      %{pool: pool} = start_pool!([max_backoff: 100] ++ opts)
      attach_logs(pool)
      File.write!(Path.join(dir, "fail_import"), "")

      assert {:error, {:communication_error, :worker_exited, _, _}} =
               NativePool.execute("crash", %{}, pool: pool)

      # The crash and two failed starts in a row: the pool gives up on new calls, but retries.
      assert_receive {:pool_log, ^pool, :error, "worker 0 failed to start (attempt 3)" <> why, _},
                     5_000

      assert why =~ "RuntimeError: cannot start right now"

      assert {:error, {:resource_error, :pool_unavailable, message, _}} =
               NativePool.execute("ping", %{}, pool: pool)

      assert message =~ "no worker could be started"
      refute NativePool.stats(pool).available

      File.rm!(Path.join(dir, "fail_import"))
      assert_receive {:pool_log, ^pool, :info, "worker 0 replaced (os pid " <> _, _}, 5_000
      assert {:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: pool)
      assert NativePool.stats(pool).available
    end

    test "a worker that stops answering is replaced by the health check" do
      %{pool: pool} = start_pool!(health_interval: 200, health_timeout: 500)
      attach_logs(pool)
      [frozen] = worker_os_pids(pool)

      # Freeze the idle worker: alive, but it will answer nothing more.
      assert {_, 0} = System.cmd("kill", ["-STOP", Integer.to_string(frozen)])

      assert_receive {:pool_log, ^pool, :warning, "worker 0 (os pid " <> reason, _}, 10_000
      assert reason =~ "#{frozen}) replaced: no answer to a health check within 500 ms"
      assert {:ok, %{"pid" => new_os_pid}} = NativePool.execute("ping", %{}, pool: pool)
      assert new_os_pid != frozen
      refute os_process_exists?(frozen)
    end
  end

  # The pool is back to full size: the dead worker's slot has a new, idle process; the other
  # worker is untouched.
  defp assert_replaced(pool, old_os_pids, worker_id) do
    dead = Enum.at(old_os_pids, worker_id)

    stats =
      eventually(
        fn ->
          stats = NativePool.stats(pool)
          all_idle?(pool) and Enum.at(stats.workers, worker_id).os_pid != dead and stats
        end,
        10_000
      )

    refute os_process_exists?(dead)
    assert length(stats.workers) == 2

    for {worker, id} <- Enum.with_index(stats.workers) do
      if id == worker_id do
        assert worker.restarts == 1
        assert worker.last_exit =~ "exited unexpectedly"
      else
        assert worker.os_pid == Enum.at(old_os_pids, id)
        assert worker.restarts == 0
      end
    end

    # Both serve.
    for _ <- 1..4,
        do: assert({:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: pool))
  end
end
