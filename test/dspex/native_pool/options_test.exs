defmodule DSPex.NativePool.OptionsTest do
  use DSPex.NativePool.PoolCase, async: true

  # Invalid options fail start_link/1 before any process or worker exists.
  defp invalid(opts) do
    name = Keyword.get(opts, :name)

    assert {:error, {:validation_error, :invalid_options, message, context}} =
             NativePool.start_link(opts)

    assert is_binary(message)
    assert context.pool == name
    if is_atom(name) and name != nil, do: assert(Process.whereis(name) == nil)
    message
  end

  test "an unknown option is named, with the known ones listed" do
    message = invalid(name: unique_name(), pool_sise: 2)
    assert message =~ "unknown options [:pool_sise]"
    assert message =~ ":pool_size"
  end

  test "an option given twice is refused, not silently taken from its first" do
    name = unique_name()
    message = invalid(name: name, pool_size: 1, pool_size: 4)
    assert message == "options given more than once: [:pool_size]; give each once"
  end

  test "options must be a keyword list" do
    assert invalid([{"name", :x}]) =~ "keyword list"
    assert invalid(name: unique_name(), pool_size: 1, extra: 1) =~ "[:extra]"
  end

  test "pool_size must be an integer from 1 to 1024" do
    for bad <- [0, -1, 1025, 1.5, "2", :two] do
      message = invalid(name: unique_name(), pool_size: bad)
      assert message =~ "invalid :pool_size"
      assert message =~ "expected an integer from 1 to 1024, got "
    end
  end

  test "a Python executable that does not exist is reported, with how to fix it" do
    message = invalid(name: unique_name(), python: "/nonexistent/python3")
    assert message =~ "invalid :python"
    assert message =~ ~s("/nonexistent/python3" was not found)
    assert message =~ "bin/setup"

    # A file that exists but cannot be run is not "not found".
    plain = Path.join(System.tmp_dir!(), "np_not_python_#{System.unique_integer([:positive])}")
    File.write!(plain, "")
    File.chmod!(plain, 0o644)
    on_exit(fn -> File.rm(plain) end)
    assert invalid(name: unique_name(), python: plain) =~ "is not executable"
    assert invalid(name: unique_name(), python: "/tmp") =~ "is a directory"
    assert invalid(name: unique_name(), python: "no-such-python-here") =~ "not found on PATH"
  end

  test "other options are checked too" do
    assert invalid(name: unique_name(), handlers: "not-a-module") =~
             ~s("not-a-module" is not a Python module name)

    assert invalid(name: unique_name(), python_path: "/tmp") =~ "invalid :python_path"

    # A NUL byte would only fail later, when the worker is spawned.
    for bad <- [
          [python_path: ["/tmp\0x"]],
          [python_path: [""]],
          [cwd: "/tmp\0x"],
          [python: "py\0"]
        ] do
      assert invalid([name: unique_name()] ++ bad) =~ "without NUL bytes"
    end

    assert invalid(name: unique_name(), env: %{"A" => 1}) =~
             ~s(invalid :env: the value of "A" must be a string, got an integer)

    assert invalid(name: unique_name(), env: %{"A" => "x\0y"}) =~ "without NUL bytes"
    assert invalid(name: unique_name(), env: %{"A=B" => "1"}) =~ ~s(without "=", got "A=B")
    assert invalid(name: unique_name(), startup_timeout: 0) =~ "invalid :startup_timeout"
    assert invalid(name: unique_name(), max_frame: -1) =~ "invalid :max_frame"
    assert invalid(name: unique_name(), kill_on_timeout: :yes) =~ "invalid :kill_on_timeout"
    assert invalid(name: unique_name(), pin_cpus: 1) =~ "invalid :pin_cpus"
    assert invalid(name: unique_name(), busy_wait_us: -1) =~ "invalid :busy_wait_us"
    assert invalid(name: "not an atom") =~ "invalid :name"
  end

  test "preload takes :auto, false or Python module names, and nothing else" do
    assert invalid(name: unique_name(), preload: "dspy") =~
             "expected :auto, false or a list of Python module names"

    assert invalid(name: unique_name(), preload: true) =~ "invalid :preload"

    assert invalid(name: unique_name(), preload: ["dspy", "os; rm -rf /"]) =~
             ~s("os; rm -rf /" is not a Python module name)

    assert invalid(name: unique_name(), preload: [nil]) =~ "got nil in the list"

    assert invalid(name: unique_name(), preload: [42]) =~
             "expected a Python module name, got an integer"
  end

  test "a valid :env reaches the workers" do
    source = ~S'''
    import os


    def getenv(args):
        return os.environ.get(args["key"])
    '''

    %{pool: pool} = start_pool!(handlers_source: source, env: %{"NP_TEST_VALUE" => "from elixir"})

    assert {:ok, "from elixir"} =
             NativePool.execute("getenv", %{key: "NP_TEST_VALUE"}, pool: pool)
  end

  test "calls are answered with the busy wait off, and with replies slower than it" do
    source = ~S'''
    import time


    def nap(args):
        time.sleep(args["s"])
        return "rested"
    '''

    for busy_wait_us <- [0, 50] do
      %{pool: pool} = start_pool!(handlers_source: source, busy_wait_us: busy_wait_us)
      assert {:ok, %{"n" => 1}} = NativePool.execute("echo", %{n: 1}, pool: pool)
      assert {:ok, "rested"} = NativePool.execute("nap", %{s: 0.01}, pool: pool)
    end
  end

  test "every option's range is checked at start, naming the bound" do
    huge = 2 ** 64

    for {key, value, bound} <-
          [
            session_ttl: {huge, "from 1 to 4294967295"},
            shutdown_timeout: {huge, "from 0 to 4294967295"},
            startup_timeout: {huge, "from 1 to 4294967295"},
            max_frame: {2 ** 40, "from 4096 to 4294967295"},
            max_frame: {10, "from 4096 to 4294967295"},
            health_interval: {0, "from 100 to 4294967295"},
            busy_wait_us: {huge, "from 0 to 1000000"},
            max_queue: {huge, "from 1 to 10000000"}
          ]
          |> Enum.map(fn {k, {v, b}} -> {k, v, b} end) do
      message = invalid([{:name, unique_name()}, {key, value}])
      assert message =~ "invalid #{inspect(key)}", message
      assert message =~ bound, message
    end
  end
end
