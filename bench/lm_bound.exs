# LM-bound benchmark: many concurrent DSPy calls waiting on an LM, few Python processes.
#
#   mix run lm_bound.exs [--calls 500] [--latency-ms 200] [--workers 2] [--concurrency 256]
#
# A local OpenAI-compatible server (test/support/lm_server.py, on 127.0.0.1) answers after
# `--latency-ms`. DSPy talks to it through its own HTTP client, cache off. The run:
#
#   1. CPU per call: the same calls at 0 ms latency; the workers' CPU time (utime + stime from
#      /proc) divided by the number of calls. That is the Python cost of a Predict call.
#   2. The limit: calls × CPU per call / workers + latency — what the calls would take if the
#      workers' CPU were the only cost and every LM wait overlapped.
#   3. The measured time of the calls at `--latency-ms`, and its ratio to the limit (target
#      ≤ 1.5×), with the server's peak of concurrent connections.
#   4. The same calls with `concurrency: 1` (one request at a time per worker), for contrast.
#
# The LM server shares the machine's cores with the workers; its CPU is not counted in the
# limit, which makes the limit lower (stricter) than what the workers alone could reach.

Logger.configure(level: :warning)
# The test suite's LM server (it uses ExUnit's on_exit only from a helper this script avoids).
Code.require_file("../test/support/lm_server.ex", __DIR__)

defmodule LMBound do
  alias DSPex.NativePool
  alias DSPex.NativePool.LMServer

  def main(argv) do
    {opts, _, _} =
      OptionParser.parse(argv,
        strict: [calls: :integer, latency_ms: :integer, workers: :integer, concurrency: :integer]
      )

    calls = Keyword.get(opts, :calls, 500)
    latency = Keyword.get(opts, :latency_ms, 200)
    workers = Keyword.get(opts, :workers, 2)
    concurrency = Keyword.get(opts, :concurrency, 256)
    server = start_server()

    {pool, id} = start_pool(:lm_bound, workers, concurrency, server)
    run(pool, id, 50)
    cpu_ms = cpu_per_call(pool, id, calls)
    limit_ms = calls * cpu_ms / workers + latency
    configure(server, latency)
    LMServer.reset(server)
    idle_kb = rss_kb(pool)
    sampler = sample(pool)
    {wall_ms, results} = timed(fn -> run(pool, id, calls) end)
    {peak_kb, peak_in_flight} = stop_sampling(sampler)
    per_request_kb = (peak_kb - idle_kb) / max(peak_in_flight, 1)
    stats = LMServer.stats(server)
    ok = Enum.count(results, &match?({:ok, _}, &1))
    stop(pool)

    {one, one_id} = start_pool(:lm_bound_one, workers, 1, server)
    one_calls = min(calls, 40)
    {one_ms, _} = timed(fn -> run(one, one_id, one_calls) end)
    stop(one)

    IO.puts("""

    LM-bound: #{calls} concurrent execute_program calls (Predict), #{latency} ms LM latency,
    #{workers} workers × concurrency #{concurrency}; #{System.schedulers_online()} schedulers

    | measure | value |
    |---|---|
    | Python CPU per call (0 ms latency, same pool) | #{fmt(cpu_ms)} ms |
    | limit: #{calls} × CPU / #{workers} workers + #{latency} ms | #{fmt(limit_ms)} ms |
    | measured, #{calls} calls | #{fmt(wall_ms)} ms (#{ok} ok) |
    | ratio to the limit (target ≤ 1.5×) | #{fmt(wall_ms / limit_ms)}× |
    | LM server's peak concurrent requests | #{stats["max_active"]} |
    | workers' RSS idle → at the peak of #{peak_in_flight} in flight | #{fmt(idle_kb / 1024)} → #{fmt(peak_kb / 1024)} MiB (#{fmt(per_request_kb)} KiB per request in flight) |
    | concurrency 1, #{one_calls} calls | #{fmt(one_ms)} ms (#{fmt(one_ms / one_calls * calls / 1000)} s projected for #{calls}) |
    """)
  end

  defp start_server do
    # LMServer is written for tests (it registers on_exit); start it the same way by hand.
    python = Bench.Python.executable()
    script = Path.expand("../test/support/lm_server.py", __DIR__)
    port = Port.open({:spawn_executable, python}, [:binary, {:line, 1024}, args: ["-u", script]])

    receive do
      {^port, {:data, {:eol, "LISTENING " <> n}}} ->
        n = String.to_integer(n)
        %{port: n, api_base: "http://127.0.0.1:#{n}/v1"}
    after
      15_000 -> raise "the LM server did not start"
    end
  end

  defp configure(server, latency), do: LMServer.configure(server, %{latency_ms: latency})

  defp start_pool(name, workers, concurrency, server) do
    {:ok, _} =
      NativePool.start_link(
        name: name,
        pool_size: workers,
        concurrency: concurrency,
        startup_timeout: 60_000,
        max_queue: 100_000
      )

    {:ok, _} = NativePool.configure_lm(LMServer.lm_config(server), pool: name)

    {:ok, %{"program_id" => id}} =
      NativePool.execute("create_program", %{signature: "question -> answer"}, pool: name)

    {name, id}
  end

  defp stop(pool), do: GenServer.stop(pool)

  defp run(pool, id, calls) do
    1..calls
    |> Enum.map(fn i ->
      NativePool.execute_async(
        "execute_program",
        %{program_id: id, inputs: %{question: "question #{i}"}},
        pool: pool,
        timeout: 600_000
      )
    end)
    |> Enum.map(&NativePool.await/1)
  end

  defp cpu_per_call(pool, id, calls) do
    pids = Enum.map(NativePool.stats(pool).workers, & &1.os_pid)
    before = Enum.map(pids, &cpu_ms/1) |> Enum.sum()
    run(pool, id, calls)

    ((Enum.map(pids, &cpu_ms/1) |> Enum.sum()) - before)
    |> Kernel./(calls)
  end

  # utime + stime of an OS process, in ms (clock ticks of 10 ms on Linux).
  defp cpu_ms(os_pid) do
    stat = File.read!("/proc/#{os_pid}/stat")
    [_, rest] = String.split(stat, ") ", parts: 2)
    fields = String.split(rest)
    (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * 10
  end

  # The workers' resident memory, summed, in KiB.
  defp rss_kb(pool) do
    pool
    |> NativePool.stats()
    |> Map.fetch!(:workers)
    |> Enum.map(fn w ->
      ~r/VmRSS:\s+(\d+) kB/
      |> Regex.run(File.read!("/proc/#{w.os_pid}/status"), capture: :all_but_first)
      |> hd()
      |> String.to_integer()
    end)
    |> Enum.sum()
  end

  # Samples memory and requests in flight every 20 ms until told to stop.
  defp sample(pool) do
    spawn_link(fn -> sample_loop(pool, {0, 0}) end)
  end

  defp sample_loop(pool, {kb, in_flight}) do
    receive do
      {:stop, from} -> send(from, {:sampled, kb, in_flight})
    after
      20 ->
        now = NativePool.stats(pool).in_flight
        sample_loop(pool, {max(kb, rss_kb(pool)), max(in_flight, now)})
    end
  end

  defp stop_sampling(sampler) do
    send(sampler, {:stop, self()})

    receive do
      {:sampled, kb, in_flight} -> {kb, in_flight}
    end
  end

  defp timed(fun) do
    {us, result} = :timer.tc(fun)
    {us / 1000, result}
  end

  defp fmt(x), do: :erlang.float_to_binary(x / 1, decimals: 2)
end

LMBound.main(System.argv())
