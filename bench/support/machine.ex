defmodule Bench.Machine do
  @moduledoc "The machine and toolchain a run was measured on, for BENCHMARKS.md."

  alias Bench.{OS, Python}

  def describe do
    %{
      nproc: Bench.Startup.cores(),
      cpu: cpu_model(),
      memory: mem_total(),
      os: "#{os_name()} (Linux #{kernel()})",
      erlang: "OTP #{:erlang.system_info(:otp_release)} (ERTS #{:erlang.system_info(:version)})",
      schedulers:
        "#{System.schedulers_online()} schedulers, #{:erlang.system_info(:dirty_cpu_schedulers_online)} dirty CPU, #{:erlang.system_info(:dirty_io_schedulers)} dirty I/O",
      elixir: System.version(),
      rust: command("rustc", ["--version"]),
      python: Python.eval("import sys; print(sys.version.split()[0])"),
      python_path: Python.executable(),
      dspy: Python.eval("import importlib.metadata as m; print(m.version('dspy'))"),
      orjson: Python.eval("import importlib.metadata as m; print(m.version('orjson'))"),
      load_average: OS.load_average()
    }
  end

  defp cpu_model do
    case field("/proc/cpuinfo", ~r/^model name\s*:\s*(.+)$/m) do
      nil -> "unknown"
      model -> String.trim(model)
    end
  end

  defp mem_total do
    case field("/proc/meminfo", ~r/^MemTotal:\s+(\d+) kB/m) do
      nil -> "unknown"
      kb -> "#{Float.round(String.to_integer(kb) / 1024 / 1024, 1)} GiB"
    end
  end

  defp os_name, do: field("/etc/os-release", ~r/^PRETTY_NAME="?([^"\n]+)"?$/m) || "Linux"

  # The first capture of `regex` in the file at `path`, or nil.
  defp field(path, regex) do
    with {:ok, text} <- File.read(path),
         [_, value] <- Regex.run(regex, text) do
      value
    else
      _ -> nil
    end
  end

  defp kernel do
    case :os.version() do
      {a, b, c} -> "#{a}.#{b}.#{c}"
      other -> inspect(other)
    end
  end

  defp command(cmd, args) do
    case System.find_executable(cmd) && System.cmd(cmd, args, stderr_to_stdout: true) do
      {out, 0} -> String.trim(out)
      _ -> nil
    end
  end
end
