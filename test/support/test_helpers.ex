defmodule DSPex.NativePool.TestHelpers do
  @moduledoc false
  # Helpers for the end-to-end tests: every pool is a real pool of real Python processes.

  import ExUnit.Assertions

  alias DSPex.NativePool
  alias DSPex.NativePool.TestLogForwarder

  @doc """
  Python handler commands most tests use. `slow` prints "slow started TAG" before it sleeps,
  so a test can wait for that log line (see `attach_logs/1`) to know the worker is busy.
  """
  def standard_handlers do
    ~S'''
    import math
    import os
    import signal
    import subprocess
    import sys
    import time


    class CustomError(Exception):
        pass


    def whoami(args):
        return {"pid": os.getpid(), "args": args}


    def slow(args):
        print("slow started " + str(args.get("tag", "")), flush=True)
        time.sleep(args.get("seconds", 5))
        return {"slept": args.get("seconds", 5), "tag": args.get("tag")}


    def boom(args):
        _explode(args.get("text", "boom"))


    def _explode(text):
        raise ValueError("it went " + text)


    def custom_error(args):
        raise CustomError("custom failure " + str(args.get("n")))


    def bare_error(args):
        raise KeyError()


    def needs_n(args):
        from dspex_bridge.errors import InvalidArguments
        if not isinstance(args.get("n"), int):
            raise InvalidArguments('needs_n needs "n", an integer')
        return args["n"]


    def returns_set(args):
        return {"s": {1, 2, 3}}


    def returns_nan(args):
        return [1.0, math.nan]


    _VALUES = {
        "null": None,
        "true": True,
        "false": False,
        "int": 42,
        "negative": -7,
        "u64": 2**64 - 1,
        "float": 2.5,
        "string": "h\u00e9llo \u2713 \U0001F600",
        "empty_string": "",
        "list": [1, "a", None, [2.5]],
        "empty_list": [],
        "tuple": (1, 2),
        "dict": {"a": {"b": [1, {"c": None}]}},
        "empty_dict": {},
        "int_keys": {1: "one", 2: "two"},
    }


    def value(args):
        return _VALUES[args["kind"]]


    def big(args):
        return "x" * args["n"]


    def big_ints(args):
        return [2**70, -(2**63) - 1]


    def edge_ints(args):
        return [2**64 - 1, -(2**63)]


    def chatty(args):
        tag = args["tag"]
        print("print " + tag)
        os.write(1, ("fd1 " + tag + "\n").encode())
        sys.stderr.write("stderr " + tag + "\n")
        sys.stderr.flush()
        return {"tag": tag}


    def long_line(args):
        print("x" * args["n"])
        print("after long line")
        return "done"


    def crash_exit(args):
        sys.stderr.write("last words before exit\n")
        sys.stderr.flush()
        os._exit(args.get("status", 3))


    def crash_kill(args):
        os.kill(os.getpid(), signal.SIGKILL)


    def system_exit(args):
        raise SystemExit(args["status"])


    def fds(args):
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        links = {str(fd): os.readlink("/proc/self/fd/%d" % fd) for fd in range(5)}
        return {"fds": fds, "links": links}


    def subprocess_status(args):
        return subprocess.run(["sh", "-c", "exit 3"]).returncode
    '''
  end

  @doc "A fresh atom, for pool names, handler module names and logger ids."
  def unique_name(prefix \\ "np_pool"), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  @doc """
  A new directory under the system tmp dir, removed when the test ends, holding the given
  files (`%{"name.py" => source}`).
  """
  def tmp_dir!(files \\ %{}) do
    dir = Path.join(System.tmp_dir!(), "dspex_np_test_#{System.unique_integer([:positive])}")
    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf(dir) end)
    Enum.each(files, fn {name, content} -> File.write!(Path.join(dir, name), content) end)
    dir
  end

  @doc """
  Writes `source` as a uniquely named Python module in a tmp dir; returns the options that
  make a pool load it, and the dir.
  """
  def handler_opts(source) do
    module = Atom.to_string(unique_name("np_handlers"))
    dir = tmp_dir!(%{"#{module}.py" => source})
    {[handlers: module, python_path: [dir]], dir}
  end

  @doc """
  Starts a supervised pool with a unique name (`pool_size: 1` unless given). With
  `handlers_source: python_source` (or `:standard`), writes that module and loads it.
  Returns `%{pool: name, pid: pid, dir: handlers_dir_or_nil}`.
  """
  def start_pool!(opts \\ []) do
    {source, opts} = Keyword.pop(opts, :handlers_source)

    {handler_opts, dir} =
      case source do
        nil -> {[], nil}
        :standard -> handler_opts(standard_handlers())
        source -> handler_opts(source)
      end

    name = Keyword.get_lazy(opts, :name, fn -> unique_name() end)

    opts =
      [name: name, pool_size: 1, shutdown_timeout: 1_000]
      |> Keyword.merge(handler_opts)
      |> Keyword.merge(opts)

    pid = ExUnit.Callbacks.start_supervised!({NativePool, opts})
    %{pool: name, pid: pid, dir: dir}
  end

  @doc "Forwards the pool's log events to the test process; see `DSPex.NativePool.TestLogForwarder`."
  defdelegate attach_logs(pool), to: TestLogForwarder, as: :attach
  defdelegate detach_logs(id), to: TestLogForwarder, as: :detach

  @doc """
  Calls `fun` until it returns a truthy value, which is returned; fails the test after
  `timeout` ms. Only for conditions no message announces, such as an OS process
  disappearing or a replacement worker becoming idle. `describe`, if given, is called on
  failure to say what was seen (counts, say), since the condition itself only gives `false`.
  """
  def eventually(fun, timeout \\ 5_000, describe \\ nil) do
    deadline = System.monotonic_time(:millisecond) + timeout
    poll(fun, deadline, timeout, describe)
  end

  defp poll(fun, deadline, timeout, describe) do
    case fun.() do
      result when result not in [nil, false] ->
        result

      last ->
        if System.monotonic_time(:millisecond) >= deadline do
          seen = if describe, do: describe.(), else: "last result: #{inspect(last)}"
          flunk("condition not met within #{timeout} ms; #{seen}")
        else
          # The only pause in the suite: the interval of this bounded poll.
          Process.sleep(20)
          poll(fun, deadline, timeout, describe)
        end
    end
  end

  @doc "Whether an OS process with this pid exists (a zombie, never reaped, counts as existing)."
  def os_process_exists?(os_pid) when is_integer(os_pid), do: File.exists?("/proc/#{os_pid}")

  @doc "Whether an OS process with this pid is running (a zombie, dead but unreaped, is not)."
  def os_process_alive?(os_pid) when is_integer(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not String.contains?(stat, ") Z ")
      {:error, _} -> false
    end
  end

  def os_process_alive?(_), do: false

  @doc "The OS pids of the pool's workers, in worker id order."
  def worker_os_pids(pool), do: Enum.map(NativePool.stats(pool).workers, & &1.os_pid)

  @doc "The command line of an OS process, as a list of arguments."
  def os_cmdline(os_pid) do
    "/proc/#{os_pid}/cmdline" |> File.read!() |> String.split(<<0>>, trim: true)
  end

  @doc "True when every worker of the pool is idle with a live OS process."
  def all_idle?(pool), do: idle_stats(pool) != nil

  @doc """
  The pool's stats if every worker is idle with a live OS process, else nil. Conditions on
  the workers belong on this one snapshot: checked on two, "all idle" can be read before a
  worker's death is noticed and "its os_pid changed" after it, with no replacement yet.
  """
  def idle_stats(pool) do
    %{workers: workers, pool_size: size} = stats = NativePool.stats(pool)

    ready? =
      length(workers) == size and
        Enum.all?(workers, fn w ->
          w.state == :idle and is_integer(w.os_pid) and os_process_exists?(w.os_pid)
        end)

    if ready?, do: stats
  end

  @doc "The OS pids of an idle pool's workers (see `idle_stats/1`), else nil."
  def idle_os_pids(pool) do
    with %{workers: workers} <- idle_stats(pool), do: Enum.map(workers, & &1.os_pid)
  end

  @doc "A JSON round trip's view of a term: string keys, atoms (but nil/booleans) as strings."
  def jsonish(map) when is_map(map),
    do: Map.new(map, fn {k, v} -> {to_string(k), jsonish(v)} end)

  def jsonish(list) when is_list(list), do: Enum.map(list, &jsonish/1)
  def jsonish(value) when value in [nil, true, false], do: value
  def jsonish(atom) when is_atom(atom), do: Atom.to_string(atom)
  def jsonish(other), do: other
end
