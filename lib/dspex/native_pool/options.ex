defmodule DSPex.NativePool.Options do
  @moduledoc false
  # The options of `DSPex.NativePool.start_link/1` as one schema: each option's type, range,
  # default and doc. It drives validation, the options table of the moduledoc (`table/0`) and,
  # through a test, the README's copy of that table. Nothing here ever quotes an option's
  # value in an error: `:env` may carry secrets.

  alias DSPex.NativePool.Options.Types

  @mib 1024 * 1024
  # The longest wait `receive ... after` accepts (about 49.7 days), and so every ms option's
  # bound.
  @max_ms 4_294_967_295

  @doc false
  def max_ms, do: @max_ms

  @schema [
    name: [
      type: :name,
      default: DSPex.NativePool,
      doc: "the pool's name, used as `:pool` in calls"
    ],
    pool_size: [
      type: :pool_size,
      default: nil,
      shown: "schedulers online",
      doc: "number of Python worker processes"
    ],
    python: [
      type: :python,
      default: nil,
      shown: "see meaning",
      doc:
        "the Python executable; without it, `config :dspex_native_pool, python: ...`, else `DSPEX_PYTHON`, else the environment made by `mix dspex_native_pool.setup` (bundled in releases), else `python3`, decided when the pool starts and logged (see [Install in your application](#install-in-your-application))"
    ],
    require_dspy: [
      type: :require_dspy,
      default: :auto,
      doc:
        "`true`: the pool does not start (`:dspy_missing`) unless its Python has the `dspy` package; `:auto` means `true` when that Python runs in an environment made by `mix dspex_native_pool.setup`"
    ],
    dspy_cache_dir: [
      type: :path,
      default: nil,
      shown: "DSPy's",
      doc:
        "the directory of DSPy's disk cache for this pool's workers (`DSPY_CACHEDIR`; a relative one is taken from the application's root); DSPy's default, `~/.dspy_cache`, is shared by every worker on the host, so a repeated question never reaches the LM unless `configure_lm` gets `cache: false`"
    ],
    tools: [
      type: :tools,
      default: [],
      doc:
        "Elixir functions the workers' Python code may call (`dspex_bridge.elixir.call(name, args)`, and ReAct programs): `name: {fun/1, description}` or `name: {fun/1, description, %{arg => %{type:, desc:}}}`; each call runs in a fresh process under the pool, within its request's deadline (see [Elixir tools](#elixir-tools))"
    ],
    handlers: [
      type: :python_module,
      default: nil,
      doc: "a Python module whose public functions `fun(args: dict)` become commands"
    ],
    preload: [
      type: :preload,
      default: :auto,
      doc:
        "fork the workers from one warm interpreter per pool (its template) that imports these Python modules once, so a worker starts (or is replaced) in milliseconds and shares their memory: `:auto` preloads `dspy` if it is installed; a list names the modules (add the `handlers` module to preload it too); `false` starts each worker as an interpreter of its own (see [Start-up](#start-up))"
    ],
    python_path: [
      type: :paths,
      default: [],
      doc:
        "directories put on the workers' import path; relative ones are taken from the application's root (the Mix project's directory, or the release's root)"
    ],
    cwd: [
      type: :dir,
      default: nil,
      shown: "the VM's",
      doc: "the workers' working directory; a relative one is taken from the application's root"
    ],
    env: [
      type: :env,
      default: %{},
      doc: "extra environment variables for the workers (strings); they win over inherited ones"
    ],
    inherit_env: [
      type: :boolean,
      default: true,
      doc:
        "workers get the VM's environment as it is when the pool starts (`System.put_env/2` and `System.delete_env/1` included), plus `:env`; `false` starts them with only `:env` and the pool's defaults (`PYTHONPATH`, thread limits)"
    ],
    startup_timeout: [
      type: {:integer, 1, @max_ms},
      default: 30_000,
      doc: "ms a worker has to start and answer its init ping"
    ],
    max_frame: [
      type: {:integer, 4096, 4_294_967_295},
      default: 64 * @mib,
      shown: "`67_108_864` (64 MiB)",
      doc: "largest request or reply, in bytes (4 KiB to 4 GiB - 1: the frame header is 32 bits)"
    ],
    max_queue: [
      type: {:integer, 1, 10_000_000},
      default: 10_000,
      doc:
        "requests that may wait for a worker; beyond, calls fail at once with `:pool_saturated`"
    ],
    health_interval: [
      type: {:integer, 100, @max_ms},
      default: 30_000,
      doc: "ms of idleness after which a worker is pinged (at least 100)"
    ],
    health_timeout: [
      type: {:integer, 1, @max_ms},
      default: 5_000,
      doc: "ms a health ping may take before the worker is replaced"
    ],
    max_backoff: [
      type: {:integer, 0, @max_ms},
      default: 5_000,
      doc:
        "longest wait, in ms, between attempts to replace a worker that fails to start or dies before answering anything; the wait starts at 100 ms and doubles each time (a worker that had answered a request is replaced at once)"
    ],
    max_requests: [
      type: {:integer_or_nil, 1, 9_223_372_036_854_775_807},
      default: nil,
      doc: "retire and replace a worker after this many requests"
    ],
    concurrency: [
      type: {:integer, 1, 4096},
      default: 1,
      doc:
        "requests each worker runs at once; above 1 they are multiplexed by id over its pipes, `def` commands on a pool of as many Python threads, `async def` ones on its event loop (see [Concurrency](#concurrency))"
    ],
    cluster: [
      type: :boolean,
      default: false,
      doc:
        "serve this pool's name on every node of the Erlang cluster: calls from any node run here or on another member (see [Cluster](#cluster))"
    ],
    stream_window: [
      type: {:integer, 1, 65_536},
      default: 64,
      doc:
        "chunks a streaming command may send ahead of its consumer (`execute_stream/3`); its generator waits at `yield` while the window is full; a call may give its own `:stream_window`"
    ],
    cancel_grace: [
      type: {:integer, 0, @max_ms},
      default: 2_000,
      doc:
        "ms a request cancelled at its deadline (or its caller's death) may take to end before its worker is replaced: any request with `concurrency` above 1, a stream with `concurrency: 1`"
    ],
    kill_on_timeout: [
      type: :boolean,
      default: true,
      doc:
        "with `concurrency: 1`: kill (and replace) a worker still running a request at its deadline (a stream is told to stop first, and its worker replaced only if it has not within `:cancel_grace`); `false` keeps it and drops the late reply (above 1, the request is cancelled instead)"
    ],
    pin_cpus: [
      type: :boolean,
      default: true,
      doc:
        "give each worker a CPU of its own, shared by its Python process and the native thread that talks to it, when the VM may run on enough CPUs that no other pool of the machine holds; otherwise, or with `false`, nothing is pinned (see [Performance](#performance))"
    ],
    busy_wait_us: [
      type: {:integer, 0, 1_000_000},
      default: 50,
      doc:
        "µs a call whose request went straight to a waiting worker polls for its reply (yielding to other processes) before it sleeps in `receive` (not if its scheduler runs on that worker's pinned CPU); `0` turns it off (see [Performance](#performance))"
    ],
    shutdown_timeout: [
      type: {:integer, 0, @max_ms},
      default: 5_000,
      doc: "ms running requests get to finish when the pool stops, before workers are terminated"
    ],
    session_ttl: [
      type: {:integer, 1, @max_ms},
      default: 3_600_000,
      doc: "ms after which an idle session is forgotten and its state freed on its worker"
    ]
  ]

  @doc false
  def schema, do: @schema

  @doc false
  def defaults, do: Enum.map(@schema, fn {key, spec} -> {key, spec[:default]} end)

  @doc false
  # The options table of the docs and the README, generated from the schema.
  @spec table() :: String.t()
  def table do
    rows =
      Enum.map(@schema, fn {key, spec} ->
        "| `#{inspect(key)}` | #{shown_default(spec)} | #{spec[:doc]} |"
      end)

    Enum.join(["| option | default | meaning |", "|---|---|---|" | rows], "\n")
  end

  defp shown_default(spec) do
    cond do
      shown = spec[:shown] -> shown
      is_integer(spec[:default]) -> "`#{format_integer(spec[:default])}`"
      true -> "`#{inspect(spec[:default])}`"
    end
  end

  defp format_integer(n) when n < 1_000, do: Integer.to_string(n)
  defp format_integer(n), do: group_digits(n, "_")

  @doc false
  # A non-negative integer with its digits in groups of three: `group_digits(30000, "_")` is
  # `"30_000"` (the benchmarks' tables use it too).
  @spec group_digits(non_neg_integer, String.t()) :: String.t()
  def group_digits(n, separator) do
    n
    |> Integer.to_string()
    |> String.reverse()
    |> String.graphemes()
    |> Enum.chunk_every(3)
    |> Enum.map_join(separator, &Enum.join/1)
    |> String.reverse()
  end

  @doc false
  @spec validate(term) :: {:ok, keyword} | {:error, String.t()}
  def validate(opts) do
    with :ok <- keyword(opts, "options"),
         :ok <- known(opts, Keyword.keys(@schema)) do
      Types.each_ok(@schema, fn {key, spec} ->
        case Types.check(spec[:type], Keyword.get(opts, key, spec[:default])) do
          {:ok, value} -> {:ok, {key, value}}
          {:error, message} -> {:error, "invalid #{inspect(key)}: #{message}"}
        end
      end)
    end
  end

  defp keyword(opts, what) do
    if is_list(opts) and Keyword.keyword?(opts),
      do: :ok,
      else: {:error, "#{what} must be a keyword list, got #{describe(opts)}"}
  end

  defp known(opts, known) do
    keys = Keyword.keys(opts)
    distinct = Enum.uniq(keys)

    case distinct -- known do
      [] -> once(keys, distinct)
      unknown -> {:error, "unknown options #{inspect(unknown)}; known: #{inspect(known)}"}
    end
  end

  # Keyword.get would take the first of two and ignore the other without a word.
  defp once(keys, distinct) do
    case Enum.uniq(keys -- distinct) do
      [] -> :ok
      twice -> {:error, "options given more than once: #{inspect(twice)}; give each once"}
    end
  end

  # What a value is, for a message that must not show it: a string or a number may be a
  # secret (an API key, a token), an atom is a name in the caller's code, shown as such.
  @doc false
  def describe(value) when is_integer(value), do: "an integer"
  def describe(value) when is_float(value), do: "a float"
  def describe(value) when is_atom(value), do: inspect(value)
  def describe(value) when is_binary(value), do: "a string"
  def describe(value) when is_list(value), do: "a list"
  def describe(value) when is_struct(value), do: "a #{inspect(value.__struct__)} struct"
  def describe(value) when is_map(value), do: "a map"
  def describe(value) when is_tuple(value), do: "a tuple"
  def describe(value) when is_pid(value), do: "a pid"
  def describe(value) when is_reference(value), do: "a reference"
  def describe(value) when is_function(value), do: "a function"
  def describe(_value), do: "an unsupported term"
end
