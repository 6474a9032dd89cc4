defmodule DSPex.NativePool.AsyncTest do
  use DSPex.NativePool.PoolCase, async: true

  test "200 requests in flight from one process all come back, in order" do
    %{pool: pool} = start_pool!(pool_size: 2)

    handles =
      for i <- 1..200, do: NativePool.execute_async("echo", %{i: i, s: "#{i}"}, pool: pool)

    assert Enum.all?(handles, &match?(%NativePool.Handle{}, &1))

    results = Enum.map(handles, &NativePool.await/1)
    assert results == for(i <- 1..200, do: {:ok, %{"i" => i, "s" => "#{i}"}})

    assert NativePool.stats(pool).workers |> Enum.map(& &1.requests) |> Enum.sum() == 200
    refute_received _
  end

  test "only the process that started a request may await it" do
    %{pool: pool} = start_pool!()
    handle = NativePool.execute_async("echo", %{a: 1}, pool: pool)

    Task.async(fn ->
      assert_raise ArgumentError, ~r/only be awaited by the process that started it/, fn ->
        NativePool.await(handle)
      end
    end)
    |> Task.await()

    # The failed attempt took nothing away from the owner.
    assert {:ok, %{"a" => 1}} = NativePool.await(handle)
  end

  test "await with a short timeout gives up on a slow request; no stray reply follows" do
    %{pool: pool} = start_pool!(handlers_source: :standard)
    logs = attach_logs(pool)

    handle = NativePool.execute_async("slow", %{seconds: 0.5, tag: "a"}, pool: pool)
    assert_receive {:pool_log, ^pool, :info, "[python] slow started a", _}, 5_000

    assert {:error, {:timeout_error, :request_timeout, _, %{command: "slow"}}} =
             NativePool.await(handle, 100)

    # The single worker runs this only after `slow` has finished and its reply was dealt with.
    assert {:ok, %{"after" => 1}} = NativePool.execute("echo", %{after: 1}, pool: pool)
    detach_logs(logs)
    refute_receive _, 200
  end

  test "await honours the deadline given to execute_async" do
    %{pool: pool} = start_pool!(handlers_source: :standard)
    handle = NativePool.execute_async("slow", %{seconds: 5}, pool: pool, timeout: 200)

    assert {:error, {:timeout_error, :request_timeout, _, _}} = NativePool.await(handle)
    refute_receive _, 200
  end

  test "awaiting a handle a second time returns within its timeout instead of hanging" do
    %{pool: pool} = start_pool!()

    task =
      Task.async(fn ->
        handle = NativePool.execute_async("echo", %{a: 1}, pool: pool)
        {:ok, %{"a" => 1}} = NativePool.await(handle)
        NativePool.await(handle, 100)
      end)

    result = Task.yield(task, 2_000) || Task.shutdown(task, :brutal_kill)
    assert {:ok, {:error, {:validation_error, :already_awaited, _message, _context}}} = result
  end

  test "an invalid await timeout is an error that leaves the handle to be awaited again" do
    %{pool: pool} = start_pool!()
    handle = NativePool.execute_async("echo", %{a: 1}, pool: pool)

    for bad <- [-5, 1.5, :soon] do
      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.await(handle, bad)

      assert message =~ "invalid :timeout"
    end

    assert {:ok, %{"a" => 1}} = NativePool.await(handle, 5_000)
    refute_receive _, 100
  end

  test "errors pass through await" do
    %{pool: pool} = start_pool!()

    assert {:error, {:validation_error, :invalid_args, _, _}} =
             "echo" |> NativePool.execute_async(%{pid: self()}, pool: pool) |> NativePool.await()

    assert {:error, {:resource_error, :pool_not_found, _, _}} =
             "echo" |> NativePool.execute_async(%{}, pool: unique_name()) |> NativePool.await()

    assert {:error, {:validation_error, :unknown_command, _, _}} =
             "nope" |> NativePool.execute_async(%{}, pool: pool) |> NativePool.await()
  end
end
