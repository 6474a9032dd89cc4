# Streaming benchmark: time to the first chunk, chunk throughput, and what a stalled
# consumer lets pile up.
#
#   mix run streaming.exs [--chunks 100000] [--streams 200]
#
# A handler generator yields small dicts (`{"i": n}`). For `concurrency` 1 and 4 (one worker):
#   1. time to first chunk: `execute_stream/3` started and its first chunk in hand, p50 and
#      p99 over `--streams` streams (each then halted, which cancels it);
#   2. throughput: one stream of `--chunks` chunks consumed as fast as they come;
#   3. pile-up: a consumer that takes one chunk and stops pulling for 1 s; how many values
#      the worker produced beyond the one taken (it may run `:stream_window`, 64, ahead, and
#      compute one more that waits for a credit).

Logger.configure(level: :warning)

defmodule StreamingBench do
  alias DSPex.NativePool

  @handlers ~S'''
  def count(args):
      for i in range(args["n"]):
          yield {"i": i}
      return {"total": args["n"]}


  def produced(args):
      # Writes how many values it has produced so far, before each yield.
      for i in range(args["n"]):
          with open(args["path"], "w") as f:
              f.write(str(i + 1))
          yield i
  '''

  def main(argv) do
    {opts, _, _} = OptionParser.parse(argv, strict: [chunks: :integer, streams: :integer])
    chunks = Keyword.get(opts, :chunks, 100_000)
    streams = Keyword.get(opts, :streams, 200)
    dir = Path.join(System.tmp_dir!(), "dspex_stream_bench")
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, "stream_bench.py"), @handlers)

    rows =
      for concurrency <- [1, 4] do
        name = :"stream_bench_#{concurrency}"

        {:ok, pid} =
          NativePool.start_link(
            name: name,
            pool_size: 1,
            concurrency: concurrency,
            handlers: "stream_bench",
            python_path: [dir]
          )

        piled = pile_up(name)
        first = first_chunk_us(name, streams)
        rate = throughput(name, chunks)
        GenServer.stop(pid)
        {concurrency, first, rate, piled}
      end

    IO.puts("""

    Streaming: one worker, small chunks (#{chunks} for throughput, #{streams} streams for the first chunk)

    | concurrency | first chunk p50 | p99 | throughput | produced ahead of a stalled consumer (window 64) |
    |---|---|---|---|---|
    #{Enum.map_join(rows, "\n", fn {c, {p50, p99}, rate, piled} -> "| #{c} | #{p50} µs | #{p99} µs | #{round(rate)} chunks/s | #{piled} |" end)}
    """)
  end

  defp first_chunk_us(pool, streams) do
    times =
      for _ <- 1..streams do
        started = System.monotonic_time(:microsecond)

        [{:chunk, _}] =
          NativePool.execute_stream("count", %{n: 1_000}, pool: pool) |> Enum.take(1)

        System.monotonic_time(:microsecond) - started
      end
      |> Enum.sort()

    {Enum.at(times, div(streams, 2)), Enum.at(times, div(streams * 99, 100))}
  end

  defp throughput(pool, chunks) do
    started = System.monotonic_time(:microsecond)

    count =
      NativePool.execute_stream("count", %{n: chunks}, pool: pool, timeout: 600_000)
      |> Enum.count()

    ^count = chunks + 1
    chunks / ((System.monotonic_time(:microsecond) - started) / 1_000_000)
  end

  # Takes one chunk, then stops pulling for a second: how many values the worker produced
  # meanwhile (it waits at its yield once the window is used up).
  defp pile_up(pool) do
    path = Path.join(System.tmp_dir!(), "dspex_stream_bench_produced")
    File.rm(path)

    task =
      Task.async(fn ->
        stream =
          NativePool.execute_stream("produced", %{n: 1_000_000, path: path},
            pool: pool,
            timeout: 60_000
          )

        {:suspended, _, continuation} =
          Enumerable.reduce(stream, {:cont, nil}, fn item, _ -> {:suspend, item} end)

        Process.sleep(1_000)
        produced = path |> File.read!() |> String.to_integer()
        continuation.({:halt, nil})
        produced
      end)

    Task.await(task, 30_000) - 1
  end
end

StreamingBench.main(System.argv())
