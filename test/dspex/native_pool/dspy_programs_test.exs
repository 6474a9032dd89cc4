defmodule DSPex.NativePool.DSPyProgramsTest do
  # DSPy's other program types and the commands around programs, against the local LM server
  # over HTTP: ReAct calling a function of the pool's handler module, BestOfN with a reward,
  # evaluate and optimize with a metric, and programs saved, loaded, exported and imported.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.LMServer

  @moduletag timeout: 180_000

  @handlers ~S'''
  ORDERS = {"7": "shipped on Tuesday"}


  def lookup_order(args):
      """Find an order by its id."""
      return "order %s: %s" % (args["id"], ORDERS.get(str(args["id"]), "unknown"))


  def reward_answer_42(args):
      return 1.0 if args["outputs"].get("answer") == "42" else 0.0


  def reward_never(args):
      return 0.0


  def exact_match(args):
      return args["example"]["answer"] == args["prediction"]["answer"]
  '''

  setup do
    server = LMServer.start!(answer: "42")

    %{pool: pool} = start_pool!(handlers_source: @handlers, startup_timeout: 60_000, pool_size: 2)

    assert {:ok, _} =
             NativePool.configure_lm(LMServer.lm_config(server, %{num_retries: 0}), pool: pool)

    LMServer.reset(server)
    %{server: server, pool: pool}
  end

  defp create!(pool, args) do
    assert {:ok, %{"program_id" => id, "status" => "created"}} =
             NativePool.execute(
               "create_program",
               Map.merge(%{signature: "question -> answer"}, args),
               pool: pool
             )

    id
  end

  defp ask(pool, id, question \\ "?") do
    NativePool.execute("execute_program", %{program_id: id, inputs: %{question: question}},
      pool: pool
    )
  end

  test "ReAct calls a handler function with the arguments the LM chose, and the LM sees its result",
       %{server: server, pool: pool} do
    id =
      create!(pool, %{
        program_type: "ReAct",
        tools: [%{name: "lookup_order", args: %{id: %{type: "string", desc: "the order id"}}}]
      })

    LMServer.configure(server, %{
      script: [
        %{next_thought: "look it up", next_tool_name: "lookup_order", next_tool_args: %{id: "7"}},
        %{next_thought: "done", next_tool_name: "finish", next_tool_args: %{}},
        %{reasoning: "the tool said so", answer: "shipped on Tuesday"}
      ]
    })

    assert {:ok, %{"outputs" => outputs}} = ask(pool, id, "Where is order 7?")
    assert %{"answer" => "shipped on Tuesday", "trajectory" => trajectory} = outputs
    assert trajectory["tool_name_0"] == "lookup_order"
    assert trajectory["tool_args_0"] == %{"id" => "7"}
    assert trajectory["observation_0"] == "order 7: shipped on Tuesday"
    assert trajectory["tool_name_1"] == "finish"
    # The second request to the LM carried the tool's result.
    assert LMServer.prompts(server) =~ "order 7: shipped on Tuesday"
  end

  test "a ReAct tool that is not a handler function is refused, naming the known ones",
       %{pool: pool} do
    assert {:error, {:validation_error, :invalid_args, message, context}} =
             NativePool.execute(
               "create_program",
               %{signature: "question -> answer", program_type: "ReAct", tools: ["nope"]},
               pool: pool
             )

    assert message =~ "no handler function named 'nope'"
    assert message =~ "lookup_order"
    assert context.python_type == "dspex_bridge.errors.InvalidArguments"
  end

  test "BestOfN asks the reward function and stops at the threshold", %{
    server: server,
    pool: pool
  } do
    good = create!(pool, %{program_type: "BestOfN", n: 3, reward: "reward_answer_42"})
    assert {:ok, %{"outputs" => %{"answer" => "42"}}} = ask(pool, good)
    assert %{"requests" => 1} = LMServer.stats(server)

    LMServer.reset(server)
    never = create!(pool, %{program_type: "BestOfN", n: 3, reward: "reward_never"})
    assert {:ok, %{"outputs" => %{"answer" => "42"}}} = ask(pool, never)
    assert %{"requests" => 3} = LMServer.stats(server)
  end

  test "Refine builds with a reward too", %{pool: pool} do
    id = create!(pool, %{program_type: "Refine", n: 2, reward: "reward_answer_42"})
    assert {:ok, %{"outputs" => %{"answer" => "42"}}} = ask(pool, id)
  end

  test "evaluate scores a program with a handler metric", %{pool: pool} do
    id = create!(pool, %{})
    devset = [%{question: "6*7?", answer: "42"}, %{question: "3+4?", answer: "7"}]

    assert {:ok, %{"score" => 50.0, "count" => 2}} =
             NativePool.execute(
               "evaluate",
               %{program_id: id, devset: devset, metric: "exact_match"},
               pool: pool
             )
  end

  test "optimize bootstraps demos; the optimized program is saved and loaded elsewhere", %{
    server: server,
    pool: pool
  } do
    id = create!(pool, %{program_id: "qa"})
    trainset = [%{question: "6*7?", answer: "42"}, %{question: "40+2?", answer: "42"}]

    assert {:ok, %{"program_id" => "qa_optimized", "demos" => demos, "elapsed" => elapsed}} =
             NativePool.execute(
               "optimize",
               %{
                 program_id: id,
                 optimizer: "BootstrapFewShot",
                 trainset: trainset,
                 metric: "exact_match",
                 max_bootstrapped_demos: 2,
                 max_labeled_demos: 0
               },
               pool: pool
             )

    assert demos == 2
    assert is_float(elapsed)

    # Optimized on one worker, loaded into every one.
    assert {:ok, %{0 => {:ok, first}, 1 => {:ok, second}}} =
             NativePool.broadcast(
               "execute_program",
               %{program_id: "qa_optimized", inputs: %{question: "?"}},
               pool: pool
             )

    assert first["outputs"] == %{"answer" => "42"} and second["outputs"] == first["outputs"]

    assert {:ok, %{"definition" => definition, "state" => state}} =
             NativePool.execute("save_program", %{program_id: "qa_optimized"}, pool: pool)

    assert [_, _] = state["demos"]

    # Another pool, which never saw the optimization.
    %{pool: other} = start_pool!(startup_timeout: 60_000)
    {:ok, _} = NativePool.configure_lm(LMServer.lm_config(server), pool: other)

    assert {:ok, %{"program_id" => "restored", "loaded" => true}} =
             NativePool.execute(
               "load_program",
               %{program_id: "restored", definition: definition, state: state},
               pool: other
             )

    assert {:ok, %{"state" => ^state}} =
             NativePool.execute("save_program", %{program_id: "restored"}, pool: other)

    LMServer.reset(server)
    assert {:ok, %{"outputs" => %{"answer" => "42"}}} = ask(other, "restored")
    # The demos reach the LM with the question.
    assert LMServer.prompts(server) =~ "40+2?"
  end

  test "a session's programs move to another pool with export_session and import_session", %{
    server: server,
    pool: pool
  } do
    for id <- ["a", "b"] do
      {:ok, _} =
        NativePool.execute_in_session(
          "s1",
          "create_program",
          %{program_id: id, signature: "question -> answer"},
          pool: pool
        )
    end

    assert {:ok, %{"session_id" => "s1", "programs" => programs}} =
             NativePool.execute_in_session("s1", "export_session", %{}, pool: pool)

    assert Enum.map(programs, & &1["program_id"]) == ["a", "b"]

    %{pool: other} = start_pool!(startup_timeout: 60_000, pool_size: 2)
    {:ok, _} = NativePool.configure_lm(LMServer.lm_config(server), pool: other)

    assert {:ok, %{"program_ids" => ["a", "b"]}} =
             NativePool.execute_in_session("s2", "import_session", %{programs: programs},
               pool: other
             )

    assert {:ok, %{"total_count" => 2}} =
             NativePool.execute_in_session("s2", "list_programs", %{}, pool: other)

    assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
             NativePool.execute_in_session(
               "s2",
               "execute_program",
               %{program_id: "b", inputs: %{question: "?"}},
               pool: other
             )
  end
end
