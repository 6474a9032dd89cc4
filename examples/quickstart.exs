# Quickstart: start a pool of Python workers and call them.
#
#     mix run examples/quickstart.exs
alias DSPex.NativePool

# Your own commands: every public function of a Python module.
handlers_dir = Path.join(System.tmp_dir!(), "dspex_quickstart")
File.mkdir_p!(handlers_dir)

File.write!(Path.join(handlers_dir, "quickstart_handlers.py"), """
def word_count(args):
    words = args["text"].split()
    return {"words": len(words), "longest": max(words, key=len)}
""")

{:ok, _pool} =
  NativePool.start_link(
    name: QuickPool,
    pool_size: 2,
    handlers: "quickstart_handlers",
    python_path: [handlers_dir]
  )

{:ok, ping} = NativePool.execute("ping", %{}, pool: QuickPool)
IO.puts("ping      -> worker #{ping["worker_id"]}, python pid #{ping["pid"]}, #{ping["python"]}")

{:ok, echo} = NativePool.execute("echo", %{text: "hi", list: [1, 2.5, nil]}, pool: QuickPool)
IO.puts("echo      -> #{inspect(echo)}")

{:ok, count} =
  NativePool.execute("word_count", %{text: "the fastest way from the BEAM to Python"},
    pool: QuickPool
  )

IO.puts("word_count-> #{inspect(count)}")

{:error, {category, type, message, _context}} =
  NativePool.execute("word_count", %{text: 42}, pool: QuickPool)

IO.puts("error     -> #{category}/#{type}: #{message}")

# Fan out: 100 requests in flight from one process.
handles = for i <- 1..100, do: NativePool.execute_async("echo", %{i: i}, pool: QuickPool)

sum =
  handles
  |> Enum.map(&NativePool.await/1)
  |> Enum.map(fn {:ok, %{"i" => i}} -> i end)
  |> Enum.sum()

IO.puts("fan-out   -> 100 replies, sum of i = #{sum}")

GenServer.stop(QuickPool)
