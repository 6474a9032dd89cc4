defmodule DSPex.NativePool.CancelRoutingTest do
  # Where new requests go (`concurrency` above 1) while a worker holds a cancelled request
  # that has not ended: such a worker is killed with everything it holds at `cancel_grace`.
  use DSPex.NativePool.PoolCase, async: true

  @moduletag timeout: 60_000

  # A replacement worker does not finish starting while the hold file exists (10 s at most),
  # so the test decides how long a slot stays restarting.
  defp handlers(hold) do
    """
    import os, time

    _until = time.monotonic() + 10
    while os.path.exists(#{inspect(hold)}) and time.monotonic() < _until:
        time.sleep(0.01)

    def hog(args):
        # C code that holds the interpreter lock for minutes: the worker answers nothing.
        import re
        return bool(re.match(r"(a+)+$", "a" * 34 + "b"))

    def crash(args):
        os._exit(9)
    """
  end

  test "a new request waits for a restarting worker rather than join one that ignores a cancel" do
    hold = Path.join(System.tmp_dir!(), "dspex-hold-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(hold) end)

    %{pool: pool} =
      start_pool!(
        handlers_source: handlers(hold),
        pool_size: 2,
        concurrency: 2,
        cancel_grace: 3_000
      )

    # Cancelled at its deadline, it never ends: its worker is killed at cancel_grace.
    assert {:error, {:timeout_error, :request_timeout, _, %{worker_id: stuck}}} =
             NativePool.execute("hog", %{}, pool: pool, timeout: 100)

    # The other worker (fewest in flight) dies, and its replacement is held at start.
    File.write!(hold, "")

    assert {:error, {:communication_error, :worker_exited, _, %{worker_id: other}}} =
             NativePool.execute("crash", %{}, pool: pool)

    assert other != stuck
    assert %{state: state} = Enum.at(NativePool.stats(pool).workers, other)
    assert state in [:starting, :restarting]

    echo = NativePool.execute_async("echo", %{a: 1}, pool: pool, timeout: 20_000)
    File.rm!(hold)

    # On the stuck worker it would fail with it, 3 s after the cancel.
    assert {:ok, %{"a" => 1}} = NativePool.await(echo)
    assert NativePool.stats(pool).counters.worker_exited >= 1
  end
end
