defmodule DSPex.NativePool.ElixirToolsTest do
  # Python calling back into the application: `dspex_bridge.elixir.call/acall` run a pool's
  # `:tools` in fresh Elixir processes, one request at a time and many at once, and DSPy's
  # ReAct uses them against the local LM server.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.LMServer

  @moduletag timeout: 120_000

  @handlers ~S'''
  from dspex_bridge import elixir


  def use_tool(args):
      return elixir.call(args["tool"], args.get("args", {}))


  async def ause_tool(args):
      return await elixir.acall(args["tool"], args.get("args", {}))


  def tool_error(args):
      try:
          elixir.call(args["tool"], args.get("args", {}))
      except elixir.ElixirToolError as exc:
          return {"error": str(exc)}
      return {"error": None}
  '''

  defp tools(test_pid) do
    [
      lookup_order:
        {fn %{"id" => id} = args ->
           send(test_pid, {:tool_ran, self(), args})
           %{"id" => id, "status" => "shipped on Tuesday"}
         end, "Find an order by its id", %{id: %{type: "string", desc: "the order id"}}},
      boom: {fn _ -> raise ArgumentError, "no such order" end, "Always raises"},
      slow:
        {fn _ ->
           send(test_pid, {:slow_started, self()})
           Process.sleep(:infinity)
         end, "Never returns"},
      reward_42:
        {fn %{"outputs" => outputs} ->
           send(test_pid, {:reward_asked, outputs})
           if outputs["answer"] == "42", do: 1.0, else: 0.0
         end, "Rewards the answer 42"},
      gather:
        {fn %{"n" => n} ->
           # Returns once n calls are running at the same time.
           send(test_pid, {:gathering, self()})

           receive do
             :go -> n
           end
         end, "Waits for the others"}
    ]
  end

  defp pool!(opts) do
    %{pool: pool} =
      start_pool!(
        [handlers_source: @handlers, tools: tools(self()), startup_timeout: 60_000] ++ opts
      )

    pool
  end

  for concurrency <- [1, 4] do
    describe "concurrency #{concurrency}" do
      test "a tool runs in a fresh Elixir process with the arguments Python gave" do
        pool = pool!(concurrency: unquote(concurrency))

        assert {:ok, %{"id" => "7", "status" => "shipped on Tuesday"}} =
                 NativePool.execute(
                   "use_tool",
                   %{tool: "lookup_order", args: %{id: "7", extra: [1, 2]}},
                   pool: pool
                 )

        assert_received {:tool_ran, runner, %{"id" => "7", "extra" => [1, 2]}}
        assert runner != self()
        refute Process.alive?(runner)
      end

      test "each tool call emits [:dspex, :native_pool, :tool, :stop]" do
        pool = pool!(concurrency: unquote(concurrency))
        test_pid = self()
        handler = {__MODULE__, pool}
        event = [:dspex, :native_pool, :tool, :stop]

        :telemetry.attach(
          handler,
          event,
          fn
            ^event, measurements, %{pool: ^pool} = metadata, _ ->
              send(test_pid, {:tool_stop, measurements, metadata})

            _event, _measurements, _metadata, _ ->
              :ok
          end,
          nil
        )

        on_exit(fn -> :telemetry.detach(handler) end)

        {:ok, _} =
          NativePool.execute("use_tool", %{tool: "lookup_order", args: %{id: "1"}}, pool: pool)

        assert_receive {:tool_stop, %{duration: duration}, metadata}, 5_000
        assert is_integer(duration) and duration >= 0

        assert %{worker_id: 0, tool: "lookup_order", ok: true, request_id: id} = metadata
        assert is_integer(id)

        {:ok, _} = NativePool.execute("tool_error", %{tool: "boom"}, pool: pool)
        assert_receive {:tool_stop, _, %{tool: "boom", ok: false}}, 5_000
      end

      test "an exception, an unknown name and a timeout raise ElixirToolError" do
        pool = pool!(concurrency: unquote(concurrency))

        assert {:ok, %{"error" => error}} =
                 NativePool.execute("tool_error", %{tool: "boom"}, pool: pool)

        assert error =~ "ArgumentError: no such order"

        assert {:ok, %{"error" => error}} =
                 NativePool.execute("tool_error", %{tool: "nope"}, pool: pool)

        assert error =~ ~s(no Elixir tool named "nope")
        assert error =~ "lookup_order"

        # The tool gets what is left of its request's deadline, less a margin for the answer;
        # then Python is told, and the tool's process is gone.
        assert {:ok, %{"error" => error}} =
                 NativePool.execute("tool_error", %{tool: "slow"}, pool: pool, timeout: 5_000)

        assert error =~ "did not return within the request's deadline"
        assert_received {:slow_started, slow}
        ref = Process.monitor(slow)
        assert_receive {:DOWN, ^ref, :process, ^slow, _}, 5_000

        # The pool carries on.
        assert {:ok, %{"id" => "1"}} =
                 NativePool.execute("use_tool", %{tool: "lookup_order", args: %{id: "1"}},
                   pool: pool
                 )
      end
    end
  end

  test "tool calls from many requests at once run at the same time" do
    pool = pool!(concurrency: 8)

    handles =
      for _ <- 1..4 do
        NativePool.execute_async("use_tool", %{tool: "gather", args: %{n: 4}}, pool: pool)
      end

    runners =
      for _ <- 1..4 do
        assert_receive {:gathering, runner}, 10_000
        runner
      end

    # All four are running before any returns.
    for runner <- runners, do: send(runner, :go)
    assert Enum.map(handles, &NativePool.await/1) == List.duplicate({:ok, 4}, 4)
  end

  test "an async def command awaits a tool with acall" do
    pool = pool!(concurrency: 4)

    assert {:ok, %{"id" => "9"}} =
             NativePool.execute("ause_tool", %{tool: "lookup_order", args: %{id: "9"}}, pool: pool)
  end

  test "invalid :tools are refused at start" do
    for bad <- [
          [x: :not_a_fun],
          [x: {fn -> 1 end, "arity 0"}],
          [{"not an identifier", {fn _ -> 1 end, "d"}}],
          [x: {fn _ -> 1 end, "d", %{a: %{type: "date"}}}]
        ] do
      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.start_link(name: unique_name(), tools: bad)

      assert message =~ "invalid :tools"
    end
  end

  for concurrency <- [1, 4] do
    test "ReAct calls an Elixir tool with the arguments the LM chose (concurrency #{concurrency})" do
      server = LMServer.start!(answer: "42")
      pool = pool!(concurrency: unquote(concurrency))

      {:ok, _} =
        NativePool.configure_lm(LMServer.lm_config(server, %{num_retries: 0}), pool: pool)

      {:ok, %{"program_id" => id}} =
        NativePool.execute(
          "create_program",
          %{signature: "question -> answer", program_type: "ReAct", tools: ["lookup_order"]},
          pool: pool
        )

      LMServer.configure(server, %{
        script: [
          %{next_thought: "look", next_tool_name: "lookup_order", next_tool_args: %{id: "7"}},
          %{next_thought: "done", next_tool_name: "finish", next_tool_args: %{}},
          %{reasoning: "the tool said so", answer: "Tuesday"}
        ]
      })

      assert {:ok, %{"outputs" => %{"answer" => "Tuesday", "trajectory" => trajectory}}} =
               NativePool.execute(
                 "execute_program",
                 %{program_id: id, inputs: %{question: "Where is order 7?"}},
                 pool: pool
               )

      assert_received {:tool_ran, _runner, %{"id" => "7"}}
      assert trajectory["tool_name_0"] == "lookup_order"
      assert LMServer.prompts(server) =~ "shipped on Tuesday"
    end
  end

  test "an Elixir tool can be BestOfN's reward" do
    server = LMServer.start!(answer: "42")
    pool = pool!(concurrency: 1)
    {:ok, _} = NativePool.configure_lm(LMServer.lm_config(server, %{num_retries: 0}), pool: pool)

    {:ok, %{"program_id" => id}} =
      NativePool.execute(
        "create_program",
        %{signature: "question -> answer", program_type: "BestOfN", n: 3, reward: "reward_42"},
        pool: pool
      )

    assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
             NativePool.execute("execute_program", %{program_id: id, inputs: %{question: "?"}},
               pool: pool
             )

    assert_received {:reward_asked, %{"answer" => "42"}}
  end

  for concurrency <- [1, 4] do
    test "a call's own tools are merged over the pool's, for that call only (concurrency #{concurrency})" do
      pool = pool!(concurrency: unquote(concurrency))

      own = [
        lookup_order: {fn _ -> "from the call" end, "Overrides the pool's"},
        extra: {fn a -> a end, "Echo"}
      ]

      assert {:ok, "from the call"} =
               NativePool.execute("use_tool", %{tool: "lookup_order", args: %{id: "1"}},
                 pool: pool,
                 tools: own
               )

      assert {:ok, %{"x" => 1}} =
               NativePool.execute_in_session("s", "use_tool", %{tool: "extra", args: %{x: 1}},
                 pool: pool,
                 tools: own
               )

      assert [{:done, %{"error" => nil}}] =
               NativePool.execute_stream("tool_error", %{tool: "extra"}, pool: pool, tools: own)
               |> Enum.to_list()

      # Registered for the call's life only.
      {_resource, config} = :persistent_term.get({DSPex.NativePool, pool})
      assert :ets.info(config[:call_tools], :size) == 0

      # Other calls see the pool's tools only.
      assert {:ok, %{"id" => "1"}} =
               NativePool.execute("use_tool", %{tool: "lookup_order", args: %{id: "1"}},
                 pool: pool
               )

      assert {:ok, %{"error" => error}} =
               NativePool.execute("tool_error", %{tool: "extra"}, pool: pool)

      assert error =~ ~s(no Elixir tool named "extra")

      assert {:error, {:validation_error, :invalid_options, message, _}} =
               NativePool.execute("use_tool", %{tool: "x"}, pool: pool, tools: [x: :nope])

      assert message =~ "invalid :tools"
    end
  end

  test "a call's own tools do not stay registered when its request is refused" do
    pool = pool!(max_frame: 4096)
    own = [extra: {fn a -> a end, "Echo"}]
    big = %{tool: "extra", pad: String.duplicate("x", 5_000)}

    assert {:error, {:validation_error, :request_too_large, _, _}} =
             NativePool.execute("tool_error", big, pool: pool, tools: own)

    error =
      assert_raise NativePool.Error, fn ->
        NativePool.execute_stream("tool_error", big, pool: pool, tools: own) |> Enum.to_list()
      end

    assert error.type == :request_too_large
    {_resource, config} = :persistent_term.get({DSPex.NativePool, pool})
    assert :ets.info(config[:call_tools], :size) == 0
  end
end
