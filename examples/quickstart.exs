# Quickstart: a pool of Python workers running a real DSPy program, plus your own commands.
#
#     mix run examples/quickstart.exs
#
# It runs offline with DSPy's DummyLM. For a real model, configure e.g.
# %{model: "openai/gpt-4o-mini"} with OPENAI_API_KEY in the environment.
alias DSPex.NativePool

Logger.configure(level: :info)

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

IO.puts(
  "ping          -> worker #{ping["worker_id"]}, python pid #{ping["pid"]}, " <>
    "Python #{ping["python"]}, DSPy available: #{ping["dspy_available"]}"
)

# DSPy: the language model is configured on every worker (and on any worker started later).
{:ok, lm} =
  NativePool.configure_lm(
    %{model: "dummy", answers: [%{reasoning: "France's capital is Paris.", answer: "Paris"}]},
    pool: QuickPool
  )

IO.puts("configure_lm  -> #{lm["status"]} (#{lm["model"]}) on every worker")

# A program lives in a session, on one worker, which every request of the session reaches.
{:ok, program} =
  NativePool.execute_in_session(
    "quickstart",
    "create_program",
    %{signature: "question -> answer", program_type: "ChainOfThought"},
    pool: QuickPool
  )

IO.puts(
  "create_program-> #{program["program_id"]}: #{program["signature_string"]} (ChainOfThought)"
)

{:ok, %{"outputs" => outputs, "execution_time" => seconds}} =
  NativePool.execute_in_session(
    "quickstart",
    "execute_program",
    %{program_id: program["program_id"], inputs: %{question: "What is the capital of France?"}},
    pool: QuickPool
  )

IO.puts(
  "execute_program-> answer #{inspect(outputs["answer"])}, reasoning #{inspect(outputs["reasoning"])} " <>
    "(#{Float.round(seconds * 1000, 2)} ms in Python)"
)

:ok = NativePool.end_session("quickstart", pool: QuickPool)

{:ok, count} =
  NativePool.execute("word_count", %{text: "the fastest way from the BEAM to Python"},
    pool: QuickPool
  )

IO.puts("word_count    -> #{inspect(count)}")

{:error, {category, type, message, _context}} =
  NativePool.execute("word_count", %{text: 42}, pool: QuickPool)

IO.puts("error         -> #{category}/#{type}: #{message}")

# Fan out: 100 requests in flight from one process.
handles = for i <- 1..100, do: NativePool.execute_async("echo", %{i: i}, pool: QuickPool)

sum =
  handles
  |> Enum.map(&NativePool.await/1)
  |> Enum.map(fn {:ok, %{"i" => i}} -> i end)
  |> Enum.sum()

IO.puts("fan-out       -> 100 replies, sum of i = #{sum}")

GenServer.stop(QuickPool)
