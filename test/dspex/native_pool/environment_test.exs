defmodule DSPex.NativePool.EnvironmentTest do
  # What environment a worker starts with: the VM's as of the pool's start (as a Port's child
  # would get it), then the pool's defaults, then `:env`; or, with `inherit_env: false`, only
  # the last two.
  # Not async: it removes HOME from the VM's environment for a moment.
  use DSPex.NativePool.PoolCase, async: false

  alias DSPex.NativePool.PythonEnv

  @handlers ~S'''
  import os

  def getenv(args):
      return {name: os.environ.get(name) for name in args["names"]}
  '''

  defp worker_env(opts, names) do
    %{pool: pool} = start_pool!([handlers_source: @handlers] ++ opts)
    {:ok, env} = NativePool.execute("getenv", %{names: names}, pool: pool)
    env
  end

  test "System.put_env/2 and System.delete_env/1 before the start reach the workers" do
    set = "DSPEX_TEST_SET_#{System.unique_integer([:positive])}"
    deleted = "HOME"
    home = System.get_env(deleted)
    System.put_env(set, "from runtime.exs")
    System.delete_env(deleted)

    try do
      assert %{^set => "from runtime.exs", ^deleted => nil} = worker_env([], [set, deleted])
    after
      System.delete_env(set)
      if home, do: System.put_env(deleted, home)
    end
  end

  test ":env wins over the inherited environment, and inherit_env: false starts clean" do
    name = "DSPEX_TEST_ENV_#{System.unique_integer([:positive])}"
    System.put_env(name, "inherited")

    try do
      assert %{^name => "mine"} = worker_env([env: %{name => "mine"}], [name])

      assert %{^name => nil, "PATH" => nil, "OMP_NUM_THREADS" => "1", "ONLY" => "this"} =
               worker_env([inherit_env: false, env: [ONLY: "this"]], [
                 name,
                 "PATH",
                 "OMP_NUM_THREADS",
                 "ONLY"
               ])
    after
      System.delete_env(name)
    end
  end

  test "the interpreter comes from config before DSPEX_PYTHON and the setup task's environment" do
    Application.put_env(:dspex_native_pool, :python, "/nonexistent/config-python")

    try do
      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.start_link(name: unique_name())

      assert message =~ "/nonexistent/config-python"
      assert {_, "config :dspex_native_pool, :python"} = PythonEnv.default()
    after
      Application.delete_env(:dspex_native_pool, :python)
    end

    # bin/setup made .venv; the library's compiler linked its build to it.
    env = Path.join(:code.priv_dir(:dspex_native_pool), "python_env/bin/python")

    if System.get_env("DSPEX_PYTHON") == nil do
      assert {^env, "the environment made by mix dspex_native_pool.setup in " <> dir} =
               PythonEnv.default()

      assert dir == Path.expand(".venv")
      assert PythonEnv.made_by_setup?(env)
    end
  end

  describe "require_dspy" do
    # An interpreter that cannot see any site-packages, so it has no dspy whatever is installed.
    # A pool that fails to start exits, and its caller is linked to it.
    setup do
      Process.flag(:trap_exit, true)
      dir = Path.join(System.tmp_dir!(), "dspex_no_dspy_#{System.unique_integer([:positive])}")
      File.mkdir_p!(Path.join(dir, "bin"))
      python = Path.join(dir, "bin/python")
      File.write!(python, "#!/bin/sh\nexec #{System.find_executable("python3")} -S \"$@\"\n")
      File.chmod!(python, 0o755)
      on_exit(fn -> File.rm_rf!(dir) end)
      %{dir: dir, python: python}
    end

    test "true: a Python without dspy does not start, and the error says how to fix it",
         %{python: python} do
      assert {:error, {:resource_error, :dspy_missing, message, %{python: ^python}}} =
               NativePool.start_link(name: unique_name(), python: python, require_dspy: true)

      assert message =~ python
      assert message =~ "the :python option"
      assert message =~ "mix dspex_native_pool.setup"
      assert message =~ "DSPEX_PYTHON"
    end

    test "an interpreter that hangs fails the check within the startup timeout", %{dir: dir} do
      hangs = Path.join(dir, "bin/hangs")
      File.write!(hangs, "#!/bin/sh\nexec sleep 30\n")
      File.chmod!(hangs, 0o755)
      started = System.monotonic_time(:millisecond)

      assert {:error, {:resource_error, :dspy_missing, message, _}} =
               NativePool.start_link(
                 name: unique_name(),
                 python: hangs,
                 require_dspy: true,
                 startup_timeout: 1_000
               )

      assert message =~ "did not answer a DSPy check within 1.0 s"
      assert System.monotonic_time(:millisecond) - started < 5_000
    end

    test ":auto requires dspy only in an environment made by the setup task",
         %{dir: dir, python: python} do
      assert {:ok, _} = start_supervised({NativePool, name: unique_name(), python: python})

      File.write!(Path.join(dir, PythonEnv.marker()), "digest")

      assert {:error, {:resource_error, :dspy_missing, _, _}} =
               NativePool.start_link(name: unique_name(), python: python)

      assert {:ok, _} =
               start_supervised(
                 {NativePool, name: unique_name(), python: python, require_dspy: false},
                 id: :no_dspy
               )
    end
  end

  describe "paths" do
    @describe_handlers ~S'''
    import os, sys

    def where(args):
        return {"cwd": os.getcwd(), "path": sys.path}
    '''

    test "relative :python_path and :cwd are taken from the application's root" do
      root = PythonEnv.app_root()
      assert root == File.cwd!()
      dir = Path.join(System.tmp_dir!(), "dspex_paths_#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      File.write!(Path.join(dir, "where_handlers.py"), @describe_handlers)
      # `dir` as seen from the root: up to "/", then down.
      relative = String.duplicate("../", length(Path.split(root)) - 1) <> Path.relative(dir)

      %{pool: pool} = start_pool!(handlers: "where_handlers", python_path: [relative], cwd: "lib")

      assert {:ok, %{"cwd" => cwd, "path" => path}} = NativePool.execute("where", %{}, pool: pool)
      assert cwd == Path.join(root, "lib")
      assert dir in path
    end

    test ":cwd must be a directory" do
      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.start_link(name: unique_name(), cwd: "no/such/dir")

      assert message =~ "invalid :cwd"
      assert message =~ "is not a directory"
    end
  end
end
