defmodule DSPex.NativePool.Options.Types do
  @moduledoc false
  # What each type of the options schema (`DSPex.NativePool.Options`) accepts, and the message
  # for a value it refuses. Every message names the type or bound that was missed, never the
  # value given: `:env` may carry secrets.

  import DSPex.NativePool.Options, only: [describe: 1]

  alias DSPex.NativePool.Options.Env
  alias DSPex.NativePool.PythonEnv

  @doc false
  # `{:ok, value}` (normalized) or `{:error, message}`.
  @spec check(term, term) :: {:ok, term} | {:error, String.t()}
  def check({:integer, min, max}, n) when is_integer(n) and n >= min and n <= max, do: {:ok, n}

  def check({:integer, min, max}, n) when is_integer(n),
    do: {:error, "expected an integer from #{min} to #{max}, got #{n}"}

  def check({:integer, min, max}, other),
    do: {:error, "expected an integer from #{min} to #{max}, got #{describe(other)}"}

  def check(:pool_size, nil), do: {:ok, System.schedulers_online()}
  def check(:pool_size, n), do: check({:integer, 1, 1024}, n)

  def check({:integer_or_nil, _min, _max}, nil), do: {:ok, nil}
  def check({:integer_or_nil, min, max}, n), do: check({:integer, min, max}, n)

  def check(:boolean, bool) when is_boolean(bool), do: {:ok, bool}
  def check(:boolean, other), do: {:error, "expected true or false, got #{describe(other)}"}

  def check(:name, name) when is_atom(name) and name not in [nil, true, false], do: {:ok, name}
  def check(:name, other), do: {:error, "expected an atom, got #{describe(other)}"}

  def check(:python, nil), do: find_python(elem(PythonEnv.default(), 0))

  def check(:python, python) when is_binary(python) and python != "" do
    if path_text?(python),
      do: find_python(python),
      else: {:error, "expected a path (a UTF-8 string without NUL bytes)"}
  end

  def check(:python, other), do: {:error, "expected a path, got #{describe(other)}"}

  def check(:python_module, nil), do: {:ok, nil}
  def check(:python_module, mod) when is_atom(mod), do: python_module(Atom.to_string(mod))
  def check(:python_module, mod) when is_binary(mod), do: python_module(mod)

  def check(:python_module, other),
    do: {:error, "expected a Python module name, got #{describe(other)}"}

  def check(:paths, paths) when is_list(paths) do
    if Enum.all?(paths, &(is_binary(&1) and &1 != "" and path_text?(&1))),
      do: {:ok, Enum.map(paths, &Path.expand(&1, PythonEnv.app_root()))},
      else:
        {:error, "expected a list of directory paths (non-empty UTF-8 strings without NUL bytes)"}
  end

  def check(:paths, other),
    do: {:error, "expected a list of directories, got #{describe(other)}"}

  def check(:dir, nil), do: {:ok, nil}

  def check(:dir, dir) when is_binary(dir) and dir != "" do
    path = if path_text?(dir), do: Path.expand(dir, PythonEnv.app_root())

    cond do
      path == nil -> {:error, "expected a path (a UTF-8 string without NUL bytes)"}
      File.dir?(path) -> {:ok, path}
      true -> {:error, "#{inspect(path)} is not a directory"}
    end
  end

  def check(:dir, other), do: {:error, "expected a directory path, got #{describe(other)}"}

  def check(:path, nil), do: {:ok, nil}

  def check(:path, path) when is_binary(path) and path != "" do
    if path_text?(path),
      do: {:ok, Path.expand(path, PythonEnv.app_root())},
      else: {:error, "expected a path (a UTF-8 string without NUL bytes)"}
  end

  def check(:path, other), do: {:error, "expected a path, got #{describe(other)}"}

  def check(:tools, tools), do: DSPex.NativePool.Tools.validate(tools)

  def check(:require_dspy, value) when value in [:auto, true, false], do: {:ok, value}

  def check(:require_dspy, other),
    do: {:error, "expected :auto, true or false, got #{describe(other)}"}

  def check(:preload, value) when value in [:auto, false], do: {:ok, value}

  def check(:preload, modules) when is_list(modules) do
    each_ok(modules, fn
      nil -> {:error, "expected Python module names, got nil in the list"}
      mod -> check(:python_module, mod)
    end)
  end

  def check(:preload, other),
    do: {:error, "expected :auto, false or a list of Python module names, got #{describe(other)}"}

  # Checked whatever the caller wrapped, kept wrapped (see `DSPex.NativePool.Options.Env`).
  def check(:env, %Env{pairs: pairs}), do: check(:env, pairs)

  def check(:env, env) when is_map(env) and not is_struct(env),
    do: check(:env, Map.to_list(env))

  def check(:env, env) when is_list(env) do
    env
    |> each_ok(fn
      {key, value} -> env_pair(key, value)
      _other -> {:error, "expected a map or keyword list of variable names to strings"}
    end)
    |> case do
      {:ok, pairs} -> {:ok, %Env{pairs: pairs}}
      error -> error
    end
  end

  def check(:env, other),
    do: {:error, "expected a map of variable names to strings, got #{describe(other)}"}

  @doc false
  # Checks each element with `fun`: the values it returned, in order, or its first error.
  def each_ok(list, fun) do
    list
    |> Enum.reduce_while({:ok, []}, fn item, {:ok, acc} ->
      case fun.(item) do
        {:ok, value} -> {:cont, {:ok, [value | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, values} -> {:ok, Enum.reverse(values)}
      error -> error
    end
  end

  defp env_pair(key, value) do
    name = if is_atom(key) and not is_nil(key), do: Atom.to_string(key), else: key

    cond do
      not (is_binary(name) and name != "" and String.valid?(name) and
               not String.contains?(name, ["=", <<0>>])) ->
        {:error, "a variable name must be a non-empty string without \"=\", got #{env_name(key)}"}

      not is_binary(value) ->
        {:error, "the value of #{inspect(name)} must be a string, got #{describe(value)}"}

      not path_text?(value) ->
        {:error, "the value of #{inspect(name)} must be UTF-8 text without NUL bytes"}

      true ->
        {:ok, {name, value}}
    end
  end

  # A name is shown (a value never is: it may be a secret), unless it cannot be printed.
  defp env_name(key) when is_binary(key),
    do: if(path_text?(key), do: inspect(key), else: describe(key))

  defp env_name(key), do: describe(key)

  # A file name the OS can take: no NUL byte, and text that prints in an error.
  defp path_text?(path), do: String.valid?(path) and not String.contains?(path, <<0>>)

  defp python_module(mod) do
    if mod =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/,
      do: {:ok, mod},
      else: {:error, "#{inspect(mod)} is not a Python module name"}
  end

  defp find_python(python) do
    case System.find_executable(python) do
      nil ->
        {:error,
         "Python executable #{inspect(python)} #{why_not_found(python)}; run bin/setup or pass python: \"/path/to/python3\""}

      path ->
        {:ok, path}
    end
  end

  # A path that names a file which cannot be run says so, rather than "not found".
  defp why_not_found(python) do
    cond do
      not String.contains?(python, "/") -> "was not found on PATH"
      File.dir?(python) -> "is a directory"
      File.exists?(python) -> "is not executable"
      true -> "was not found"
    end
  end
end
