defmodule DSPex.NativePool.StreamRelayTest do
  # stream_to/4's relay: to a receiver on another node (a real `:peer`), and ending with a
  # receiver that dies while the worker is between two chunks.
  use DSPex.NativePool.PoolCase, async: false

  alias DSPex.NativePool.TestCluster

  @moduletag timeout: 120_000

  @handlers ~S'''
  import os
  import time

  from dspex_bridge import concurrent, elixir


  def count(args):
      for i in range(args["n"]):
          yield {"i": i}
      return {"total": args["n"]}


  def watched(args):
      # Says each value it is about to yield.
      for i in range(args["n"]):
          elixir.call("progress", {"i": i})
          yield i
      return "finished"


  def quiet_after_one(args):
      # One chunk, then nothing for up to 20 s unless the pool cancels the request.
      yield "started"
      for _ in range(2_000):
          if concurrent.cancelled():
              open(args["mark"], "w").close()
              return "cancelled"
          time.sleep(0.01)
      yield "never cancelled"
  '''

  defp pool!(opts) do
    test_pid = self()
    tools = [progress: {fn args -> send(test_pid, {:progress, args}) && :ok end, "Progress"}]
    %{pool: pool} = start_pool!([handlers_source: @handlers, tools: tools] ++ opts)
    pool
  end

  describe "a receiver on another node" do
    setup do
      TestCluster.ensure_distributed!()
      {peer, node} = TestCluster.start_peer!()
      on_exit(fn -> TestCluster.stop_peer(peer) end)
      %{node: node}
    end

    test "gets every chunk and the result, in order", %{node: node} do
      pool = pool!(stream_window: 4)
      receiver = TestCluster.spawn_forwarder(node, self())
      assert {:ok, ref} = NativePool.stream_to(receiver, "count", %{n: 50}, pool: pool)

      for i <- 0..49, do: assert_receive({:forwarded, {^ref, {:chunk, %{"i" => ^i}}}}, 5_000)
      assert_receive {:forwarded, {^ref, {:done, %{"total" => 50}}}}, 5_000
    end

    test "that does not read holds the worker back to the window", %{node: node} do
      pool = pool!(stream_window: 2)
      receiver = Node.spawn(node, Process, :sleep, [:infinity])
      assert {:ok, _ref} = NativePool.stream_to(receiver, "watched", %{n: 1_000}, pool: pool)

      # As for a local receiver (streaming_test): a window's worth waiting, one in the
      # relay's hands, the worker's own few ahead.
      assert max_progress(-1) < 10
    end
  end

  test "a receiver that dies between two chunks ends the request at once" do
    pool = pool!(concurrency: 4)
    mark = Path.join(System.tmp_dir!(), "np_relay_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(mark) end)
    test_pid = self()

    receiver =
      spawn(fn ->
        receive do
          {_ref, {:chunk, "started"}} -> send(test_pid, :started)
        end
      end)

    assert {:ok, _ref} =
             NativePool.stream_to(receiver, "quiet_after_one", %{mark: mark}, pool: pool)

    assert_receive :started, 5_000
    # The receiver has ended; the worker's next chunk is 20 s away, but its request is
    # cancelled now.
    eventually(fn -> File.exists?(mark) end, 5_000)
    eventually(fn -> NativePool.stats(pool).in_flight == 0 end, 5_000)
  end

  defp max_progress(last) do
    receive do
      {:progress, %{"i" => i}} when i < 10 -> max_progress(i)
      {:progress, %{"i" => i}} -> i
    after
      1_000 -> last
    end
  end
end
