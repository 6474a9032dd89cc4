defmodule DSPex.NativePool.CpuPinningTest do
  # Not async: which pool gets CPUs depends on which other pools hold them, VM-wide.
  use DSPex.NativePool.PoolCase, async: false

  # The CPUs an OS process (or the VM itself) may run on, from the kernel.
  defp cpus(os_pid) do
    "/proc/#{os_pid}/status"
    |> File.read!()
    |> String.split("\n")
    |> Enum.find_value(fn line ->
      case String.split(line, ":\t") do
        ["Cpus_allowed_list", list] -> parse_cpu_list(list)
        _ -> nil
      end
    end)
  end

  defp parse_cpu_list(list) do
    list
    |> String.split(",")
    |> Enum.flat_map(fn range ->
      case String.split(range, "-") do
        [a, b] -> Enum.to_list(String.to_integer(a)..String.to_integer(b))
        [a] -> [String.to_integer(a)]
      end
    end)
  end

  defp worker_cpus(pool), do: Enum.map(worker_os_pids(pool), &cpus/1)

  # What stats/1 says, checked against what the kernel says.
  defp reported_cpus(pool) do
    reported = Enum.map(NativePool.stats(pool).workers, & &1.cpu)

    Enum.zip(reported, worker_cpus(pool))
    |> Enum.each(fn
      {nil, _kernel} -> :ok
      {cpu, kernel} -> assert kernel == [cpu]
    end)

    reported
  end

  # CPUs are held machine-wide, by lock files. When this module starts, a pool of an async test
  # whose owner was killed may still be closing in the background, holding CPUs for a moment;
  # another program using this library would hold some for good, and the assertions below would
  # not hold.
  defp await_no_cpu_held_elsewhere do
    # Pools of earlier tests may still be stopping.
    eventually(fn -> held_elsewhere() == [] end, 20_000)
  end

  defp held_elsewhere do
    Path.wildcard(Path.join(System.tmp_dir!(), "dspex_native_pool.cpu*.lock"))
    |> Enum.filter(fn path -> match?({_, 1}, System.cmd("flock", ["-n", "-x", path, "true"])) end)
  end

  test "each worker of a pool that fits the machine gets a CPU of its own, and keeps it" do
    machine = cpus(System.pid())
    await_no_cpu_held_elsewhere()
    %{pool: pool} = start_pool!(pool_size: length(machine))

    assert reported_cpus(pool) |> Enum.sort() == machine
    pinned = worker_cpus(pool)
    assert Enum.all?(pinned, &(length(&1) == 1))
    assert pinned |> List.flatten() |> Enum.sort() == machine

    # A replacement is spawned by the same, pinned, thread: it lands on the same CPU.
    [first | _] = worker_os_pids(pool)
    System.cmd("kill", ["-9", to_string(first)])
    new_pid = eventually(fn -> (pid = hd(worker_os_pids(pool))) not in [first, 0] && pid end)
    assert cpus(new_pid) == hd(pinned)
    assert {:ok, _} = NativePool.execute("ping", %{}, pool: pool)
  end

  test "a pool finding too few free CPUs, or told not to, is not pinned; CPUs are freed on stop" do
    machine = cpus(System.pid())
    await_no_cpu_held_elsewhere()
    %{pool: first} = start_pool!(pool_size: length(machine))
    assert Enum.all?(worker_cpus(first), &(length(&1) == 1))

    # Every CPU is held by `first`: nothing is left to pin `second` to.
    %{pool: second} = start_pool!(pool_size: 1)
    assert worker_cpus(second) == [machine]
    assert reported_cpus(second) == [nil]

    # Too many workers for the machine: none is pinned.
    %{pool: large} = start_pool!(pool_size: length(machine) + 1)
    assert Enum.all?(worker_cpus(large), &(&1 == machine))

    :ok = stop_supervised(first)
    %{pool: third} = start_pool!(pool_size: 1)
    assert [[_one]] = worker_cpus(third)

    %{pool: unpinned} = start_pool!(pool_size: 1, pin_cpus: false)
    assert worker_cpus(unpinned) == [machine]
  end
end
