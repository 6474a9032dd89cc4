defmodule DSPex.NativePool.StartTest do
  use DSPex.NativePool.PoolCase, async: true

  import ExUnit.CaptureLog

  describe "start_link/1 and child_spec/1" do
    test "starts pool_size workers, each a live Python process that answered its init ping" do
      %{pool: pool, pid: pid} = start_pool!(pool_size: 2)

      assert Process.whereis(pool) == pid
      stats = NativePool.stats(pool)
      assert stats.pool_size == 2
      assert [%{id: 0}, %{id: 1}] = stats.workers

      for worker <- stats.workers do
        assert worker.state == :idle,
               "worker #{worker.id} is #{inspect(worker.state)} although start_link has returned"

        assert is_integer(worker.os_pid) and worker.os_pid > 0
        assert os_process_exists?(worker.os_pid)
        # The process is our worker script, forked for this slot of this pool from the
        # pool's template (whose command line it keeps; its name says which worker it is).
        cmdline = os_cmdline(worker.os_pid)
        assert Enum.any?(cmdline, &String.ends_with?(&1, "dspex_worker.py"))
        assert "--template" in cmdline
        assert File.read!("/proc/#{worker.os_pid}/comm") == "dspex-worker-#{worker.id}\n"
        # The init ping is the pool's own: no user request was counted.
        assert worker.requests == 0
      end

      assert stats.workers |> Enum.map(& &1.os_pid) |> Enum.uniq() |> length() == 2

      # Each worker knows its id: it was told in its init ping and answers with it.
      for _ <- 1..4 do
        assert {:ok, %{"worker_id" => worker_id, "pid" => os_pid}} =
                 NativePool.execute("ping", %{}, pool: pool)

        assert %{os_pid: ^os_pid} = Enum.at(stats.workers, String.to_integer(worker_id))
      end
    end

    test "child_spec/1 names the child after the pool and waits past :shutdown_timeout" do
      name = unique_name()

      assert %{
               id: ^name,
               start: {NativePool, :start_link, [[name: ^name, shutdown_timeout: 1_234]]},
               type: :worker,
               shutdown: shutdown
             } = NativePool.child_spec(name: name, shutdown_timeout: 1_234)

      assert shutdown > 1_234
    end

    test "start_link/1 links the pool to its caller" do
      name = unique_name()
      {:ok, pid} = NativePool.start_link(name: name, pool_size: 1)
      {:links, links} = Process.info(self(), :links)
      assert pid in links
      assert {:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: name)
      GenServer.stop(pid)
    end
  end

  describe "parallel start" do
    # Each worker records when its handler import began and ended; the import takes a while.
    # CLOCK_MONOTONIC (time.monotonic) is one clock for every process of the machine.
    @slow_import ~S'''
    import os
    import time

    _start = time.monotonic()
    time.sleep(1)
    _end = time.monotonic()
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "import_%d.txt" % os.getpid()), "w") as f:
        f.write("%r %r" % (_start, _end))


    def hello(args):
        return "hi"
    '''

    test "workers import their handler modules at the same time" do
      %{pool: pool, dir: dir} = start_pool!(pool_size: 2, handlers_source: @slow_import)

      intervals =
        for file <- Path.wildcard(Path.join(dir, "import_*.txt")) do
          [os_pid] = Regex.run(~r/import_(\d+)\.txt$/, file, capture: :all_but_first)
          [start, stop] = file |> File.read!() |> String.split() |> Enum.map(&parse_float/1)
          {String.to_integer(os_pid), start, stop}
        end

      # One import per worker, by the workers now running.
      assert intervals |> Enum.map(&elem(&1, 0)) |> Enum.sort() ==
               Enum.sort(worker_os_pids(pool))

      # Overlapping: each started before the other finished.
      latest_start = intervals |> Enum.map(&elem(&1, 1)) |> Enum.max()
      earliest_end = intervals |> Enum.map(&elem(&1, 2)) |> Enum.min()

      assert latest_start < earliest_end,
             "imports ran one after the other: #{inspect(intervals)}"

      assert {:ok, "hi"} = NativePool.execute("hello", %{}, pool: pool)
    end
  end

  describe "a worker that cannot start" do
    test "an import error fails start_link with the Python traceback from stderr" do
      source = ~S'''
      def fine(args):
          return 1

      raise RuntimeError("handler import exploded on purpose")
      '''

      {opts, _dir} = handler_opts(source)
      name = unique_name()

      assert {:error, {reason, _child}} =
               start_supervised({NativePool, [name: name, pool_size: 2] ++ opts})

      assert {:resource_error, :worker_start_failed, message, context} = reason
      assert message =~ "RuntimeError: handler import exploded on purpose"
      assert message =~ "Traceback"
      assert message =~ "exited with status 2"
      assert %{pool: ^name, worker_id: worker_id} = context
      assert worker_id in [0, 1]

      assert Process.whereis(name) == nil
      assert {:error, {:resource_error, :pool_not_found, _, _}} = NativePool.stats(name)
    end

    test "a missing handler module fails start_link naming the module" do
      {:error, {reason, _child}} =
        start_supervised({NativePool, name: unique_name(), handlers: "np_no_such_module_xyz"})

      assert {:resource_error, :worker_start_failed, message, _} = reason
      assert message =~ "No module named 'np_no_such_module_xyz'"
    end

    test "an interpreter that exits at once without a word is named in the error" do
      # A program that is no Python at all: it exits 0 and prints nothing.
      true_bin = System.find_executable("true")

      for preload <- [:auto, false] do
        {:error, {reason, _child}} =
          start_supervised(
            {NativePool, name: unique_name(), python: true_bin, preload: preload},
            id: preload
          )

        assert {:resource_error, :worker_start_failed, message, _} = reason
        assert message =~ inspect(true_bin)
        assert message =~ "exited with status 0; no stderr output"
      end
    end

    test "a handler that clashes with a built-in command fails start_link" do
      source = ~S'''
      def ping(args):
          return "mine"
      '''

      {opts, _dir} = handler_opts(source)

      assert {:error, {{:resource_error, :worker_start_failed, message, _}, _}} =
               start_supervised({NativePool, [name: unique_name()] ++ opts})

      assert message =~ "'ping', which is the name of a built-in command"
    end

    test "start_link returns the error, and a trapping caller gets the matching exit" do
      Process.flag(:trap_exit, true)
      {opts, _dir} = handler_opts("raise ImportError('nope')\n")
      name = unique_name()

      log =
        capture_log(fn ->
          assert {:error, {:resource_error, :worker_start_failed, message, _}} =
                   NativePool.start_link([name: name] ++ opts)

          assert message =~ "ImportError: nope"
          assert_receive {:EXIT, _pid, {:resource_error, :worker_start_failed, ^message, _}}
        end)

      # Said once, by the return value: no process of the pool logs the failure as its crash.
      refute log =~ ~r/terminating\n\*\* \(stop\) .*#{Regex.escape(inspect(name))}/
    end

    # Worker 0 fails at once; worker 1 is still importing (slowly). The pool gives up on the
    # first failure, so worker 1 must be killed while still importing, not awaited.
    @one_fails_one_slow ~S'''
    import os
    import sys
    import time

    _HERE = os.path.dirname(os.path.abspath(__file__))
    if sys.argv[sys.argv.index("--worker-id") + 1] == "0":
        raise RuntimeError("worker 0 cannot start")
    time.sleep(3)
    open(os.path.join(_HERE, "slow_import_finished"), "w").close()


    def hello(args):
        return "hi"
    '''

    test "a failed start kills the workers still starting instead of waiting for them" do
      {opts, dir} = handler_opts(@one_fails_one_slow)

      assert {:error, {{:resource_error, :worker_start_failed, message, _}, _}} =
               start_supervised({NativePool, [name: unique_name(), pool_size: 2] ++ opts})

      assert message =~ "worker 0 cannot start"

      refute File.exists?(Path.join(dir, "slow_import_finished")),
             "start_link waited for worker 1 to finish its import before failing"
    end
  end

  defp parse_float(text) do
    {float, ""} = Float.parse(text)
    float
  end
end
