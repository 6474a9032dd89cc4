defmodule DSPex.NativePool.StreamRelayTest do
  # stream_to/4 to a receiver on another node (a real `:peer`); the rest of stream_to/4 is in
  # streaming_test. Not async: this VM becomes a distributed node.
  use DSPex.NativePool.PoolCase, async: false

  import DSPex.NativePool.StreamCase
  alias DSPex.NativePool.TestCluster

  @moduletag :cluster
  @moduletag timeout: 120_000

  setup do
    TestCluster.ensure_distributed!()
    {peer, node} = TestCluster.start_peer!()
    on_exit(fn -> TestCluster.stop_peer(peer) end)
    %{node: node}
  end

  test "a remote receiver gets every chunk and the result, in order", %{node: node} do
    pool = pool!(stream_window: 4)
    receiver = TestCluster.spawn_forwarder(node, self())
    assert {:ok, ref} = NativePool.stream_to(receiver, "count", %{n: 50}, pool: pool)

    for i <- 0..49, do: assert_receive({:forwarded, {^ref, {:chunk, %{"i" => ^i}}}}, 5_000)
    assert_receive {:forwarded, {^ref, {:done, %{"total" => 50}}}}, 5_000
  end

  test "a remote receiver that does not read holds the worker back to the window", %{node: node} do
    pool = pool!(stream_window: 2)
    receiver = Node.spawn(node, Process, :sleep, [:infinity])
    assert {:ok, _ref} = NativePool.stream_to(receiver, "watched", %{n: 1_000}, pool: pool)

    # As for a local receiver (streaming_test): a window's worth waiting, one in the relay's
    # hands, the worker's own few ahead.
    assert max_progress(-1) < 10
  end
end
