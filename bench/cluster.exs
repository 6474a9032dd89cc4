# A pool across nodes on this machine, in one run (2-core machine: the nodes share its cores).
#
#   mix run cluster.exs [--seconds 3] [--callers 64]
#
# 1. Throughput of a 10 ms sleep command from `--callers` callers on this node: 1 node × 2
#    workers (a local pool), then 2 nodes × 2 workers (the same pool with `cluster: true` here
#    and on a `:peer` node). The sleep does not use the cores, so 2 nodes should do about 2×.
# 2. The added latency of a call that runs on the other node: p50 of 2,000 sequential 100 B
#    echoes on the local member, then pinned to the peer's (`node:`).

Logger.configure(level: :warning)

defmodule ClusterBench do
  alias DSPex.NativePool

  @handlers Path.expand("python", __DIR__)

  def main(argv) do
    {opts, _, _} = OptionParser.parse(argv, strict: [seconds: :integer, callers: :integer])
    seconds = Keyword.get(opts, :seconds, 3)
    callers = Keyword.get(opts, :callers, 64)
    distribute!()

    {:ok, alone} = NativePool.start_link(pool_opts(:bench_alone, false))
    one = throughput(:bench_alone, callers, seconds)
    GenServer.stop(alone)

    {:ok, here} = NativePool.start_link(pool_opts(:bench_cluster, true))
    {peer, node} = start_peer!()
    spec = Supervisor.child_spec({NativePool, pool_opts(:bench_cluster, true)}, id: :bench)
    {:ok, _} = :erpc.call(node, Supervisor, :start_child, [DSPex.NativePool.Supervisor, spec])
    wait_for_members(:bench_cluster, 2)
    two = throughput(:bench_cluster, callers, seconds)

    local =
      p50(fn ->
        NativePool.execute("echo", %{data: payload()}, pool: :bench_cluster, node: node())
      end)

    remote =
      p50(fn ->
        NativePool.execute("echo", %{data: payload()}, pool: :bench_cluster, node: node)
      end)

    :peer.stop(peer)
    GenServer.stop(here)

    IO.puts("""
    10 ms sleep, #{callers} callers, #{seconds} s each:
      1 node × 2 workers:  #{round(one)} req/s
      2 nodes × 2 workers: #{round(two)} req/s (#{Float.round(two / one, 2)}× one node)
    100 B echo, sequential, p50 of 2,000:
      on this node's member: #{Float.round(local, 1)} µs
      on the other node's:   #{Float.round(remote, 1)} µs (#{Float.round(remote - local, 1)} µs more)
    """)
  end

  defp distribute! do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    {:ok, _} = Node.start(:"bench_#{System.unique_integer([:positive])}", :shortnames)
  end

  defp start_peer! do
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{name: :"bench_peer_#{System.unique_integer([:positive])}", args: args})

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:dspex_native_pool])
    :ok = :erpc.call(node, Logger, :configure, [[level: :warning]])
    {peer, node}
  end

  defp pool_opts(name, cluster?) do
    [
      name: name,
      pool_size: 2,
      cluster: cluster?,
      require_dspy: false,
      handlers: "bench_handlers",
      python_path: [@handlers],
      max_queue: 100_000
    ]
  end

  defp wait_for_members(pool, n, tries \\ 100) do
    cond do
      length(NativePool.cluster_stats(pool)) >= n -> :ok
      tries == 0 -> raise "the cluster did not form"
      true -> Process.sleep(20) && wait_for_members(pool, n, tries - 1)
    end
  end

  defp throughput(pool, callers, seconds) do
    until = System.monotonic_time(:millisecond) + seconds * 1_000

    1..callers
    |> Enum.map(fn _ -> Task.async(fn -> loop(pool, until, 0) end) end)
    |> Enum.map(&Task.await(&1, :infinity))
    |> Enum.sum()
    |> Kernel./(seconds)
  end

  defp loop(pool, until, n) do
    if System.monotonic_time(:millisecond) < until do
      {:ok, _} = NativePool.execute("sleep", %{s: 0.01}, pool: pool, timeout: 60_000)
      loop(pool, until, n + 1)
    else
      n
    end
  end

  defp p50(call) do
    for _ <- 1..200, do: {:ok, _} = call.()

    1..2_000
    |> Enum.map(fn _ ->
      {us, {:ok, _}} = :timer.tc(call)
      us
    end)
    |> Enum.sort()
    |> Enum.at(1_000)
    |> Kernel.*(1.0)
  end

  defp payload, do: String.duplicate("x", 100)
end

ClusterBench.main(System.argv())
