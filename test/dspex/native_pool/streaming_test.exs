defmodule DSPex.NativePool.StreamingTest do
  # Generator commands stream chunks to an Elixir Stream (or to a process) with credits, in
  # workers serving one request at a time and many.
  use DSPex.NativePool.PoolCase, async: true

  @moduletag timeout: 120_000

  import DSPex.NativePool.StreamCase

  for concurrency <- [1, 4] do
    describe "concurrency #{concurrency}" do
      test "chunks then the result, in order" do
        pool = pool!(concurrency: unquote(concurrency))

        assert NativePool.execute_stream("count", %{n: 3}, pool: pool) |> Enum.to_list() == [
                 {:chunk, %{"i" => 0}},
                 {:chunk, %{"i" => 1}},
                 {:chunk, %{"i" => 2}},
                 {:done, %{"total" => 3}}
               ]

        assert NativePool.execute_stream("acount", %{n: 2}, pool: pool) |> Enum.to_list() ==
                 [{:chunk, 0}, {:chunk, 1}, {:done, "async done"}]

        refute_received _
      end

      test "execute/3 on a streaming command returns its result alone" do
        pool = pool!(concurrency: unquote(concurrency))
        assert {:ok, %{"total" => 100}} = NativePool.execute("count", %{n: 100}, pool: pool)
        refute_received _
      end

      test "a worker runs at most :stream_window chunks ahead of its consumer" do
        pool = pool!(concurrency: unquote(concurrency))
        stream = NativePool.execute_stream("watched", %{n: 50}, pool: pool, stream_window: 3)

        # The stream is enumerated in this process; Enum.take/2 halts it after 2.
        assert Enum.take(stream, 2) == [{:chunk, 0}, {:chunk, 1}]

        # The worker had produced the 2 taken, at most 3 more (the window) and the one waiting
        # for a credit; then it was stopped.
        produced = collect_progress([])
        assert length(produced) in 2..6, inspect(produced)
        assert_receive {:progress, %{"closed" => true}}, 5_000
        refute_received {:progress, %{"i" => 6}}

        # No chunk of it arrives later, and the pool serves on.
        assert {:ok, %{"total" => 1}} = NativePool.execute("count", %{n: 1}, pool: pool)
        refute_received {_, {:chunk, _, _, _}}
      end

      test "a consumer that dies stops its stream in Python" do
        pool = pool!(concurrency: unquote(concurrency))
        test_pid = self()

        consumer =
          spawn(fn ->
            NativePool.execute_stream("watched", %{n: 1_000}, pool: pool, stream_window: 2)
            |> Enum.each(fn _ -> send(test_pid, :consumed) end)
          end)

        assert_receive :consumed, 5_000
        Process.exit(consumer, :kill)
        assert_receive {:progress, %{"closed" => true}}, 5_000
        assert {:ok, %{"total" => 1}} = NativePool.execute("count", %{n: 1}, pool: pool)
      end

      test "the timeout covers the whole stream" do
        pool = pool!(concurrency: unquote(concurrency))
        stream = NativePool.execute_stream("slow_stream", %{}, pool: pool, timeout: 500)

        assert_raise DSPex.NativePool.Error, ~r/request_timeout/, fn -> Enum.to_list(stream) end
        refute_received _
      end

      test "a stream past its deadline stops at its next yield; its worker carries on" do
        pool = pool!(concurrency: unquote(concurrency), cancel_grace: 10_000)
        [os_pid] = worker_os_pids(pool)

        mark =
          Path.join(
            System.tmp_dir!(),
            "dspex_stream_stopped_#{System.unique_integer([:positive])}"
          )

        on_exit(fn -> File.rm(mark) end)
        stream = NativePool.execute_stream("ticking", %{mark: mark}, pool: pool, timeout: 300)

        error = assert_raise DSPex.NativePool.Error, fn -> Enum.to_list(stream) end
        assert error.type == :request_timeout
        assert error.message =~ "the stream did not end within 300 ms"
        # Stopped long before the grace period is over.
        eventually(fn -> File.exists?(mark) end)

        assert {:ok, %{"total" => 1}} = NativePool.execute("count", %{n: 1}, pool: pool)
        assert worker_os_pids(pool) == [os_pid]
      end

      test "a stream that does not stop within :cancel_grace has its worker replaced" do
        pool = pool!(concurrency: unquote(concurrency), cancel_grace: 200)
        [os_pid] = worker_os_pids(pool)
        # Asleep in Python after its first chunk: it reaches no yield to stop at.
        stream = NativePool.execute_stream("slow_stream", %{}, pool: pool, timeout: 300)

        assert_raise DSPex.NativePool.Error, ~r/request_timeout/, fn -> Enum.to_list(stream) end
        eventually(fn -> match?([pid] when pid not in [nil, os_pid], worker_os_pids(pool)) end)
        assert {:ok, %{"total" => 1}} = NativePool.execute("count", %{n: 1}, pool: pool)
      end

      test "a generator that raises fails the stream with the Python error" do
        pool = pool!(concurrency: unquote(concurrency))
        stream = NativePool.execute_stream("broken_stream", %{}, pool: pool)

        error = assert_raise DSPex.NativePool.Error, fn -> Enum.to_list(stream) end
        assert error.type == :python_exception
        assert error.message =~ "broke after one"
      end

      test "a chunk JSON cannot carry, or over max_frame, fails as a result would" do
        pool = pool!(concurrency: unquote(concurrency), max_frame: 65_536)

        stream = NativePool.execute_stream("unsendable_stream", %{}, pool: pool)
        error = assert_raise DSPex.NativePool.Error, fn -> Enum.to_list(stream) end
        assert {error.category, error.type} == {:system_error, :unserializable_result}
        assert error.message =~ "a chunk (a dict) cannot be sent as JSON"

        stream = NativePool.execute_stream("huge_chunk_stream", %{}, pool: pool)
        error = assert_raise DSPex.NativePool.Error, fn -> Enum.to_list(stream) end
        assert {error.category, error.type} == {:resource_error, :reply_too_large}
        assert error.message =~ "65536-byte frame limit"

        # The worker stays: the stream failed, not its pipes.
        assert {:ok, %{"x" => 1}} = NativePool.execute("echo", %{x: 1}, pool: pool)
      end

      test "stream_to/4 sends the chunks and the result to a process" do
        pool = pool!(concurrency: unquote(concurrency))
        assert {:ok, ref} = NativePool.stream_to(self(), "count", %{n: 2}, pool: pool)
        assert_receive {^ref, {:chunk, %{"i" => 0}}}, 5_000
        assert_receive {^ref, {:chunk, %{"i" => 1}}}, 5_000
        assert_receive {^ref, {:done, %{"total" => 2}}}, 5_000

        assert {:ok, ref} = NativePool.stream_to(self(), "broken_stream", %{}, pool: pool)
        assert_receive {^ref, {:chunk, 1}}, 5_000
        assert_receive {^ref, {:error, {:system_error, :python_exception, message, _}}}, 5_000
        assert message =~ "broke after one"
      end

      test "stream_to/4 holds back to the pool's :stream_window for a receiver that does not read" do
        pool = pool!(concurrency: unquote(concurrency), stream_window: 2)
        receiver = spawn(fn -> receive(do: (:never -> :ok)) end)
        assert {:ok, _ref} = NativePool.stream_to(receiver, "watched", %{n: 1_000}, pool: pool)

        # 2 waiting for the receiver, one in the relay's hands, 2 ahead and one at its yield;
        # with a window of 64 (the relay's own default before) it would have run far past 10.
        assert max_progress(-1) < 10
        Process.exit(receiver, :kill)
        assert_receive {:progress, %{"closed" => true}}, 5_000
      end
    end
  end

  test "a stream_to/4 receiver that dies between two chunks ends the request at once" do
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

  test "a stream and a tool call each emit a telemetry event" do
    pool = pool!(concurrency: 1)
    test_pid = self()
    id = {__MODULE__, make_ref()}

    for event <- [[:dspex, :native_pool, :stream, :stop], [:dspex, :native_pool, :tool, :stop]] do
      :telemetry.attach(
        {id, event},
        event,
        fn event, measurements, metadata, _ ->
          if metadata.pool == pool, do: send(test_pid, {:event, event, measurements, metadata})
        end,
        nil
      )

      on_exit(fn -> :telemetry.detach({id, event}) end)
    end

    assert [{:chunk, 0}, {:chunk, 1}, {:done, "finished"}] =
             NativePool.execute_stream("watched", %{n: 2}, pool: pool) |> Enum.to_list()

    assert_receive {:event, [:dspex, :native_pool, :stream, :stop], %{chunks: 2, duration: d},
                    %{command: "watched", outcome: :done}}

    assert is_integer(d) and d > 0

    assert_receive {:event, [:dspex, :native_pool, :tool, :stop], %{duration: _},
                    %{tool: "progress", ok: true, worker_id: 0, request_id: _}}
  end
end
