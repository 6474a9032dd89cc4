defmodule DSPex.NativePool.EnvironmentTest do
  # What environment a worker starts with: the VM's as of the pool's start (as a Port's child
  # would get it), then the pool's defaults, then `:env`; or, with `inherit_env: false`, only
  # the last two.
  # Not async: it removes HOME from the VM's environment for a moment.
  use DSPex.NativePool.PoolCase, async: false

  alias DSPex.NativePool.Options

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

  test "the interpreter comes from config before DSPEX_PYTHON and the project's .venv" do
    Application.put_env(:dspex_native_pool, :python, "/nonexistent/config-python")

    try do
      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.start_link(name: unique_name())

      assert message =~ "/nonexistent/config-python"
      assert {_, "config :dspex_native_pool, :python"} = Options.default_python_and_source()
    after
      Application.delete_env(:dspex_native_pool, :python)
    end

    venv = Path.join(File.cwd!(), ".venv/bin/python")

    if File.exists?(venv) and System.get_env("DSPEX_PYTHON") == nil do
      assert {^venv, "the .venv in " <> _} = Options.default_python_and_source()
    end
  end
end
