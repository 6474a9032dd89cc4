defmodule DSPex.NativePool.ExecuteTest do
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.Error

  setup do
    start_pool!(handlers_source: :standard)
  end

  describe "built-in commands" do
    test "ping reports the worker's id, OS pid and uptime", %{pool: pool} do
      [os_pid] = worker_os_pids(pool)

      assert {:ok, %{"status" => "ok", "worker_id" => "0", "pid" => ^os_pid, "uptime" => uptime}} =
               NativePool.execute("ping", %{}, pool: pool)

      assert is_float(uptime) and uptime > 0
    end

    test "echo returns nested maps, lists, unicode, numbers, nil and booleans", %{pool: pool} do
      args = %{
        :nested => %{
          "list" => [1, -2, 2.5, "ü€😀", nil, true, false, [], %{}],
          :deeper => %{a: %{b: %{c: [%{d: [[1], [2, [3]]]}]}}}
        },
        "string key" => "value",
        "ключ" => "значение",
        :floats => [0.1, -0.5, 1.0, 1.0e300, 2.5e-300, -0.0],
        :integers => [0, -1, 9_223_372_036_854_775_807, -9_223_372_036_854_775_808],
        :u64_max => 18_446_744_073_709_551_615,
        :text => "line\nbreak \"quoted\" \\ tab\t nul\u0000 end",
        :empty => ""
      }

      assert {:ok, result} = NativePool.execute("echo", args, pool: pool)
      assert result == jsonish(args)
      # Floats stay floats, integers stay integers.
      assert result["floats"] |> Enum.all?(&is_float/1)
      assert result["integers"] |> Enum.all?(&is_integer/1)
    end

    test "atoms are sent as strings and keys come back as strings", %{pool: pool} do
      assert {:ok, %{"status" => "active", "list" => ["a", "b", nil, true, false]}} =
               NativePool.execute("echo", %{status: :active, list: [:a, :b, nil, true, false]},
                 pool: pool
               )

      assert {:ok, %{"Elixir.Some.Module" => "Elixir.Other"}} =
               NativePool.execute("echo", %{Some.Module => Other}, pool: pool)
    end

    test "atoms beyond Latin-1, as keys and as values, are sent as UTF-8 strings", %{
      pool: pool
    } do
      assert {:ok, %{"ключ" => "значение", "emoji" => "😀"}} =
               NativePool.execute("echo", %{ключ: :значение, emoji: :"😀"}, pool: pool)
    end

    test "keyword-list args are sent as an object", %{pool: pool} do
      assert {:ok, %{"a" => 1, "b" => "two", "c" => [3]}} =
               NativePool.execute("echo", [a: 1, b: "two", c: [3]], pool: pool)

      assert {:ok, %{}} = NativePool.execute("echo", [], pool: pool)
    end

    test "command names may be atoms", %{pool: pool} do
      assert {:ok, %{"status" => "ok"}} = NativePool.execute(:ping, %{}, pool: pool)
      assert {:ok, %{"x" => 1}} = NativePool.execute(:echo, %{x: 1}, pool: pool)
    end

    test "get_stats counts the worker's requests by command", %{pool: pool} do
      {:ok, _} = NativePool.execute("echo", %{}, pool: pool)
      {:ok, _} = NativePool.execute("echo", %{}, pool: pool)

      assert {:ok, %{"worker_id" => "0", "commands" => %{"echo" => 2, "get_stats" => 1}}} =
               NativePool.execute("get_stats", %{}, pool: pool)
    end

    test "a 5 MB string goes to Python and back intact", %{pool: pool} do
      data = 3_750_000 |> :crypto.strong_rand_bytes() |> Base.encode64()
      assert byte_size(data) == 5_000_000
      assert {:ok, %{"data" => ^data}} = NativePool.execute("echo", %{data: data}, pool: pool)
    end
  end

  describe "handler commands" do
    test "results of every JSON type come back as Elixir terms", %{pool: pool} do
      expected = %{
        "null" => nil,
        "true" => true,
        "false" => false,
        "int" => 42,
        "negative" => -7,
        "u64" => 18_446_744_073_709_551_615,
        "float" => 2.5,
        "string" => "héllo ✓ 😀",
        "empty_string" => "",
        "list" => [1, "a", nil, [2.5]],
        "empty_list" => [],
        "tuple" => [1, 2],
        "dict" => %{"a" => %{"b" => [1, %{"c" => nil}]}},
        "empty_dict" => %{},
        "int_keys" => %{"1" => "one", "2" => "two"}
      }

      for {kind, value} <- expected do
        assert {:ok, result} = NativePool.execute("value", %{kind: kind}, pool: pool)
        assert result === value, "#{kind}: got #{inspect(result)}"
      end
    end

    test "64-bit integers come back exact; beyond 64 bits is an error, never a rounded float",
         %{pool: pool} do
      assert {:ok, [max, min]} = NativePool.execute("edge_ints", %{}, pool: pool)
      assert max === Integer.pow(2, 64) - 1
      assert min === -Integer.pow(2, 63)

      assert {:error, {:system_error, :unserializable_result, message, %{worker_id: _}}} =
               NativePool.execute("big_ints", %{}, pool: pool)

      assert message =~ "beyond 64 bits"
      # The worker stays in service.
      assert {:ok, [_, _]} = NativePool.execute("edge_ints", %{}, pool: pool)
    end

    test "a 5 MB result comes back", %{pool: pool} do
      assert {:ok, result} = NativePool.execute("big", %{n: 5_000_000}, pool: pool)
      assert byte_size(result) == 5_000_000
      assert result == String.duplicate("x", 5_000_000)
    end

    test "the worker sees its arguments as sent", %{pool: pool} do
      [os_pid] = worker_os_pids(pool)

      assert {:ok, %{"pid" => ^os_pid, "args" => %{"a" => [1, %{"b" => "c"}]}}} =
               NativePool.execute("whoami", %{a: [1, %{b: "c"}]}, pool: pool)
    end
  end

  describe "execute!/3" do
    test "returns the bare result", %{pool: pool} do
      assert %{"a" => 1} = NativePool.execute!("echo", %{a: 1}, pool: pool)
    end

    test "raises DSPex.NativePool.Error carrying the error's fields", %{pool: pool} do
      error =
        assert_raise Error, fn -> NativePool.execute!("no_such_command", %{}, pool: pool) end

      assert %Error{category: :validation_error, type: :unknown_command, context: context} = error
      assert %{pool: ^pool, command: "no_such_command", worker_id: 0} = context
      assert Exception.message(error) =~ "validation_error/unknown_command: unknown command"
      assert Exception.message(error) =~ "pool: #{inspect(pool)}"

      error = assert_raise Error, fn -> NativePool.execute!("boom", %{}, pool: pool) end
      assert %Error{category: :system_error, type: :python_exception} = error
      assert error.context.python_type == "ValueError"
      assert Exception.message(error) =~ "ValueError: it went boom"
    end

    test "raises for calls refused before sending too", %{pool: pool} do
      assert %Error{category: :validation_error, type: :invalid_args} =
               assert_raise(Error, fn -> NativePool.execute!("echo", %{a: self()}, pool: pool) end)

      assert %Error{category: :resource_error, type: :pool_not_found} =
               assert_raise(Error, fn -> NativePool.execute!("ping", %{}, pool: unique_name()) end)
    end

    test "a pool given by its pid is not found, and the message says to use its name", %{
      pid: pid
    } do
      assert {:error, {:resource_error, :pool_not_found, message, _}} =
               NativePool.execute("ping", %{}, pool: pid)

      assert message ==
               "pools are called by name, not by pid: pass pool: with the :name it was started with"
    end
  end

  describe "errors raised in Python" do
    test "an exception becomes a :python_exception with type, traceback and where", %{
      pool: pool
    } do
      assert {:error, {:system_error, :python_exception, message, context}} =
               NativePool.execute("boom", %{text: "sideways"}, pool: pool)

      assert message == "ValueError: it went sideways"

      assert %{
               pool: ^pool,
               command: "boom",
               worker_id: 0,
               python_type: "ValueError",
               traceback: traceback
             } = context

      # The traceback runs through the handler and its helper, down to the raise.
      assert traceback =~ "in boom"
      assert traceback =~ "in _explode"
      assert traceback =~ ~S|raise ValueError("it went " + text)|
      assert traceback =~ "ValueError: it went sideways"
      # The worker's own dispatch frames are left out.
      refute traceback =~ "dspex_bridge"
    end

    test "a custom exception class is named with its module", %{pool: pool, pid: _} do
      assert {:error, {:system_error, :python_exception, message, context}} =
               NativePool.execute("custom_error", %{n: 7}, pool: pool)

      assert context.python_type =~ ~r/^np_handlers_\d+\.CustomError$/
      assert message == "#{context.python_type}: custom failure 7"
    end

    test "an exception raised without a message is named by its type alone", %{pool: pool} do
      assert {:error, {:system_error, :python_exception, "KeyError", %{python_type: "KeyError"}}} =
               NativePool.execute("bare_error", %{}, pool: pool)
    end

    test "a handler that refuses its arguments with InvalidArguments gives :invalid_args", %{
      pool: pool
    } do
      assert {:error, {:validation_error, :invalid_args, message, context}} =
               NativePool.execute("needs_n", %{n: "one"}, pool: pool)

      assert message == ~s(needs_n needs "n", an integer)
      assert context.python_type == "dspex_bridge.errors.InvalidArguments"
      assert context.traceback =~ "raise InvalidArguments"
      assert {:ok, 1} = NativePool.execute("needs_n", %{n: 1}, pool: pool)
    end

    test "the worker survives the exception and keeps serving", %{pool: pool} do
      [os_pid] = worker_os_pids(pool)

      assert {:error, {:system_error, :python_exception, _, _}} =
               NativePool.execute("boom", %{}, pool: pool)

      assert {:ok, %{"pid" => ^os_pid}} = NativePool.execute("ping", %{}, pool: pool)
    end

    test "an unknown command is a :validation_error listing the available ones", %{pool: pool} do
      assert {:error, {:validation_error, :unknown_command, message, context}} =
               NativePool.execute("no_such_command", %{}, pool: pool)

      assert message =~ "unknown command 'no_such_command'"
      # Built-ins and the handler module's public functions; private helpers are not commands.
      assert message =~ "echo"
      assert message =~ "whoami"
      refute message =~ "_explode"
      assert %{pool: ^pool, command: "no_such_command", worker_id: 0} = context

      assert {:error, {:validation_error, :unknown_command, _, _}} =
               NativePool.execute("_explode", %{}, pool: pool)
    end

    test "a result JSON cannot carry is :unserializable_result", %{pool: pool} do
      assert {:error, {:system_error, :unserializable_result, message, context}} =
               NativePool.execute("returns_set", %{}, pool: pool)

      assert message =~ "returns_set"
      assert message =~ "set"
      assert %{pool: ^pool, command: "returns_set", worker_id: 0} = context

      assert {:error, {:system_error, :unserializable_result, message, _}} =
               NativePool.execute("returns_nan", %{}, pool: pool)

      assert message =~ "returns_nan"
      assert {:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: pool)
    end
  end

  describe "frame limits" do
    test "a request over :max_frame is refused before sending; a reply over it is an error" do
      %{pool: pool} = start_pool!(handlers_source: :standard, max_frame: 4_096)

      assert {:error, {:validation_error, :request_too_large, message, _}} =
               NativePool.execute("echo", %{s: String.duplicate("a", 5_000)}, pool: pool)

      assert message =~ "max_frame of 4096"

      [os_pid] = worker_os_pids(pool)

      assert {:error, {:resource_error, :reply_too_large, message, %{command: "big"}}} =
               NativePool.execute("big", %{n: 5_000}, pool: pool)

      assert message =~ "4096"

      # Neither cost the worker its life.
      assert {:ok, %{"pid" => ^os_pid}} = NativePool.execute("ping", %{}, pool: pool)
      assert {:ok, %{"commands" => commands}} = NativePool.execute("get_stats", %{}, pool: pool)
      refute Map.has_key?(commands, "echo")
    end
  end
end
