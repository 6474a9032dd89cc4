defmodule Bench.OS do
  @moduledoc """
  What the kernel knows about a process, read from /proc: resident memory, CPU time and thread
  count. Python's memory is outside the BEAM's own accounting, and so is memory the NIF allocates
  with the system allocator, so both are read here.
  """

  @doc "The OS pid of this VM."
  def beam_pid, do: String.to_integer(System.pid())

  @doc "VmRSS of a process, in bytes, or nil if it is gone."
  def rss_bytes(pid), do: kb_field("/proc/#{pid}/status", "VmRSS")

  @doc "Proportional set size of a process (shared pages divided among their sharers), in bytes."
  def pss_bytes(pid), do: kb_field("/proc/#{pid}/smaps_rollup", "Pss")

  # A `Name:   N kB` line of a /proc file, in bytes; nil if the file or the line is missing.
  defp kb_field(path, name) do
    with {:ok, text} <- File.read(path),
         [_, kb] <- Regex.run(~r/^#{name}:\s+(\d+) kB/m, text) do
      String.to_integer(kb) * 1024
    else
      _ -> nil
    end
  end

  @doc "The parent of a process, or nil if it is gone."
  def parent_pid(pid) do
    with {:ok, stat} <- File.read("/proc/#{pid}/stat"),
         [_, after_name] <- String.split(stat, ") ", parts: 2) do
      after_name |> String.split(" ") |> Enum.at(1) |> String.to_integer()
    else
      _ -> nil
    end
  end

  @doc "Threads of a process."
  def thread_count(pid) do
    case File.ls("/proc/#{pid}/task") do
      {:ok, tasks} -> length(tasks)
      _ -> nil
    end
  end

  @doc "User plus system CPU time of a process, in microseconds (0 if it is gone)."
  def cpu_us(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} ->
        # Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        [_, rest] = String.split(stat, ") ", parts: 2)
        fields = String.split(rest, " ")
        ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
        div(ticks * 1_000_000, clock_ticks())

      _ ->
        0
    end
  end

  def cpu_us_total(pids), do: pids |> Enum.map(&cpu_us/1) |> Enum.sum()

  # USER_HZ: 100 on every Linux this runs on, but ask once to be sure.
  defp clock_ticks do
    case :persistent_term.get({__MODULE__, :hz}, nil) do
      nil ->
        hz =
          case System.cmd("getconf", ["CLK_TCK"]) do
            {out, 0} -> out |> String.trim() |> String.to_integer()
            _ -> 100
          end

        :persistent_term.put({__MODULE__, :hz}, hz)
        hz

      hz ->
        hz
    end
  end

  @doc """
  CPU time the hypervisor gave to other guests while this machine's processors wanted it
  ("steal", all processors, since boot), in ms. On a shared virtual machine it is the noise a
  result cannot show by itself, so runs record how much of it they had.
  """
  def steal_ms do
    with {:ok, text} <- File.read("/proc/stat"),
         ["cpu" | fields] <- text |> String.split("\n", parts: 2) |> hd() |> String.split(),
         {ticks, ""} <- fields |> Enum.at(7, "") |> Integer.parse() do
      div(ticks * 1000, clock_ticks())
    else
      _ -> 0
    end
  end

  @doc "The 1-minute load average (the machine is shared; recorded with the results)."
  def load_average do
    case File.read("/proc/loadavg") do
      {:ok, text} -> text |> String.split(" ") |> Enum.take(3) |> Enum.join(" ")
      _ -> "?"
    end
  end
end
