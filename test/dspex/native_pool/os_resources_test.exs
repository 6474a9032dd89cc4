defmodule DSPex.NativePool.OsResourcesTest do
  # No orphans and no leaks. Not async: it counts the VM's own threads and descriptors, which
  # other tests' pools would disturb.
  use DSPex.NativePool.PoolCase, async: false

  defp threads, do: length(File.ls!("/proc/self/task"))
  defp fds, do: length(File.ls!("/proc/self/fd"))

  test "when the VM is killed with SIGKILL, every worker and the template exit within 2 s" do
    dir = Path.join(System.tmp_dir!(), "dspex_vmkill_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    File.write!(Path.join(dir, "spin.py"), "def spin(args):\n    while True:\n        pass\n")

    # A second VM runs a pool: one worker spinning in a request, one idle, one sleeping.
    script = """
    {:ok, _} = DSPex.NativePool.start_link(name: Victim, pool_size: 2, handlers: "spin",
      python_path: [#{inspect(dir)}])
    spawn(fn -> DSPex.NativePool.execute("spin", %{}, pool: Victim, timeout: :infinity) end)
    Enum.find(Stream.repeatedly(fn -> DSPex.NativePool.stats(Victim) end), fn s ->
      Enum.any?(s.workers, &(&1.state == :busy))
    end)
    workers = for w <- DSPex.NativePool.stats(Victim).workers, do: w.os_pid
    # Their parent: the template they were forked from.
    parents = for pid <- workers do
      [_, after_name] = String.split(File.read!("/proc/\#{pid}/stat"), ") ")
      after_name |> String.split(" ") |> Enum.at(1) |> String.to_integer()
    end
    pids = workers ++ Enum.uniq(parents)
    IO.puts("READY \#{System.pid()} \#{Enum.join(pids, " ")}")
    Process.sleep(:infinity)
    """

    ebin = Application.app_dir(:dspex_native_pool, "ebin")

    port =
      Port.open({:spawn_executable, System.find_executable("elixir")}, [
        :binary,
        :exit_status,
        {:line, 4096},
        args: ["-pa", ebin, "-e", script]
      ])

    {vm_pid, os_pids} = await_ready(port)
    # Two workers and their template.
    assert length(os_pids) == 3
    assert Enum.all?(os_pids, &os_process_alive?/1)

    System.cmd("kill", ["-9", vm_pid])
    killed_at = System.monotonic_time(:millisecond)
    eventually(fn -> not Enum.any?(os_pids, &os_process_alive?/1) end, 2_000)

    IO.puts(
      "workers gone #{System.monotonic_time(:millisecond) - killed_at} ms after the VM's SIGKILL"
    )
  end

  defp await_ready(port) do
    receive do
      {^port, {:data, {:eol, "READY " <> rest}}} ->
        [vm_pid | pids] = String.split(rest)
        {vm_pid, Enum.map(pids, &String.to_integer/1)}

      {^port, {:data, _other}} ->
        await_ready(port)

      {^port, {:exit_status, status}} ->
        flunk("the second VM exited with status #{status}")
    after
      30_000 -> flunk("the second VM did not start its pool")
    end
  end

  test "starting and stopping 100 pools returns threads, descriptors and memory to their level" do
    cycle = fn i ->
      name = :"leak_#{i}"
      # Forked from a template that preloads nothing: the cost of a cycle is the pool's own,
      # not a second of `import dspy` per pool.
      {:ok, pid} = NativePool.start_link(name: name, pool_size: 2, preload: [])
      {:ok, _} = NativePool.execute("echo", %{i: i}, pool: name)
      GenServer.stop(pid)
    end

    # Warm up: code loading, atoms, the first thread pools.
    Enum.each(1..3, cycle)
    :erlang.garbage_collect()
    before = {threads(), fds(), :erlang.memory(:total)}

    Enum.each(1..100, cycle)
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)

    # Reader threads end at end of file, just after their worker, and close its output pipes
    # as they go: give them a moment. (Counted at once, the last pool's two pipes were once
    # still open in a full run while the thread count had already returned to its level.)
    {threads_before, fds_before, _} = before

    eventually(fn -> threads() <= threads_before end, 2_000, fn ->
      "#{threads()} threads, #{threads_before} before the 100 pools"
    end)

    eventually(fn -> fds() <= fds_before end, 2_000, fn ->
      "#{fds()} descriptors open, #{fds_before} before the 100 pools"
    end)

    grown = :erlang.memory(:total) - elem(before, 2)
    assert grown < 2_000_000, "VM memory grew by #{grown} bytes over 100 pools"
  end

  test "workers whose escaped grandchildren hold their output leave no thread or fd behind" do
    {opts, _dir} =
      handler_opts(~S"""
      import os, subprocess

      def escape(args):
          # In a session of its own, out of the worker's process group, holding its stdout
          # and stderr open.
          child = subprocess.Popen(["sleep", "60"], start_new_session=True)
          return {"pid": child.pid}

      def crash(args):
          os._exit(3)
      """)

    name = unique_name()
    # Warm up code loading and the VM's own threads.
    {:ok, pid} = NativePool.start_link([name: name, pool_size: 1] ++ opts)
    GenServer.stop(pid)
    before = {threads(), fds()}

    {:ok, pid} = NativePool.start_link([name: name, pool_size: 1, max_backoff: 0] ++ opts)

    escaped =
      for _ <- 1..10 do
        eventually(fn -> all_idle?(name) end)
        assert {:ok, %{"pid" => grandchild}} = NativePool.execute("escape", %{}, pool: name)

        assert {:error, {:communication_error, :worker_exited, _, _}} =
                 NativePool.execute("crash", %{}, pool: name)

        grandchild
      end

    on_exit(fn -> Enum.each(escaped, &System.cmd("kill", ["-9", to_string(&1)])) end)
    assert Enum.all?(escaped, &os_process_alive?/1)
    GenServer.stop(pid)

    {threads_before, fds_before} = before
    # Both counts (a tuple comparison would settle for fewer threads alone).
    eventually(fn -> threads() <= threads_before and fds() <= fds_before end, 5_000, fn ->
      "#{threads()} threads and #{fds()} descriptors, #{threads_before} and #{fds_before} before"
    end)
  end
end
