defmodule DSPex.NativePool.OutputTest do
  use DSPex.NativePool.PoolCase, async: true

  import ExUnit.CaptureLog

  setup do
    start_pool!(handlers_source: :standard)
  end

  test "print, os.write(1) and sys.stderr leave the reply intact and reach Logger", %{
    pool: pool,
    pid: pid
  } do
    attach_logs(pool)

    log =
      capture_log([metadata: [:pool, :worker_id]], fn ->
        assert {:ok, %{"tag" => "t-1"}} = NativePool.execute("chatty", %{tag: "t-1"}, pool: pool)

        # Lines come from a reader thread per stream, asynchronously: wait for each one.
        assert_receive {:pool_log, ^pool, :info, "[python] print t-1", %{worker_id: 0}}, 5_000
        assert_receive {:pool_log, ^pool, :info, "[python] fd1 t-1", %{worker_id: 0}}, 5_000
        assert_receive {:pool_log, ^pool, :warning, "[python] stderr t-1", %{worker_id: 0}}, 5_000

        # The pool logged them from its GenServer, which has finished doing so once it
        # answers this; capture_log then flushes Logger before returning.
        :sys.get_state(pid)
      end)

    pool_meta = "pool=#{pool} worker_id=0"
    assert log =~ "#{pool_meta} [info] [python] print t-1"
    assert log =~ "#{pool_meta} [info] [python] fd1 t-1"
    assert log =~ "#{pool_meta} [warning] [python] stderr t-1"

    # The protocol is still in step: the next calls get their own replies.
    assert {:ok, %{"tag" => "t-2"}} = NativePool.execute("chatty", %{tag: "t-2"}, pool: pool)
    assert {:ok, %{"x" => 1}} = NativePool.execute("echo", %{x: 1}, pool: pool)
  end

  test "a very long line is logged cut short, and output after it still flows", %{pool: pool} do
    attach_logs(pool)
    assert {:ok, "done"} = NativePool.execute("long_line", %{n: 200_000}, pool: pool)

    assert_receive {:pool_log, ^pool, :info, "[python] xxxxxxxx" <> _ = long, _}, 5_000
    assert byte_size(long) < 200_000
    assert_receive {:pool_log, ^pool, :info, "[python] after long line", _}, 5_000
  end

  test "a Python exception's traceback is not written to the log", %{pool: pool} do
    attach_logs(pool)

    assert {:error, {:system_error, :python_exception, _, _}} =
             NativePool.execute("boom", %{}, pool: pool)

    # A marker line printed after the failed call: everything before it has been forwarded.
    assert {:ok, _} = NativePool.execute("chatty", %{tag: "marker"}, pool: pool)
    assert_receive {:pool_log, ^pool, :warning, "[python] stderr marker", _}, 5_000
    refute_received {:pool_log, ^pool, _, "[python] Traceback" <> _, _}
  end
end
