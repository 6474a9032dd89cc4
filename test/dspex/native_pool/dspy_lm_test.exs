defmodule DSPex.NativePool.DSPyLMTest do
  # What a DSPy call against a real LM reports beyond its outputs: the tokens it used, whether
  # DSPy's cache answered it, where that cache lives, and LM failures as error types a caller
  # can match. DSPy talks to the project's local OpenAI-compatible server over HTTP.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.LMServer

  @moduletag timeout: 120_000

  # One worker per test; `concurrency` above 1 runs the async variant of execute_program.
  defp program!(server, opts \\ [], lm \\ %{}) do
    %{pool: pool} = start_pool!(Keyword.merge([startup_timeout: 60_000], opts))
    lm = LMServer.lm_config(server, Map.merge(%{num_retries: 0}, lm))
    assert {:ok, _} = NativePool.configure_lm(lm, pool: pool)

    {:ok, %{"program_id" => id}} =
      NativePool.execute("create_program", %{signature: "question -> answer"}, pool: pool)

    {pool, id}
  end

  defp ask(pool, id, question \\ "6*7?") do
    NativePool.execute("execute_program", %{program_id: id, inputs: %{question: question}},
      pool: pool
    )
  end

  describe "usage and cache" do
    for concurrency <- [1, 8] do
      test "a result carries the tokens the LM reported, and cached: false (concurrency #{concurrency})" do
        server = LMServer.start!(answer: "42")
        {pool, id} = program!(server, concurrency: unquote(concurrency))

        assert {:ok, %{"outputs" => %{"answer" => "42"}, "usage" => usage, "cached" => false}} =
                 ask(pool, id)

        assert %{
                 "openai/test-model" => %{
                   "prompt_tokens" => 10,
                   "completion_tokens" => 5,
                   "total_tokens" => 15
                 }
               } = usage
      end
    end

    test "with DSPy's cache on, a repeated call is cached: true and reports no tokens", ctx do
      server = LMServer.start!(answer: "42")
      dir = Path.join(System.tmp_dir!(), "dspex_cache_#{ctx.test |> :erlang.phash2()}")
      File.rm_rf!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      {pool, id} = program!(server, [dspy_cache_dir: dir], %{cache: true})
      question = "unique #{System.unique_integer([:positive])}"

      assert {:ok, %{"cached" => false, "usage" => %{"openai/test-model" => _}}} =
               ask(pool, id, question)

      assert {:ok, %{"cached" => true, "usage" => usage}} = ask(pool, id, question)
      assert usage == %{}
      assert %{"requests" => 1} = LMServer.stats(server)
      # The cache lives where the pool said.
      assert File.ls!(dir) != []
    end
  end

  describe "LM failures as error types" do
    for {status, code, category, type} <- [
          {429, nil, :resource_error, :lm_rate_limited},
          {401, "invalid_api_key", :system_error, :lm_auth_failed},
          {500, nil, :system_error, :lm_server_error},
          {400, "context_length_exceeded", :validation_error, :lm_context_window_exceeded},
          {404, "model_not_found", :validation_error, :lm_invalid_request},
          {400, "invalid_request_error", :validation_error, :lm_invalid_request}
        ] do
      test "HTTP #{status} #{code} is #{inspect(type)}" do
        server = LMServer.start!()
        {pool, id} = program!(server, concurrency: 4)
        LMServer.configure(server, %{status: unquote(status), error_code: unquote(code)})

        assert {:error, {unquote(category), unquote(type), message, context}} = ask(pool, id)
        assert is_binary(message) and message != ""
        assert context.python_type =~ "dspy."
        assert is_boolean(context.retryable)
        refute message =~ "test-key"
        # The worker carries on.
        LMServer.configure(server, %{status: 200, error_code: nil})
        assert {:ok, %{"outputs" => _}} = ask(pool, id)
      end
    end

    test "a rate limit says how long the provider asked to wait, and that a retry may help" do
      server = LMServer.start!()
      {pool, id} = program!(server)
      LMServer.configure(server, %{status: 429, retry_after: 7})

      assert {:error, {:resource_error, :lm_rate_limited, _, context}} = ask(pool, id)
      assert context.retryable == true
      assert context.retry_after == 7.0
    end

    test "an LM with no API key anywhere is :lm_not_configured, and the server is never asked" do
      server = LMServer.start!()
      # An empty variable hides any key the VM's environment has.
      {pool, id} = program!(server, [env: %{"OPENAI_API_KEY" => ""}], %{api_key: nil})

      assert {:error, {:validation_error, :lm_not_configured, message, context}} = ask(pool, id)
      assert message =~ "API key"
      assert context.retryable == false
      assert %{"requests" => 0} = LMServer.stats(server)
    end

    test "an LM nobody listens on is :lm_unreachable" do
      server = LMServer.start!()
      {pool, id} = program!(server)
      closed = %{server | api_base: "http://127.0.0.1:#{free_port()}/v1"}
      lm = LMServer.lm_config(closed, %{num_retries: 0})

      assert {:error, {:communication_error, :lm_unreachable, _, _}} =
               NativePool.execute(
                 "execute_program",
                 %{program_id: id, inputs: %{question: "?"}, lm: lm},
                 pool: pool
               )
    end

    test "an answer that does not fit the signature is :lm_output_unparseable" do
      server = LMServer.start!()
      {pool, id} = program!(server)
      LMServer.configure(server, %{raw: "no fields here at all"})

      assert {:error, {:system_error, :lm_output_unparseable, _, context}} = ask(pool, id)
      assert context.python_type =~ "AdapterParseError"
    end
  end

  # A port that was free a moment ago: listened on, then closed.
  defp free_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end

  describe "streaming" do
    for concurrency <- [1, 4] do
      test "execute_program with stream: true streams the answer's tokens, then the result (concurrency #{concurrency})" do
        server = LMServer.start!(answer: "forty two, said the server")
        {pool, id} = program!(server, concurrency: unquote(concurrency))

        items =
          NativePool.execute_stream(
            "execute_program",
            %{program_id: id, inputs: %{question: "6*7?"}, stream: true},
            pool: pool
          )
          |> Enum.to_list()

        {chunks, [{:done, result}]} = Enum.split(items, -1)
        texts = for {:chunk, %{"field" => "answer", "text" => text}} <- chunks, do: text
        assert length(texts) > 1
        assert Enum.join(texts) =~ "forty two, said the server"

        assert %{"outputs" => %{"answer" => "forty two, said the server"}, "cached" => false} =
                 result

        # The same call without streaming: the result alone.
        assert {:ok, %{"outputs" => %{"answer" => "forty two, said the server"}}} =
                 NativePool.execute(
                   "execute_program",
                   %{program_id: id, inputs: %{question: "6*7?"}, stream: true},
                   pool: pool
                 )
      end
    end
  end

  test "the first tokens reach Elixir while the LM is still sending" do
    server = LMServer.start!(answer: "forty two, said the server after some thought")
    {pool, id} = program!(server, concurrency: 4)
    LMServer.configure(server, %{hold: true})

    args = %{program_id: id, inputs: %{question: "6*7?"}, stream: true}
    assert {:ok, ref} = NativePool.stream_to(self(), "execute_program", args, pool: pool)

    # The server holds the end of its reply back; a token of the answer arrives meanwhile.
    assert_receive {^ref, {:chunk, %{"field" => "answer", "text" => _}}}, 10_000
    refute_received {^ref, {:done, _}}
    LMServer.release(server)
    assert_receive {^ref, {:done, %{"outputs" => %{"answer" => answer}}}}, 10_000
    assert answer == "forty two, said the server after some thought"
  end
end
