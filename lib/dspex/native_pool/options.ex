defmodule DSPex.NativePool.Options do
  @moduledoc false
  # Validates `DSPex.NativePool.start_link/1` options (documented in the table of
  # `DSPex.NativePool`) and turns them into the NIF's configuration.

  @mib 1024 * 1024

  @defaults [
    name: DSPex.NativePool,
    pool_size: nil,
    python: nil,
    handlers: nil,
    python_path: [],
    env: [],
    startup_timeout: 30_000,
    max_frame: 64 * @mib,
    max_queue: 10_000,
    health_interval: 30_000,
    health_timeout: 5_000,
    max_backoff: 5_000,
    max_requests: nil,
    kill_on_timeout: true,
    pin_cpus: true,
    busy_wait_us: 50,
    shutdown_timeout: 5_000,
    session_ttl: 3_600_000
  ]

  @doc false
  def defaults, do: @defaults

  @doc false
  @spec validate(keyword) :: {:ok, keyword} | {:error, String.t()}
  def validate(opts) when is_list(opts) do
    with :ok <- known_keys(opts) do
      @defaults
      |> Keyword.merge(opts)
      |> Enum.reduce_while({:ok, []}, fn {key, value}, {:ok, acc} ->
        case check(key, value) do
          {:ok, value} -> {:cont, {:ok, [{key, value} | acc]}}
          {:error, message} -> {:halt, {:error, "invalid #{inspect(key)}: #{message}"}}
        end
      end)
      |> case do
        {:ok, acc} -> {:ok, Enum.reverse(acc)}
        error -> error
      end
    end
  end

  def validate(other), do: {:error, "options must be a keyword list, got: #{inspect(other)}"}

  defp known_keys(opts) do
    if Keyword.keyword?(opts) do
      case Keyword.keys(opts) -- Keyword.keys(@defaults) do
        [] ->
          :ok

        unknown ->
          {:error,
           "unknown options #{inspect(unknown)}; known options are #{inspect(Keyword.keys(@defaults))}"}
      end
    else
      {:error, "options must be a keyword list, got: #{inspect(opts)}"}
    end
  end

  defp check(:name, name) when is_atom(name) and not is_nil(name), do: {:ok, name}
  defp check(:name, other), do: {:error, "expected a non-nil atom, got: #{inspect(other)}"}

  defp check(:pool_size, nil), do: {:ok, System.schedulers_online()}
  defp check(:pool_size, n) when is_integer(n) and n in 1..1024, do: {:ok, n}

  defp check(:pool_size, other),
    do: {:error, "expected an integer 1..1024, got: #{inspect(other)}"}

  defp check(:python, nil), do: find_python(default_python())
  defp check(:python, python) when is_binary(python), do: find_python(python)

  defp check(:python, other),
    do: {:error, "expected a path or executable name, got: #{inspect(other)}"}

  defp check(:handlers, nil), do: {:ok, nil}
  defp check(:handlers, mod) when is_binary(mod) and mod != "", do: python_module(mod)
  defp check(:handlers, mod) when is_atom(mod), do: python_module(Atom.to_string(mod))

  defp check(:handlers, other),
    do: {:error, "expected a Python module name, got: #{inspect(other)}"}

  defp check(:python_path, paths) when is_list(paths) do
    if Enum.all?(paths, &is_binary/1),
      do: {:ok, Enum.map(paths, &Path.expand/1)},
      else: {:error, "expected a list of directory paths, got: #{inspect(paths)}"}
  end

  defp check(:python_path, other),
    do: {:error, "expected a list of directories, got: #{inspect(other)}"}

  defp check(:env, env) when is_map(env) or is_list(env) do
    pairs = Enum.to_list(env)

    if Enum.all?(pairs, &env_pair?/1),
      do: {:ok, Enum.map(pairs, fn {k, v} -> {to_string(k), to_string(v)} end)},
      else: {:error, "expected a map or keyword list of strings, got: #{inspect(env)}"}
  end

  defp check(:env, other), do: {:error, "expected a map of strings, got: #{inspect(other)}"}

  defp check(:max_requests, nil), do: {:ok, nil}
  defp check(:kill_on_timeout, bool) when is_boolean(bool), do: {:ok, bool}
  defp check(:kill_on_timeout, other), do: {:error, "expected a boolean, got: #{inspect(other)}"}
  defp check(:pin_cpus, bool) when is_boolean(bool), do: {:ok, bool}
  defp check(:pin_cpus, other), do: {:error, "expected a boolean, got: #{inspect(other)}"}

  defp check(:busy_wait_us, n) when is_integer(n) and n >= 0, do: {:ok, n}

  defp check(:busy_wait_us, other),
    do: {:error, "expected a non-negative integer (microseconds), got: #{inspect(other)}"}

  defp check(key, n)
       when key in [:health_timeout, :startup_timeout, :session_ttl] and is_integer(n) and n > 0,
       do: {:ok, n}

  defp check(key, n)
       when key in [:max_frame, :max_queue, :max_requests] and is_integer(n) and n > 0,
       do: {:ok, n}

  defp check(:max_frame, n),
    do: {:error, "expected a positive number of bytes, got: #{inspect(n)}"}

  defp check(key, n)
       when key in [:health_interval, :max_backoff, :shutdown_timeout] and is_integer(n) and
              n >= 0,
       do: {:ok, n}

  defp check(_key, other),
    do: {:error, "expected a positive integer (milliseconds or count), got: #{inspect(other)}"}

  defp env_pair?({k, v}), do: (is_binary(k) or is_atom(k)) and (is_binary(v) or is_atom(v))
  defp env_pair?(_), do: false

  defp python_module(mod) do
    if mod =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/,
      do: {:ok, mod},
      else: {:error, "#{inspect(mod)} is not a Python module name"}
  end

  defp find_python(python) do
    case System.find_executable(python) do
      nil ->
        {:error,
         "Python executable #{inspect(python)} was not found; run bin/setup or pass python: \"/path/to/python3\""}

      path ->
        {:ok, path}
    end
  end

  @doc false
  # The virtualenv bin/setup creates, else the system's python3; DSPEX_PYTHON overrides both.
  def default_python do
    venv = Path.expand("../../../.venv/bin/python", __DIR__)

    cond do
      python = System.get_env("DSPEX_PYTHON") -> python
      File.exists?(venv) -> venv
      true -> "python3"
    end
  end

  @doc false
  # What every worker gets unless :env says otherwise (the benchmarks' V2 peer uses it too).
  def worker_env_defaults(python_path) do
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

  @doc false
  # The NIF's view: how to run the worker and how the pool behaves.
  @spec nif_config(keyword) :: map
  def nif_config(opts) do
    script = Path.join(:code.priv_dir(:dspex_native_pool), "python/dspex_worker.py")

    args =
      [script, "--pool", inspect(opts[:name]), "--max-frame", to_string(opts[:max_frame])] ++
        if(opts[:handlers], do: ["--handlers", opts[:handlers]], else: [])

    %{
      size: opts[:pool_size],
      python: opts[:python],
      args: args,
      env: worker_env(opts),
      cwd: nil,
      max_frame: opts[:max_frame],
      max_queue: opts[:max_queue],
      startup_timeout: opts[:startup_timeout],
      health_interval: opts[:health_interval],
      health_timeout: opts[:health_timeout],
      max_backoff: opts[:max_backoff],
      max_requests: opts[:max_requests],
      kill_on_timeout: opts[:kill_on_timeout],
      pin_cpus: opts[:pin_cpus]
    }
  end

  # Thread limits keep N workers from each starting a core's worth of BLAS threads; the user's
  # :env wins over every default here.
  defp worker_env(opts) do
    python_path =
      (opts[:python_path] ++ List.wrap(System.get_env("PYTHONPATH")))
      |> Enum.reject(&(&1 == ""))

    defaults = worker_env_defaults(python_path)
    user = opts[:env]
    user_keys = MapSet.new(user, &elem(&1, 0))
    Enum.reject(defaults, fn {k, _} -> MapSet.member?(user_keys, k) end) ++ user
  end
end
