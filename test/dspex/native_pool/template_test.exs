defmodule DSPex.NativePool.TemplateTest do
  # Workers forked from a pool's template (the default, `preload: :auto`) against workers that
  # are each an interpreter of their own (`preload: false`), and the template's failures.
  use DSPex.NativePool.PoolCase, async: true

  import ExUnit.CaptureLog

  alias DSPex.NativePool.TestHelpers

  # The parent pid from /proc/PID/stat: "PID (NAME) STATE PPID ...".
  defp parent_of(os_pid) do
    stat = File.read!("/proc/#{os_pid}/stat")

    case Regex.run(~r/\) \S+ (\d+) /, stat) do
      [_, ppid] -> String.to_integer(ppid)
      nil -> flunk("no parent pid for #{os_pid} in #{inspect(stat)}")
    end
  end

  defp vm_os_pid, do: String.to_integer(System.pid())

  test "workers are forked from one template that preloaded DSPy, and are replaced from it" do
    %{pool: pool} =
      start_pool!(
        pool_size: 3,
        handlers_source:
          TestHelpers.standard_handlers() <>
            "\ndef loaded(args):\n    return args['module'] in sys.modules\n"
      )

    pids = worker_os_pids(pool)
    [template] = pids |> Enum.map(&parent_of/1) |> Enum.uniq()
    assert template != vm_os_pid()
    assert parent_of(template) == vm_os_pid()
    assert File.read!("/proc/#{template}/comm") == "dspex-template\n"
    # DSPy is already imported in a new worker: the template did it once for all of them.
    assert {:ok, true} = NativePool.execute("loaded", %{"module" => "dspy"}, pool: pool)

    # A worker killed after real work is forked again at once, with its real exit status.
    assert {:ok, %{"pid" => victim}} = NativePool.execute("whoami", %{}, pool: pool)
    System.cmd("kill", ["-9", Integer.to_string(victim)])

    replaced =
      eventually(fn ->
        stats = idle_stats(pool)
        stats && Enum.find(stats.workers, &(&1.os_pid not in pids))
      end)

    assert replaced.last_exit =~ "killed by signal 9 (SIGKILL)"
    assert parent_of(replaced.os_pid) == template
    assert {:ok, "os._exit"} = exit_code_reported(pool)
  end

  # A forked worker that exits with a status of its own: the pool reports that status.
  defp exit_code_reported(pool) do
    {:error, {:communication_error, :worker_exited, message, _}} =
      NativePool.execute("crash_exit", %{"status" => 7}, pool: pool)

    if message =~ "exited with status 7", do: {:ok, "os._exit"}, else: {:error, message}
  end

  test "preload: false spawns every worker from the VM, as its own interpreter" do
    %{pool: pool} = start_pool!(pool_size: 2, preload: false)

    for worker <- NativePool.stats(pool).workers do
      assert parent_of(worker.os_pid) == vm_os_pid()
      cmdline = os_cmdline(worker.os_pid)
      assert ["--worker-id", Integer.to_string(worker.id)] in Enum.chunk_every(cmdline, 2, 1)
    end
  end

  test "a worker forked from the template inherits no descriptor but its own five" do
    %{pool: pool} = start_pool!(preload: ["json"], handlers_source: :standard)
    assert {:ok, %{"fds" => fds}} = NativePool.execute("fds", %{}, pool: pool)
    # 0-4, plus the one listdir held open while it listed them.
    assert length(fds) == 6 and Enum.take(fds, 5) == [0, 1, 2, 3, 4]
  end

  test "a preload that fails is a failing start: the pool quotes why and does not start" do
    Process.flag(:trap_exit, true)

    capture_log(fn ->
      assert {:error, {:resource_error, :worker_start_failed, message, _}} =
               NativePool.start_link(name: unique_name(), preload: ["no_such_module_anywhere"])

      assert message =~ "preloading 'no_such_module_anywhere' failed"
      assert message =~ "ModuleNotFoundError"
    end)
  end

  test "a preload slower than startup_timeout is a failing start that names the option" do
    Process.flag(:trap_exit, true)
    dir = tmp_dir!(%{"slow_preload.py" => "import time\ntime.sleep(30)\n"})

    capture_log(fn ->
      assert {:error, {:resource_error, :worker_start_failed, message, _}} =
               NativePool.start_link(
                 name: unique_name(),
                 preload: ["slow_preload"],
                 python_path: [dir],
                 startup_timeout: 300
               )

      assert message =~ "the template did not answer within startup_timeout"
    end)
  end

  test "a preload that leaves a thread running makes the pool spawn its workers, with a warning" do
    dir =
      tmp_dir!(%{
        "threaded_preload.py" =>
          "import threading, time\n" <>
            "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
      })

    log =
      capture_log(fn ->
        %{pool: pool} =
          start_pool!(pool_size: 2, preload: ["threaded_preload"], python_path: [dir])

        for worker <- NativePool.stats(pool).workers,
            do: assert(parent_of(worker.os_pid) == vm_os_pid())

        assert {:ok, _} = NativePool.execute("ping", %{}, pool: pool)
      end)

    assert log =~ "workers cannot be forked from a template: the preloaded modules left 2 threads"
  end

  test "when the template dies its workers go with it, and a new template forks their successors" do
    %{pool: pool} = start_pool!(pool_size: 2)
    pids = worker_os_pids(pool)
    [template] = pids |> Enum.map(&parent_of/1) |> Enum.uniq()
    System.cmd("kill", ["-9", Integer.to_string(template)])

    new =
      eventually(fn -> (new = idle_os_pids(pool)) && Enum.all?(new, &(&1 not in pids)) && new end)

    [successor] = new |> Enum.map(&parent_of/1) |> Enum.uniq()
    assert successor != template and successor != vm_os_pid()
    refute os_process_exists?(template)
    assert {:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: pool)
  end

  test "a template that cannot start again is a failing start: unavailable, then recovers" do
    flag =
      Path.join(System.tmp_dir!(), "dspex_template_broken_#{System.unique_integer([:positive])}")

    on_exit(fn -> File.rm(flag) end)

    dir =
      tmp_dir!(%{
        "flaky_preload.py" =>
          "import os\nif os.path.exists(os.environ['FAIL_FLAG']):\n" <>
            "    raise RuntimeError('template flagged broken')\n"
      })

    %{pool: pool} =
      start_pool!(
        preload: ["flaky_preload"],
        python_path: [dir],
        env: %{"FAIL_FLAG" => flag},
        max_backoff: 200
      )

    attach_logs(pool)
    [os_pid] = worker_os_pids(pool)
    File.write!(flag, "")
    System.cmd("kill", ["-9", Integer.to_string(parent_of(os_pid))])

    assert_receive {:pool_log, ^pool, :error, "worker 0 failed to start (attempt 3)" <> why, _},
                   10_000

    assert why =~ "preloading 'flaky_preload' failed"
    assert why =~ "RuntimeError: template flagged broken"
    eventually(fn -> NativePool.stats(pool).available == false end)

    assert {:error, {:resource_error, :pool_unavailable, _, _}} =
             NativePool.execute("ping", %{}, pool: pool)

    File.rm!(flag)
    assert_receive {:pool_log, ^pool, :info, "worker 0 replaced (os pid " <> _, _}, 10_000
    assert {:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: pool)
    assert NativePool.stats(pool).available
  end

  test "a stopped pool leaves neither its workers nor its template behind" do
    %{pool: pool, pid: pid} = start_pool!(pool_size: 2)
    pids = worker_os_pids(pool)
    [template] = pids |> Enum.map(&parent_of/1) |> Enum.uniq()
    ref = Process.monitor(pid)
    GenServer.stop(pid)
    assert_receive {:DOWN, ^ref, _, _, _}
    refute Enum.any?([template | pids], &os_process_exists?/1)
  end
end
