# Soak: many concurrent callers while workers are killed at random.
#
#     mix run soak.exs [--requests 100000] [--callers 500] [--workers 4] [--kill-every 100]
#                            [--concurrency 1]
#
# Checks, and prints: every call returned {:ok, its own echo} or a structured error within its
# deadline plus 100 ms; no stray message reached any caller's mailbox; the pool returned to full
# size; no Python process was left after stop. Exits non-zero if any check fails.
alias DSPex.NativePool

{opts, _, _} =
  OptionParser.parse(System.argv(),
    strict: [
      requests: :integer,
      callers: :integer,
      workers: :integer,
      kill_every: :integer,
      concurrency: :integer
    ]
  )

requests = Keyword.get(opts, :requests, 100_000)
callers = Keyword.get(opts, :callers, 500)
workers = Keyword.get(opts, :workers, 4)
kill_every = Keyword.get(opts, :kill_every, 100)
concurrency = Keyword.get(opts, :concurrency, 1)
timeout = 5_000
per_caller = div(requests + callers - 1, callers)

Logger.configure(level: :error)

defmodule Soak do
  @categories [
    :timeout_error,
    :resource_error,
    :communication_error,
    :system_error,
    :validation_error
  ]

  def alive?(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> not String.contains?(stat, ") Z ")
      {:error, _} -> false
    end
  end

  # One caller: its own payloads, each reply checked against what it sent.
  def caller(id, count, timeout) do
    Enum.reduce(1..count, %{ok: 0, errors: %{}, bad: 0, late: 0, max_ms: 0}, fn seq, acc ->
      started = System.monotonic_time(:millisecond)

      result =
        DSPex.NativePool.execute("echo", %{caller: id, seq: seq}, pool: SoakPool, timeout: timeout)

      elapsed = System.monotonic_time(:millisecond) - started

      acc = %{
        acc
        | max_ms: max(acc.max_ms, elapsed),
          late: acc.late + if(elapsed > timeout + 100, do: 1, else: 0)
      }

      case result do
        {:ok, %{"caller" => ^id, "seq" => ^seq}} ->
          %{acc | ok: acc.ok + 1}

        {:error, {category, type, message, context}}
        when category in @categories and is_atom(type) and is_binary(message) and is_map(context) ->
          %{acc | errors: Map.update(acc.errors, {category, type}, 1, &(&1 + 1))}

        _other ->
          %{acc | bad: acc.bad + 1}
      end
    end)
  end

  # Kills a random busy-or-idle worker with SIGKILL every `every` ms until told to stop.
  def killer(every, kills, seen) do
    receive do
      {:stop, from} -> send(from, {:killer, kills, seen})
    after
      every ->
        pids =
          for %{os_pid: pid} <- DSPex.NativePool.stats(SoakPool).workers, is_integer(pid), do: pid

        seen = Enum.into(pids, seen)

        case pids do
          [] ->
            killer(every, kills, seen)

          pids ->
            System.cmd("kill", ["-9", to_string(Enum.random(pids))], stderr_to_stdout: true)
            killer(every, kills + 1, seen)
        end
    end
  end
end

IO.puts(
  "soak: #{requests} requests from #{callers} callers on #{workers} workers, killing one every #{kill_every} ms"
)

{:ok, pool} =
  NativePool.start_link(
    name: SoakPool,
    pool_size: workers,
    max_queue: callers * 2,
    concurrency: concurrency
  )

Process.unlink(pool)
initial = for %{os_pid: pid} <- NativePool.stats(SoakPool).workers, do: pid
killer = spawn(fn -> Soak.killer(kill_every, 0, MapSet.new(initial)) end)
started = System.monotonic_time(:millisecond)
parent = self()

tasks =
  for id <- 1..callers do
    spawn_link(fn ->
      summary = Soak.caller(id, per_caller, timeout)
      # A late reply would arrive after the call returned: give one the chance, then look.
      Process.sleep(200)
      {:message_queue_len, stray} = Process.info(self(), :message_queue_len)
      send(parent, {:done, id, Map.put(summary, :stray, stray)})
    end)
  end

summaries = for _ <- tasks, do: receive(do: ({:done, _id, summary} -> summary))
elapsed_s = (System.monotonic_time(:millisecond) - started) / 1000
send(killer, {:stop, self()})
{kills, seen} = receive(do: ({:killer, kills, seen} -> {kills, seen}))

total =
  Enum.reduce(summaries, %{ok: 0, errors: %{}, bad: 0, late: 0, stray: 0, max_ms: 0}, fn s, acc ->
    %{
      ok: acc.ok + s.ok,
      errors: Map.merge(acc.errors, s.errors, fn _k, a, b -> a + b end),
      bad: acc.bad + s.bad,
      late: acc.late + s.late,
      stray: acc.stray + s.stray,
      max_ms: max(acc.max_ms, s.max_ms)
    }
  end)

# The pool heals: every slot gets a live worker again.
full_size? =
  Enum.any?(1..200, fn _ ->
    stats = NativePool.stats(SoakPool)

    ok =
      Enum.all?(
        stats.workers,
        &(&1.state == :idle and is_integer(&1.os_pid) and Soak.alive?(&1.os_pid))
      )

    ok || (Process.sleep(50) && false)
  end)

final = for %{os_pid: pid} <- NativePool.stats(SoakPool).workers, do: pid
seen = Enum.into(final, seen)
GenServer.stop(SoakPool)
left = Enum.filter(seen, &Soak.alive?/1)
errors = Enum.reduce(total.errors, 0, fn {_, n}, acc -> acc + n end)
calls = total.ok + errors + total.bad

IO.puts("""
  calls:            #{calls} in #{Float.round(elapsed_s, 1)} s (#{round(calls / elapsed_s)} req/s)
  ok:               #{total.ok}
  structured errors: #{errors} #{inspect(total.errors)}
  other results:    #{total.bad}
  workers killed:   #{kills}
  slowest call:     #{total.max_ms} ms (deadline #{timeout} ms)
  over deadline+100ms: #{total.late}
  stray messages:   #{total.stray}
  pool full size after: #{full_size?}
  python processes left after stop: #{length(left)} of #{MapSet.size(seen)} seen
""")

checks = [
  {"every call answered", calls == per_caller * callers},
  {"every result ok or structured error", total.bad == 0},
  {"within deadline + 100 ms", total.late == 0},
  {"no stray messages", total.stray == 0},
  {"pool back to full size", full_size?},
  {"no python process left", left == []}
]

for {name, ok?} <- checks, do: IO.puts("  [#{if ok?, do: "PASS", else: "FAIL"}] #{name}")

if Enum.all?(checks, &elem(&1, 1)),
  do: IO.puts("soak: PASS"),
  else: IO.puts("soak: FAIL") && System.halt(1)
