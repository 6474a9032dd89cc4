defmodule Bench.NifProbe do
  @moduledoc """
  How long each NIF call holds the scheduler that runs it, measured directly: every function of
  `DSPex.NativePool.Nif` is call-traced with return traces while one process starts a pool, sends
  echo requests of each payload size, reads stats and stops the pool. It runs twice: once with
  wall-clock trace timestamps and once with `:cpu_timestamp` (the scheduler thread's CPU time,
  which excludes time the OS gave to other threads: on a small shared machine, wall time includes
  preemption the NIF did not cause).

  Which NIFs run on dirty schedulers is read from the crate's source (`schedule = "Dirty…"`);
  only the others count towards the 1 ms target.
  """

  alias Bench.{Python, SchedMonitor, Stats}

  @nif DSPex.NativePool.Nif
  @payloads [100, 10 * 1024, 1024 * 1024]

  def run(plan) do
    SchedMonitor.phase(:nif_probe)
    dirty = dirty_nifs()
    wall = durations(plan, :wall)
    cpu = durations(plan, :cpu)

    rows =
      for {{function, label}, wall_us} <- Enum.sort(wall) do
        scheduler = if function_name(function) in dirty, do: :dirty, else: :normal
        # A dirty NIF's call and return are traced on two threads, whose CPU clocks differ:
        # their difference is no duration (it came out negative), so none is given.
        cpu_us = if scheduler == :dirty, do: [], else: Map.get(cpu, {function, label}, [])

        %{
          function: function,
          label: label,
          scheduler: scheduler,
          calls: length(wall_us),
          wall_p50_us: Stats.median(wall_us),
          wall_max_us: Enum.max(wall_us),
          cpu_p50_us: Stats.median(cpu_us),
          cpu_max_us: Enum.max(cpu_us, fn -> nil end)
        }
      end

    %{rows: rows, dirty: dirty}
  end

  @doc "Names of the NIFs the crate schedules on dirty schedulers."
  def dirty_nifs do
    source = Path.join(Python.root(), "native/dspex_native_pool/src/lib.rs")

    case File.read(source) do
      {:ok, text} ->
        ~r/#\[rustler::nif\(schedule = "Dirty\w+"\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?fn\s+(\w+)/
        |> Regex.scan(text, capture: :all_but_first)
        |> List.flatten()

      _ ->
        []
    end
  end

  defp function_name(function), do: function |> String.split("/") |> hd()

  # {function, payload label} => [µs]; `clock` :cpu uses :cpu_timestamp.
  defp durations(plan, clock) do
    if clock == :cpu, do: :erlang.trace(:all, true, [:cpu_timestamp])

    try do
      name = :bench_nif_probe
      lifecycle = traced(fn -> start_pool(name) end)

      per_payload =
        for payload <- @payloads do
          args = %{"data" => String.duplicate("x", payload)}
          count = calls(plan, payload)

          traced(fn ->
            for _ <- 1..count, do: {:ok, _} = DSPex.NativePool.execute("echo", args, pool: name)
          end)
          |> label(Bench.Format.bytes(payload))
        end

      pool = Process.whereis(name)
      stop = traced(fn -> _ = DSPex.NativePool.stats(name) && GenServer.stop(pool) end, [pool])

      [label(lifecycle, "start/stop"), label(stop, "start/stop") | per_payload]
      |> Enum.concat()
      |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    after
      if clock == :cpu, do: :erlang.trace(:all, false, [:cpu_timestamp])
    end
  end

  defp start_pool(name) do
    {:ok, pid} = DSPex.NativePool.start_link(Python.native_options(name, 2))
    # Stopped in another traced step, so the pool must not die with the caller's link.
    Process.unlink(pid)
  end

  defp calls(%{mode: :full}, payload), do: max(div(20_000_000, payload + 10_000), 50)
  defp calls(_quick, payload), do: max(div(4_000_000, payload + 10_000), 20)

  defp label(durations, label), do: Enum.map(durations, fn {f, us} -> {{f, label}, us} end)

  # Runs `fun` with the NIF calls of this process, of those it spawns and of `others` traced;
  # returns [{"name/arity", µs}].
  defp traced(fun, others \\ []) do
    tracer = spawn_link(&collect/0)
    # A pattern only applies to loaded code.
    Code.ensure_loaded!(@nif)
    :erlang.trace_pattern({@nif, :_, :_}, [{:_, [], [{:return_trace}]}], [:local])
    flags = [:call, :timestamp, :arity, :set_on_spawn, {:tracer, tracer}]
    Enum.each([self() | others], &:erlang.trace(&1, true, flags))

    try do
      fun.()
    after
      :erlang.trace(self(), false, [:call])
      :erlang.trace_pattern({@nif, :_, :_}, false, [:local])
    end

    ref = :erlang.trace_delivered(self())

    receive do
      {:trace_delivered, _, ^ref} -> :ok
    end

    send(tracer, {:done, self()})

    receive do
      {:trace_messages, messages} ->
        # The pool's own process (spawned, so traced too) calls start_pool and stop_pool.
        messages
        |> Enum.group_by(&elem(&1, 1))
        |> Enum.flat_map(fn {_pid, of_one_process} -> pair(of_one_process, []) end)
    end
  end

  defp collect(acc \\ []) do
    receive do
      {:done, from} -> send(from, {:trace_messages, Enum.reverse(acc)})
      message -> collect([message | acc])
    end
  end

  # NIFs do not nest, so each call is closed by the next return from the same function.
  defp pair(
         [{:trace_ts, _, :call, mfa, t0}, {:trace_ts, _, :return_from, mfa, _, t1} | rest],
         acc
       ) do
    {_m, f, a} = mfa
    pair(rest, [{"#{f}/#{a}", us(t1) - us(t0)} | acc])
  end

  defp pair([_unpaired | rest], acc), do: pair(rest, acc)
  defp pair([], acc), do: acc

  defp us({mega, sec, micro}), do: (mega * 1_000_000 + sec) * 1_000_000 + micro
end
