defmodule Bench.Load do
  @moduledoc """
  A closed-loop load: `callers` processes each call `call` back to back, first through a warm-up,
  then through the measured window. A request counts if it completes inside the window, whenever
  it started (so long requests cannot inflate the window), which is how `raw_limit` counts too.

  While the callers run, this process samples CPU time over the window: the VM's own (schedulers
  plus every NIF thread) and the Python workers', so a result can say where the CPU went, and
  the hypervisor's steal, so it can say how noisy the machine was.
  """

  alias Bench.{OS, Stats}

  @doc """
  Options: `:callers`, `:warmup_ms`, `:window_ms`, `:python_pids` (for the CPU split), and
  `:settle`, a function run once every caller is done but before any exits (see below).
  `call` returns `:ok` or `{:error, reason}`.
  """
  def run(call, opts) do
    callers = Keyword.fetch!(opts, :callers)
    parent = self()
    pids = for _ <- 1..callers, do: spawn_link(fn -> caller(parent, call) end)

    from = System.monotonic_time() + ms(Keyword.fetch!(opts, :warmup_ms))
    until = from + ms(Keyword.fetch!(opts, :window_ms))
    Enum.each(pids, &send(&1, {:go, from, until}))

    cpu = sample_cpu(from, until, Keyword.get(opts, :python_pids, []))
    outcomes = Enum.map(pids, &collect/1)
    Keyword.get(opts, :settle, fn -> :ok end).()
    Enum.each(pids, &send(&1, :release))
    summarize(outcomes, until - from, cpu)
  end

  # Callers stay alive until released: a V2 caller owns its worker's Port until the pool has
  # processed its checkin, and a Port dies with its owner.
  defp caller(parent, call) do
    receive do
      {:go, from, until} ->
        {latencies, errors} = loop(call, from, until, [], {0, nil})
        send(parent, {:done, self(), latencies, errors})
        receive do: (:release -> :ok)
    end
  end

  defp loop(call, from, until, latencies, errors) do
    started = System.monotonic_time()

    if started >= until do
      {latencies, errors}
    else
      result = safe(call)
      done = System.monotonic_time()
      in_window? = done >= from and done < until

      case result do
        :ok when in_window? -> loop(call, from, until, [done - started | latencies], errors)
        :ok -> loop(call, from, until, latencies, errors)
        error -> loop(call, from, until, latencies, count_error(errors, error))
      end
    end
  end

  defp safe(call) do
    call.()
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  defp count_error({0, nil}, error), do: {1, error}
  defp count_error({n, first}, _error), do: {n + 1, first}

  defp collect(pid) do
    receive do
      {:done, ^pid, latencies, errors} -> {latencies, errors}
    end
  end

  defp sample_cpu(from, until, python_pids) do
    sleep_until(from)
    beam = OS.beam_pid()
    before = cpu_now(beam, python_pids)
    sleep_until(until)
    Map.merge(cpu_now(beam, python_pids), before, fn _key, now, then -> now - then end)
  end

  # The counters sample_cpu/3 takes the difference of.
  defp cpu_now(beam, python_pids) do
    %{
      client_us: OS.cpu_us(beam),
      python_us: OS.cpu_us_total(python_pids),
      steal_ms: OS.steal_ms()
    }
  end

  defp sleep_until(time) do
    wait = :erlang.convert_time_unit(time - System.monotonic_time(), :native, :millisecond)
    if wait > 0, do: Process.sleep(wait)
  end

  defp summarize(outcomes, window, cpu) do
    latencies = Enum.flat_map(outcomes, &elem(&1, 0))
    {errors, first_error} = merge_errors(Enum.map(outcomes, &elem(&1, 1)))
    window_s = :erlang.convert_time_unit(window, :native, :microsecond) / 1_000_000
    stats = Stats.summarize(latencies)

    Map.merge(stats, %{
      throughput: stats.count / window_s,
      window_s: window_s,
      errors: errors,
      first_error: first_error,
      client_cpu_us_per_req: per_request(cpu.client_us, stats.count),
      python_cpu_us_per_req: per_request(cpu.python_us, stats.count),
      # Of all the machine's CPU time in the window, the share the hypervisor gave elsewhere.
      steal_share: cpu.steal_ms / 1000 / (window_s * Bench.Startup.cores())
    })
  end

  defp merge_errors(errors) do
    Enum.reduce(errors, {0, nil}, fn {n, first}, {total, seen} -> {total + n, seen || first} end)
  end

  defp per_request(_cpu_us, 0), do: nil
  defp per_request(cpu_us, count), do: cpu_us / count

  defp ms(ms), do: :erlang.convert_time_unit(ms, :millisecond, :native)
end
