defmodule DSPex.NativePool.ValidationTest do
  use DSPex.NativePool.PoolCase, async: true

  setup do
    start_pool!()
  end

  # What the pool and the Python worker have seen so far: the requests the pool handed to its
  # worker, and the worker's own count of requests (init ping included) and calls per command.
  defp seen(pool) do
    stats = NativePool.stats(pool)
    {:ok, python} = NativePool.execute("get_stats", %{}, pool: pool)

    %{
      requests: stats.workers |> Enum.map(& &1.requests) |> Enum.sum(),
      python_requests: python["requests"],
      python_commands: python["commands"]
    }
  end

  # Deeply nested lists: `depth` list levels around an integer.
  defp nested_list(depth), do: Enum.reduce(1..depth, 1, fn _, acc -> [acc] end)

  defp invalid_args(pool, args) do
    assert {:error, {:validation_error, :invalid_args, message, context}} =
             NativePool.execute("echo", args, pool: pool)

    assert context == %{pool: pool, command: "echo", worker_id: nil}
    message
  end

  test "values JSON cannot carry are refused at the call, naming where they are", %{pool: pool} do
    [port | _] = Port.list()
    before = seen(pool)

    cases = [
      {%{a: %{b: [1, self()]}}, "args.a.b[1]: a pid cannot be encoded as JSON"},
      {%{ref: make_ref()}, "args.ref: a reference cannot be encoded"},
      {%{f: fn -> :ok end}, "args.f: a function cannot be encoded"},
      {%{port: port}, "args.port: a port cannot be encoded"},
      {%{t: {1, 2}}, "args.t: a tuple cannot be encoded as JSON (use a list or a map)"},
      {%{"when" => [DateTime.utc_now()]}, "args.when[0]: a %DateTime{} struct cannot be encoded"},
      {%{s: <<"ok", 255>>}, "args.s: a binary that is not valid UTF-8"},
      {%{bits: <<1::3>>}, "args.bits: a bitstring that is not a whole number of bytes"},
      {%{n: Integer.pow(2, 70)}, "args.n: an integer beyond 64 bits"},
      {%{n: Integer.pow(2, 64)}, "args.n: an integer beyond 64 bits"},
      {%{n: -Integer.pow(2, 63) - 1}, "args.n: an integer beyond 64 bits"},
      {%{l: [1, 2 | 3]}, "args.l: an improper list cannot be encoded"},
      {%{1 => "integer key"}, "args: map keys must be atoms or strings"},
      {%{<<255>> => 1}, "args: a map key that is not valid UTF-8"},
      {%{list: [%{}, %{x: [0, 1, {:bad}]}]}, "args.list[1].x[2]: a tuple"}
    ]

    for {args, expected} <- cases do
      message = invalid_args(pool, args)
      assert message =~ expected, "for #{inspect(args)}: #{message}"
    end

    # Nothing reached the pool or the worker: only the get_stats of seen/1 ran since.
    after_ = seen(pool)
    assert after_.requests == before.requests + 1
    assert after_.python_requests == before.python_requests + 1
    assert after_.python_commands == Map.update!(before.python_commands, "get_stats", &(&1 + 1))
    refute Map.has_key?(after_.python_commands, "echo")

    # The VM and the pool are fine.
    assert {:ok, %{"a" => 1}} = NativePool.execute("echo", %{a: 1}, pool: pool)
  end

  test "nesting deeper than the limit is refused without a stack overflow", %{pool: pool} do
    before = seen(pool)

    deep_maps = Enum.reduce(1..200, "bottom", fn _, acc -> %{a: acc} end)
    message = invalid_args(pool, %{top: deep_maps})
    assert message =~ "nested deeper than 128 levels"
    assert String.starts_with?(message, "args.top.a.a.a")

    message = invalid_args(pool, %{l: nested_list(100_000)})
    assert message =~ "nested deeper than 128 levels"
    assert String.starts_with?(message, "args.l[0][0][0]")

    assert seen(pool).python_requests == before.python_requests + 1
    assert {:ok, %{"a" => 1}} = NativePool.execute("echo", %{a: 1}, pool: pool)
  end

  test "the deepest value the encoder accepts also comes back", %{pool: pool} do
    [os_pid] = worker_os_pids(pool)

    # Going down from well past the limit, the first depth the encoder accepts is sent.
    {deepest, result} =
      Enum.find_value(140..100//-1, fn depth ->
        case NativePool.execute("echo", %{l: nested_list(depth)}, pool: pool) do
          {:error, {:validation_error, :invalid_args, _, _}} -> nil
          other -> {depth, other}
        end
      end)

    value = nested_list(deepest)

    assert result == {:ok, %{"l" => value}},
           "a value #{deepest} lists deep is accepted for sending but does not come back: " <>
             inspect(result, printable_limit: 300)

    assert worker_os_pids(pool) == [os_pid]
  end

  test "a key given both as an atom and as a string is refused, not silently merged",
       %{pool: pool} do
    assert {:error, {:validation_error, :invalid_args, message, _}} =
             NativePool.execute("echo", %{"a" => 1, :a => 2}, pool: pool)

    assert message =~ ~s(the key "a" appears both as an atom and as a string)

    assert {:ok, %{"a" => 1, "b" => 2}} =
             NativePool.execute("echo", %{"a" => 1, :b => 2}, pool: pool)
  end

  test "args must be a map or a keyword list", %{pool: pool} do
    before = seen(pool)

    for args <- ["text", 42, nil, [1, 2], [{"a", 1}], {:a, 1}, DateTime.utc_now(), self()] do
      message = invalid_args(pool, args)
      assert message =~ "args must be a map or a keyword list, got "
    end

    assert seen(pool).python_requests == before.python_requests + 1
  end

  test "the command must be a string or an atom", %{pool: pool} do
    for command <- [123, nil, ~c"echo", %{}] do
      assert {:error, {:validation_error, :invalid_command, message, _}} =
               NativePool.execute(command, %{}, pool: pool)

      assert message =~ "the command must be a UTF-8 string or an atom, got "
    end
  end

  test "an empty, non-UTF-8 or reserved command is refused before it is sent", %{pool: pool} do
    before = seen(pool)

    for {command, expected} <- [
          {"", "the command is an empty string"},
          {<<0xFF, 0xFE>>, "the command is a binary that is not valid UTF-8"},
          # The pool's cancel: as a request it would never be answered.
          {"__cancel__", ~s|"__cancel__" is the pool's own command|},
          {:__cancel__, ~s|"__cancel__" is the pool's own command|}
        ] do
      assert {:error, {:validation_error, :invalid_command, message, _}} =
               NativePool.execute(command, %{}, pool: pool)

      assert message =~ expected
    end

    # Only the get_stats of seen/1 itself.
    assert seen(pool).python_requests == before.python_requests + 1
  end

  test "a call's timeout must be a non-negative integer or :infinity", %{pool: pool} do
    for timeout <- [-1, 1.5, :soon] do
      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.execute("ping", %{}, pool: pool, timeout: timeout)

      assert message =~ "expected :infinity or an integer from 0 to 4294967295 (ms)"
    end

    assert {:ok, _} = NativePool.execute("ping", %{}, pool: pool, timeout: :infinity)
  end

  test "an unknown call option is named with the options that call accepts", %{pool: pool} do
    before = seen(pool)

    assert {:error, {:validation_error, :invalid_options, message, _}} =
             NativePool.execute("ping", %{}, pool: pool, node: node())

    assert message ==
             "unknown option :node; known: [:pool, :timeout, :tools] " <>
               "(:node is for pools started with cluster: true)"

    error =
      assert_raise NativePool.Error, fn ->
        NativePool.execute_stream("echo", %{}, pool: pool, windw: 2) |> Enum.to_list()
      end

    assert error.message =~
             "unknown option :windw; known: [:pool, :timeout, :tools, :stream_window, :session]"

    error =
      assert_raise NativePool.Error, fn ->
        NativePool.execute_stream("echo", %{}, pool: pool, stream_window: 0) |> Enum.to_list()
      end

    assert error.message =~ "invalid :stream_window: expected an integer from 1 to 65536, got 0"
    assert seen(pool).requests == before.requests + 1
  end
end
