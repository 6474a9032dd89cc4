defmodule DSPex.NativePool.EnvironmentTest do
  # What environment a worker starts with: the VM's as of the pool's start (as a Port's child
  # would get it), then the pool's defaults, then `:env`; or, with `inherit_env: false`, only
  # the last two.
  # Not async: it removes HOME from the VM's environment for a moment.
  use DSPex.NativePool.PoolCase, async: false

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
end
