# The suite runs real Python workers with real DSPy: without the environment `bin/setup` makes
# (or an interpreter named by DSPEX_PYTHON or config), nearly every test would fail alike.
case DSPex.NativePool.PythonEnv.default() do
  {_python, "python3 on PATH" <> _ = why} ->
    IO.puts(:stderr, """
    The tests need the Python environment with DSPy that bin/setup makes (.venv):
    run bin/setup (or mix dspex_native_pool.setup) first.
    Without it, workers would run #{why}.
    """)

    System.halt(1)

  _found ->
    :ok
end

ExUnit.start(capture_log: true)
