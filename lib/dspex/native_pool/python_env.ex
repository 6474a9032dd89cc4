defmodule DSPex.NativePool.PythonEnv do
  @moduledoc false
  # Which Python a pool runs, decided when the pool starts (never from a path fixed when the
  # library compiled), and the application root that relative paths are resolved against.
  #
  # The environment made by `mix dspex_native_pool.setup` is reached through
  # `priv/python_env` of this library's build directory: a link to it while the application
  # is built (the compiler in mix.exs and the setup task make it), and a copy of it inside a
  # release, since `mix release` copies what the link points to.

  # Written by the setup task into the environments it makes (the digest of what it installed).
  @marker ".dspex_native_pool_requirements"

  @doc false
  def marker, do: @marker

  @doc false
  # The interpreter a pool without a `:python` option runs.
  @spec python() :: String.t()
  def python, do: elem(default(), 0)

  @doc false
  # `{python, why}`: `config :dspex_native_pool, python: ...`, else `DSPEX_PYTHON`, else the
  # environment made by the setup task, else `python3` on PATH.
  @spec default() :: {String.t(), String.t()}
  def default do
    env = Path.join(env_dir(), "bin/python")

    cond do
      python = Application.get_env(:dspex_native_pool, :python) ->
        {python, "config :dspex_native_pool, :python"}

      python = System.get_env("DSPEX_PYTHON") ->
        {python, "DSPEX_PYTHON"}

      File.exists?(env) ->
        {env, describe_env()}

      true ->
        {"python3",
         "python3 on PATH: no environment made by mix dspex_native_pool.setup was found; run that task"}
    end
  end

  defp env_dir, do: Path.join(:code.priv_dir(:dspex_native_pool), "python_env")

  defp describe_env do
    case File.read_link(env_dir()) do
      {:ok, target} -> "the environment made by mix dspex_native_pool.setup in #{target}"
      {:error, _} -> "the environment bundled in the release at #{env_dir()}"
    end
  end

  @doc false
  # Whether `python` runs in an environment made by the setup task, which installs DSPy.
  @spec made_by_setup?(String.t()) :: boolean
  def made_by_setup?(python) do
    python |> Path.dirname() |> Path.dirname() |> Path.join(@marker) |> File.exists?()
  end

  @doc false
  # The host application's root: the Mix project's directory while Mix runs the application,
  # else the release's root, else (a plain `elixir` script) the working directory. Relative
  # `:python_path` entries and `:cwd` are resolved against it.
  @spec app_root() :: String.t()
  def app_root, do: mix_root() || System.get_env("RELEASE_ROOT") || File.cwd!()

  # Mix's modules may be on the code path of a VM where Mix is not running (a child VM).
  defp mix_root do
    if Code.ensure_loaded?(Mix.Project) and Process.whereis(Mix.ProjectStack) != nil and
         Mix.Project.get() != nil do
      Path.dirname(Mix.Project.project_file())
    end
  end

  @doc false
  # Checks that `python` can find the `dspy` package, without importing it (that takes about
  # a second). A success is remembered for the life of the VM.
  # The check is bounded by `within_ms` (the pool's startup timeout): an interpreter that
  # hangs fails it.
  @spec check_dspy(String.t(), String.t(), pos_integer) :: :ok | {:error, String.t()}
  def check_dspy(python, source, within_ms) do
    key = {__MODULE__, :has_dspy, python}

    if :persistent_term.get(key, false) do
      :ok
    else
      code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dspy') is None)"
      seconds = Float.to_string(max(within_ms, 1_000) / 1_000)
      {command, args} = bounded(python, ["-c", code], seconds)

      case System.cmd(command, args, stderr_to_stdout: true, env: [{"PYTHONPATH", nil}]) do
        {_, 0} ->
          :persistent_term.put(key, true)
          :ok

        {_, 124} ->
          {:error, "#{python} (#{source}) did not answer a DSPy check within #{seconds} s"}

        {output, status} ->
          {:error, missing_dspy(python, source, status, output)}
      end
    end
  end

  defp bounded(command, args, seconds) do
    case System.find_executable("timeout") do
      nil -> {command, args}
      timeout -> {timeout, ["--kill-after=1", seconds, command | args]}
    end
  end

  defp missing_dspy(python, source, status, output) do
    said = if status == 1 and output == "", do: "", else: " (exit status #{status}: #{output})"

    "#{python} (#{source}) cannot find the dspy package#{said}, and this pool expects DSPy " <>
      "(:require_dspy). Run `mix dspex_native_pool.setup` in the application. In a release: " <>
      "build the release after that task, so the environment is copied into it, or set " <>
      "DSPEX_PYTHON or `config :dspex_native_pool, python: ...` in config/runtime.exs to an " <>
      "interpreter that has DSPy. Pass `require_dspy: false` to run without DSPy."
  end
end
