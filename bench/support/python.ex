defmodule Bench.Python do
  @moduledoc """
  How every peer runs the bridge: the same interpreter, script, arguments and environment as
  `DSPex.NativePool` gives its workers, so the peers differ only in what sits between caller and
  pipe.
  """

  @root Path.expand("../..", __DIR__)

  def root, do: @root
  def script, do: Path.join(@root, "priv/python/dspex_worker.py")

  @doc "The directory of the benchmark's own handler modules."
  def handlers_dir, do: Path.join(@root, "bench/python")

  # `:dspy` imports DSPy at start-up (start-up benchmark); `:sleep` adds a `sleep` command that
  # keeps a worker busy (memory benchmark).
  defp handler_module(:dspy), do: "bench_dspy_handlers"
  defp handler_module(:sleep), do: "bench_handlers"

  @doc "The interpreter every peer runs: `DSPEX_PYTHON`, else bin/setup's venv, else python3."
  def executable do
    venv = Path.join(@root, ".venv/bin/python")

    python =
      System.get_env("DSPEX_PYTHON") ||
        if(File.exists?(venv), do: venv, else: "python3")

    System.find_executable(python) || python
  end

  @doc "The environment the pool gives its workers (its defaults, as its README lists them)."
  def worker_env(python_path \\ []) do
    [
      {"PYTHONUNBUFFERED", "1"},
      {"PYTHONDONTWRITEBYTECODE", "1"},
      {"OMP_NUM_THREADS", "1"},
      {"OPENBLAS_NUM_THREADS", "1"},
      {"MKL_NUM_THREADS", "1"},
      {"TOKENIZERS_PARALLELISM", "false"},
      {"PYTHONPATH", Enum.join(python_path, ":")}
    ]
  end

  @doc """
  A V2 worker's bridge, `%{python:, args:, env:}`; `handlers` is nil, `:dspy` or `:sleep`.

  `json: :stdlib` (the default) runs the bridge on Python's standard `json`, as DSPex V2's own
  bridge did: V2 had no JSON accelerator, so giving its peer this project's orjson path would
  credit V2 with work done here. `json: :orjson` gives it the accelerator too (reported beside
  the target, to show how much of the lead is the Python side).
  """
  def v2_bridge(pool_name, handlers \\ nil, opts \\ []) do
    {handler_args, path} =
      if handlers,
        do: {["--handlers", handler_module(handlers)], [handlers_dir()]},
        else: {[], []}

    %{
      python: executable(),
      args: [script(), "--pool", inspect(pool_name)] ++ handler_args,
      env: worker_env(path) ++ v2_json_env(Keyword.get(opts, :json, :stdlib))
    }
  end

  defp v2_json_env(:stdlib), do: [{"DSPEX_WORKER_JSON", "json"}]
  defp v2_json_env(:orjson), do: []

  @doc """
  Options for `DSPex.NativePool.start_link/1`, otherwise the defaults; `handlers` is nil, `:dspy`
  or `:sleep`; `extra` adds options.
  """
  def native_options(name, size, handlers \\ nil, extra \\ []) do
    base = [name: name, pool_size: size, python: executable()] ++ extra

    if handlers,
      do: base ++ [handlers: handler_module(handlers), python_path: [handlers_dir()]],
      else: base
  end

  @doc "One line of Python's output, or nil (versions for the machine section)."
  def eval(code) do
    case System.cmd(executable(), ["-c", code], stderr_to_stdout: true) do
      {out, 0} -> String.trim(out)
      _ -> nil
    end
  rescue
    _ -> nil
  end
end
