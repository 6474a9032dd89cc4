# DSPy programs that wait on an LM, many at once on two Python workers: streamed, calling a
# function of this application, and cancelled at a deadline without losing the worker.
#
#     mix run examples/llm_calls.exs
#
# The LM is a local stand-in: test/support/lm_server.py, an OpenAI-compatible chat server on
# 127.0.0.1 (standard-library Python) that answers after 200 ms. DSPy reaches it through its
# own HTTP client, as it would a real provider; for one, configure e.g.
# %{model: "openai/gpt-4o-mini"} with OPENAI_API_KEY in the environment.
alias DSPex.NativePool

Logger.configure(level: :warning)

latency_ms = 200

lm_server =
  Port.open(
    {:spawn_executable, System.find_executable("python3")},
    [
      :binary,
      {:line, 1024},
      args: [
        "-u",
        "test/support/lm_server.py",
        "--latency-ms",
        "#{latency_ms}",
        "--answer",
        "Paris, on the Seine."
      ]
    ]
  )

lm_port =
  receive do
    {^lm_server, {:data, {:eol, "LISTENING " <> port}}} -> port
  after
    15_000 -> raise "the stand-in LM server did not start"
  end

# A command of your own that calls back into Elixir (see `tools:` below).
handlers_dir = Path.join(System.tmp_dir!(), "dspex_llm_calls_example")
File.mkdir_p!(handlers_dir)

File.write!(Path.join(handlers_dir, "llm_calls_handlers.py"), """
from dspex_bridge import elixir

def ship(args):
    order = elixir.call("lookup_order", {"id": args["id"]})
    return {"shipped": order["id"], "to": order["city"]}
""")

{:ok, _pool} =
  NativePool.start_link(
    name: LLM,
    pool_size: 2,
    # Requests each worker runs at once: a DSPy call spends its time waiting on the LM.
    concurrency: 64,
    handlers: "llm_calls_handlers",
    python_path: [handlers_dir],
    tools: [
      lookup_order:
        {fn %{"id" => id} -> %{id: id, city: "Lyon"} end, "Find an order by its id",
         %{id: %{type: "string"}}}
    ]
  )

{:ok, _} =
  NativePool.configure_lm(
    %{
      model: "openai/stand-in",
      api_base: "http://127.0.0.1:#{lm_port}/v1",
      api_key: "not-a-real-key",
      cache: false
    },
    pool: LLM
  )

{:ok, %{"program_id" => qa}} =
  NativePool.execute("create_program", %{signature: "question -> answer"}, pool: LLM)

# 100 predictions at once, each waiting 200 ms on the LM.
calls = 100

{micros, results} =
  :timer.tc(fn ->
    1..calls
    |> Enum.map(fn i ->
      NativePool.execute_async(
        "execute_program",
        %{program_id: qa, inputs: %{question: "question #{i}?"}},
        pool: LLM,
        timeout: 30_000
      )
    end)
    |> Enum.map(&NativePool.await/1)
  end)

answers = for {:ok, %{"outputs" => %{"answer" => answer}}} <- results, do: answer
^calls = length(answers)

IO.puts(
  "#{calls} predictions  -> #{calls} answers in #{div(micros, 1000)} ms on 2 workers " <>
    "(one at a time: #{calls * latency_ms} ms of LM waiting alone)"
)

# The answer's tokens as the LM streams them.
tokens =
  NativePool.execute_stream(
    "execute_program",
    %{program_id: qa, inputs: %{question: "Stream it?"}, stream: true},
    pool: LLM
  )
  |> Enum.flat_map(fn
    {:chunk, %{"field" => "answer", "text" => text}} -> [text]
    {:chunk, _status} -> []
    {:done, %{"outputs" => %{"answer" => _}}} -> []
  end)

IO.puts("streamed        -> #{length(tokens)} pieces: #{inspect(Enum.join(tokens))}")

# Python calling a function of this application.
{:ok, shipped} = NativePool.execute("ship", %{id: "A-17"}, pool: LLM)
IO.puts("Elixir tool     -> #{inspect(shipped)}")

# A deadline shorter than the LM's answer: the call gives up at once, the request is
# cancelled in its worker (DSPy's HTTP request closed), and the worker carries on.
{:error, {:timeout_error, :request_timeout, message, _context}} =
  NativePool.execute("execute_program", %{program_id: qa, inputs: %{question: "Too slow?"}},
    pool: LLM,
    timeout: 50
  )

restarts = NativePool.stats(LLM).workers |> Enum.map(& &1.restarts) |> Enum.sum()
0 = restarts
IO.puts("deadline        -> #{message}; workers restarted: #{restarts}")

GenServer.stop(LLM)
Port.close(lm_server)
File.rm_rf!(handlers_dir)
