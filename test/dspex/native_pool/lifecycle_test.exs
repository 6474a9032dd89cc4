defmodule DSPex.NativePool.LifecycleTest do
  use DSPex.NativePool.PoolCase, async: true

  # A pool under the test supervisor that is not restarted when it stops.
  defp start_temporary_pool!(opts) do
    name = unique_name()
    opts = Keyword.merge([name: name, pool_size: 2, shutdown_timeout: 1_000], opts)
    pid = start_supervised!(Supervisor.child_spec({NativePool, opts}, restart: :temporary))
    %{pool: name, pid: pid}
  end

  defp assert_pool_gone(pool) do
    assert Process.whereis(pool) == nil

    assert {:error, {:resource_error, :pool_not_found, _, _}} =
             NativePool.execute("ping", %{}, pool: pool)

    assert {:error, {:resource_error, :pool_not_found, _, _}} = NativePool.stats(pool)
  end

  test "stop_supervised ends every worker process and unregisters the pool" do
    %{pool: pool} = start_pool!(pool_size: 2)
    os_pids = worker_os_pids(pool)
    assert Enum.all?(os_pids, &os_process_exists?/1)

    assert :ok = stop_supervised(pool)

    # Stopping waits for the workers: they are gone (and reaped) when it returns.
    for os_pid <- os_pids, do: refute(os_process_exists?(os_pid), "worker #{os_pid} survived")
    assert_pool_gone(pool)
  end

  test "GenServer.stop ends every worker process" do
    %{pool: pool, pid: pid} = start_temporary_pool!([])
    os_pids = worker_os_pids(pool)

    assert :ok = GenServer.stop(pid)

    for os_pid <- os_pids, do: refute(os_process_exists?(os_pid), "worker #{os_pid} survived")
    assert_pool_gone(pool)
  end

  test "killing the owning process ends every worker process" do
    %{pool: pool, pid: pid} = start_temporary_pool!([])
    os_pids = worker_os_pids(pool)
    ref = Process.monitor(pid)

    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}

    # No terminate/2 ran: the NIF's monitor on the owner stops the pool, in the background.
    assert eventually(fn -> not Enum.any?(os_pids, &os_process_exists?/1) end)
  end

  test "after its owner is killed, the pool is no longer found" do
    %{pool: pool, pid: pid} = start_temporary_pool!(pool_size: 1)
    [os_pid] = worker_os_pids(pool)
    ref = Process.monitor(pid)

    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}
    assert eventually(fn -> not os_process_exists?(os_pid) end)

    assert_pool_gone(pool)
  end

  test "a request running when the pool stops gets its reply if it finishes within :shutdown_timeout, else :pool_closed" do
    {opts, _dir} = handler_opts(standard_handlers())
    %{pool: pool, pid: pid} = start_temporary_pool!([shutdown_timeout: 1_000] ++ opts)

    attach_logs(pool)

    quick =
      Task.async(fn -> NativePool.execute("slow", %{seconds: 0.3, tag: "quick"}, pool: pool) end)

    stuck =
      Task.async(fn -> NativePool.execute("slow", %{seconds: 30, tag: "stuck"}, pool: pool) end)

    assert_receive {:pool_log, ^pool, :info, "[python] slow started quick", _}, 5_000
    assert_receive {:pool_log, ^pool, :info, "[python] slow started stuck", _}, 5_000
    os_pids = worker_os_pids(pool)

    assert :ok = GenServer.stop(pid)

    assert {:ok, %{"tag" => "quick"}} = Task.await(quick)

    assert {:error, {:resource_error, :pool_closed, message, %{command: "slow"}}} =
             Task.await(stuck)

    assert message =~ "the pool stopped while worker"
    for os_pid <- os_pids, do: refute(os_process_exists?(os_pid))
  end

  test "a supervisor restart of the pool brings fresh workers" do
    %{pool: pool, pid: old_pid} = start_pool!(pool_size: 2)
    old_os_pids = worker_os_pids(pool)
    ref = Process.monitor(old_pid)

    Process.exit(old_pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^old_pid, :killed}

    # The supervisor restarts the pool under the same name; its init returns once the new
    # workers are ready, so a system call on it waits for that: as long as a start may take
    # (:startup_timeout), not the call's default 5 s, which a loaded machine's start can pass.
    new_pid = eventually(fn -> (pid = Process.whereis(pool)) && pid != old_pid && pid end)
    :sys.get_state(new_pid, 30_000)

    new_os_pids = worker_os_pids(pool)
    assert length(new_os_pids) == 2
    assert Enum.all?(new_os_pids, &os_process_exists?/1)
    assert MapSet.disjoint?(MapSet.new(new_os_pids), MapSet.new(old_os_pids))
    assert {:ok, %{"pid" => os_pid}} = NativePool.execute("ping", %{}, pool: pool)
    assert os_pid in new_os_pids
    assert eventually(fn -> not Enum.any?(old_os_pids, &os_process_exists?/1) end)
  end

  test "max_requests retires a worker and starts a fresh one" do
    %{pool: pool} = start_pool!(max_requests: 2)
    [first] = worker_os_pids(pool)

    assert {:ok, %{"pid" => ^first}} = NativePool.execute("ping", %{}, pool: pool)
    assert {:ok, %{"pid" => ^first}} = NativePool.execute("ping", %{}, pool: pool)
    assert {:ok, %{"pid" => second}} = NativePool.execute("ping", %{}, pool: pool)

    assert second != first
    refute os_process_exists?(first)
    assert [%{last_exit: "retired after max_requests" <> _}] = NativePool.stats(pool).workers
  end

  # The handler module's import is slow only once `slow_restart` exists in its dir, and says
  # when it starts importing; a completed import leaves a marker behind.
  @slow_restart ~S'''
  import os
  import sys
  import time

  _HERE = os.path.dirname(os.path.abspath(__file__))
  print("importing in %d" % os.getpid(), flush=True)
  if os.path.exists(os.path.join(_HERE, "slow_restart")):
      time.sleep(3)
      open(os.path.join(_HERE, "slow_import_finished"), "w").close()


  def crash(args):
      os._exit(3)
  '''

  test "stopping the pool while a worker restarts ends that worker at once" do
    {opts, dir} = handler_opts(@slow_restart)
    %{pool: pool, pid: pid} = start_temporary_pool!([pool_size: 1] ++ opts)
    [first] = worker_os_pids(pool)
    attach_logs(pool)

    File.write!(Path.join(dir, "slow_restart"), "")

    assert {:error, {:communication_error, :worker_exited, _, _}} =
             NativePool.execute("crash", %{}, pool: pool)

    # The replacement is importing (the first worker's own line may come late: skip it).
    first = Integer.to_string(first)

    assert_receive {:pool_log, ^pool, :info, "[python] importing in " <> os_pid, _}
                   when os_pid != first,
                   5_000

    os_pid = String.to_integer(os_pid)

    assert :ok = GenServer.stop(pid)

    refute os_process_exists?(os_pid)

    refute File.exists?(Path.join(dir, "slow_import_finished")),
           "stopping the pool waited for the restarting worker to finish its import"
  end
end
