defmodule DSPex.NativePool.WorkerSpec do
  @moduledoc false
  # How a pool's workers are started, from its validated options: the NIF's configuration,
  # the worker's command line and the environment it gets.

  alias DSPex.NativePool.Options.Env
  alias DSPex.NativePool.PythonEnv

  @doc false
  # Why the pool runs the interpreter it runs, for its start-up log line.
  def python_source(opts) do
    if is_list(opts) and Keyword.keyword?(opts) and opts[:python],
      do: "the :python option",
      else: elem(PythonEnv.default(), 1)
  end

  # What every worker gets unless :env says otherwise.
  defp worker_env_defaults(python_path) do
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
      cwd: opts[:cwd],
      max_frame: opts[:max_frame],
      max_queue: opts[:max_queue],
      startup_timeout: opts[:startup_timeout],
      health_interval: opts[:health_interval],
      health_timeout: opts[:health_timeout],
      max_backoff: opts[:max_backoff],
      max_requests: opts[:max_requests],
      kill_on_timeout: opts[:kill_on_timeout],
      pin_cpus: opts[:pin_cpus],
      concurrency: opts[:concurrency],
      cancel_grace: opts[:cancel_grace],
      template: template_args(opts[:preload])
    }
  end

  # How the template that workers are forked from is told what to import first.
  defp template_args(false), do: nil
  defp template_args(:auto), do: ["--template", "--preload-if-installed", "dspy"]
  defp template_args(modules), do: ["--template" | Enum.flat_map(modules, &["--preload", &1])]

  # The whole environment a worker starts with: the VM's as of now (erts keeps its own copy,
  # which `System.put_env/2` changes and a spawned process would not otherwise see), then the
  # pool's defaults, then the user's `:env`, each winning over the one before.
  defp worker_env(opts) do
    inherited = if opts[:inherit_env], do: System.get_env(), else: %{}

    python_path =
      (opts[:python_path] ++ List.wrap(inherited["PYTHONPATH"]))
      |> Enum.reject(&(&1 == ""))

    cache = if opts[:dspy_cache_dir], do: %{"DSPY_CACHEDIR" => opts[:dspy_cache_dir]}, else: %{}

    inherited
    |> Map.merge(Map.new(worker_env_defaults(python_path)))
    |> Map.merge(cache)
    |> Map.merge(Map.new(DSPex.NativePool.Tools.worker_env(opts[:tools])))
    |> Map.merge(Map.new(Env.pairs(opts[:env])))
    |> Enum.to_list()
  end
end
