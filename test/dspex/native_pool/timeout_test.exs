defmodule DSPex.NativePool.TimeoutTest do
  use DSPex.NativePool.PoolCase, async: true

  # Runs `slow` on the pool from another process; returns once the worker has started it.
  defp occupy(pool, seconds, tag) do
    task =
      Task.async(fn ->
        NativePool.execute("slow", %{seconds: seconds, tag: tag}, pool: pool, timeout: 30_000)
      end)

    assert_receive {:pool_log, ^pool, :info, "[python] slow started " <> ^tag, _}, 5_000
    task
  end

  test "a request past its deadline returns :request_timeout; the hung worker is replaced" do
    %{pool: pool} = start_pool!(handlers_source: :standard)
    [old_os_pid] = worker_os_pids(pool)

    started = System.monotonic_time(:millisecond)

    assert {:error, {:timeout_error, :request_timeout, message, context}} =
             NativePool.execute("slow", %{seconds: 5}, pool: pool, timeout: 200)

    elapsed = System.monotonic_time(:millisecond) - started
    assert elapsed >= 200
    assert elapsed < 200 + 1_000, "returned after #{elapsed} ms"

    assert message ==
             "the worker did not answer within 200 ms; the worker is replaced (kill_on_timeout)"

    assert %{pool: ^pool, command: "slow"} = context

    # The pool keeps serving, on a new worker: the hung one was killed (and reaped).
    assert {:ok, %{"pid" => new_os_pid}} = NativePool.execute("ping", %{}, pool: pool)
    assert new_os_pid != old_os_pid
    refute os_process_exists?(old_os_pid)

    stats = NativePool.stats(pool)
    assert stats.counters.timed_out == 1
    assert [%{restarts: 1, last_exit: last_exit}] = stats.workers
    assert last_exit =~ ~s(still running "slow" at the caller's deadline)

    # The late reply never comes.
    refute_receive _, 500
  end

  test "with kill_on_timeout: false the worker is kept and its late reply dropped" do
    %{pool: pool} = start_pool!(handlers_source: :standard, kill_on_timeout: false)
    [os_pid] = worker_os_pids(pool)

    assert {:error, {:timeout_error, :request_timeout, message, _}} =
             NativePool.execute("slow", %{seconds: 0.5}, pool: pool, timeout: 100)

    assert message =~ "its reply will be dropped"

    # The single worker takes this only after finishing `slow`, whose reply it then dropped.
    assert {:ok, %{"pid" => ^os_pid}} = NativePool.execute("ping", %{}, pool: pool)
    refute_receive _, 200
    assert NativePool.stats(pool).workers |> hd() |> Map.fetch!(:restarts) == 0
  end

  test "a request still queued at its deadline returns :queue_timeout and never runs" do
    %{pool: pool} = start_pool!(handlers_source: :standard)
    logs = attach_logs(pool)
    busy = occupy(pool, 0.5, "q")

    assert {:error, {:timeout_error, :queue_timeout, message, context}} =
             NativePool.execute("echo", %{never: :runs}, pool: pool, timeout: 100)

    assert message =~ "100 ms"
    assert message =~ "never ran"
    assert %{pool: ^pool, command: "echo"} = context

    assert {:ok, %{"tag" => "q"}} = Task.await(busy)

    # The worker took the abandoned request off the queue before this one, and dropped it.
    assert {:ok, %{"commands" => commands}} = NativePool.execute("get_stats", %{}, pool: pool)
    assert commands["slow"] == 1
    refute Map.has_key?(commands, "echo")

    detach_logs(logs)
    refute_receive _, 200
  end

  test "a full queue refuses calls at once with :pool_saturated" do
    %{pool: pool} = start_pool!(handlers_source: :standard, max_queue: 1)
    attach_logs(pool)
    busy = occupy(pool, 0.5, "s")

    # execute_async returns once its request is in the queue, which is now full.
    queued = NativePool.execute_async("echo", %{queued: 1}, pool: pool)
    assert NativePool.stats(pool).queue_length == 1

    assert {:error, {:resource_error, :pool_saturated, message, _}} =
             NativePool.execute("echo", %{refused: 1}, pool: pool)

    assert message =~ "max_queue: 1"
    assert NativePool.stats(pool).counters.rejected == 1

    assert {:ok, %{"tag" => "s"}} = Task.await(busy)
    assert {:ok, %{"queued" => 1}} = NativePool.await(queued)
  end

  test "timeout: 0 gives up at once without running the request" do
    %{pool: pool} = start_pool!(handlers_source: :standard)
    attach_logs(pool)
    busy = occupy(pool, 0.3, "z")

    assert {:error, {:timeout_error, :queue_timeout, _, _}} =
             NativePool.execute("echo", %{}, pool: pool, timeout: 0)

    assert {:ok, _} = Task.await(busy)
  end
end
