defmodule DSPex.NativePool.StreamCase do
  @moduledoc false
  # What the streaming tests share: generator commands (in `pool!/1`'s handler module), a
  # `progress` tool that reports to the test process, and reading those reports.

  import DSPex.NativePool.TestHelpers

  @handlers ~S'''
  import time

  from dspex_bridge import concurrent, elixir, streaming


  def count(args):
      for i in range(args["n"]):
          yield {"i": i}
      return {"total": args["n"]}


  async def acount(args):
      for i in range(args["n"]):
          yield i
      yield streaming.result("async done")


  def watched(args):
      # Says each value it is about to yield, and when it is stopped.
      try:
          for i in range(args["n"]):
              elixir.call("progress", {"i": i})
              yield i
      finally:
          elixir.call("progress", {"closed": True})
      return "finished"


  def slow_stream(args):
      yield 1
      time.sleep(30)
      yield 2


  def ticking(args):
      # Yields until it is stopped, and then leaves a mark (its tools are gone by then).
      try:
          i = 0
          while True:
              time.sleep(0.01)
              i += 1
              yield i
      finally:
          open(args["mark"], "w").close()


  def broken_stream(args):
      yield 1
      raise ValueError("broke after one")


  def unsendable_stream(args):
      yield 1
      yield {"when": object()}
      return "never"


  def huge_chunk_stream(args):
      yield "x" * 70_000


  def quiet_after_one(args):
      # One chunk, then nothing for up to 20 s unless the pool cancels the request.
      yield "started"
      for _ in range(2_000):
          if concurrent.cancelled():
              open(args["mark"], "w").close()
              return "cancelled"
          time.sleep(0.01)
      yield "never cancelled"
  '''

  @doc "A pool of the streaming handlers, whose `progress` tool reports to the calling process."
  def pool!(opts) do
    test_pid = self()

    tools = [
      progress:
        {fn args ->
           send(test_pid, {:progress, args})
           :ok
         end, "Reports progress"}
    ]

    %{pool: pool} = start_pool!([handlers_source: @handlers, tools: tools] ++ opts)
    pool
  end

  @doc "The last value a generator reported before it had been still for a second."
  def max_progress(last) do
    receive do
      {:progress, %{"i" => i}} when i < 10 -> max_progress(i)
      {:progress, %{"i" => i}} -> i
    after
      1_000 -> last
    end
  end

  @doc "Progress reports of the values yielded, until the generator says it was stopped."
  def collect_progress(acc) do
    receive do
      {:progress, %{"i" => i}} -> collect_progress([i | acc])
      {:progress, %{"closed" => true}} = closed -> send(self(), closed) && Enum.reverse(acc)
    after
      5_000 -> Enum.reverse(acc)
    end
  end
end
