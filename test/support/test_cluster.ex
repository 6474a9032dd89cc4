defmodule DSPex.NativePool.TestCluster do
  @moduledoc false
  # Peer nodes for the cluster tests: real `:peer` nodes on this machine, with this VM's code
  # path, each running the library's application and real pools of real Python workers.

  @handlers ~S'''
  import os
  import time


  def whoami(args):
      return os.environ["NODE_TAG"]


  def nap(args):
      time.sleep(args.get("s", 0.2))
      return os.environ["NODE_TAG"]
  '''

  @doc "Makes this VM a distributed node (starting epmd if needed)."
  def ensure_distributed! do
    unless Node.alive?() do
      {_, 0} = System.cmd("epmd", ["-daemon"])
      name = :"np_test_#{System.unique_integer([:positive])}"
      {:ok, _} = Node.start(name, :shortnames)
    end

    :ok
  end

  @doc "A directory holding the handler module of the cluster tests."
  def handlers_dir! do
    dir = Path.join(System.tmp_dir!(), "np_cluster_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, "cluster_handlers.py"), @handlers)
    dir
  end

  @doc "Starts a peer running the library; returns `{peer, node}`."
  def start_peer! do
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    name = :"np_peer_#{System.unique_integer([:positive])}"
    {:ok, peer, node} = :peer.start(%{name: name, args: args, wait_boot: 30_000})
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:dspex_native_pool])
    # Its pools' start-up lines would reach this VM's output.
    :ok = :erpc.call(node, Logger, :configure, [[level: :warning]])
    {peer, node}
  end

  @doc "Starts pool `name` on `node` (under the library's supervisor there), tagged `tag`."
  def start_pool!(node, name, tag, dir, opts \\ []) do
    opts =
      [
        name: name,
        pool_size: 1,
        cluster: true,
        require_dspy: false,
        handlers: "cluster_handlers",
        python_path: [dir],
        env: %{"NODE_TAG" => tag}
      ] ++ opts

    spec = Supervisor.child_spec({DSPex.NativePool, opts}, id: name)

    {:ok, _} =
      :erpc.call(node, Supervisor, :start_child, [DSPex.NativePool.Supervisor, spec], 60_000)

    :ok
  end

  @doc "Stops a peer, if a test has not killed it already."
  def stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  @doc "A process on `node` that sends every message it gets to `to` as `{:forwarded, message}`."
  def spawn_forwarder(node, to), do: Node.spawn(node, __MODULE__, :forward, [to])

  @doc false
  def forward(to) do
    receive do
      message ->
        send(to, {:forwarded, message})
        forward(to)
    end
  end

  @doc "The OS pid of a peer's VM."
  def os_pid(node), do: :erpc.call(node, System, :pid, []) |> String.to_integer()
end
