defmodule DSPex.NativePool.DSPyProgressTest do
  # evaluate and optimize through execute_stream, against the local LM server over HTTP:
  # a progress chunk per example before the result, in a session as in the pool, and
  # the LM's failures typed as they are through execute/3.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.LMServer

  @moduletag timeout: 180_000

  @handlers ~S'''
  def exact_match(args):
      return args["example"]["answer"] == args["prediction"]["answer"]
  '''

  setup do
    server = LMServer.start!(answer: "42")
    %{pool: pool} = start_pool!(handlers_source: @handlers, startup_timeout: 60_000, pool_size: 2)
    lm = LMServer.lm_config(server, %{num_retries: 0, cache: false})
    assert {:ok, _} = NativePool.configure_lm(lm, pool: pool)
    %{server: server, pool: pool}
  end

  defp create!(pool, opts \\ []) do
    args = %{program_id: "qa", signature: "question -> answer"}

    assert {:ok, %{"program_id" => "qa"}} =
             (case opts[:session] do
                nil ->
                  NativePool.execute("create_program", args, pool: pool)

                session ->
                  NativePool.execute_in_session(session, "create_program", args, pool: pool)
              end)

    "qa"
  end

  test "evaluate streams each example's running score, then the result", %{pool: pool} do
    id = create!(pool)
    devset = [%{question: "6*7?", answer: "42"}, %{question: "3+4?", answer: "7"}]
    args = %{program_id: id, devset: devset, metric: "exact_match"}

    assert NativePool.execute_stream("evaluate", args, pool: pool) |> Enum.to_list() == [
             {:chunk, %{"done" => 1, "total" => 2, "score" => 100.0, "errors" => 0}},
             {:chunk, %{"done" => 2, "total" => 2, "score" => 50.0, "errors" => 0}},
             {:done, %{"score" => 50.0, "count" => 2, "errors" => 0}}
           ]

    # The same command through execute/3 just returns.
    assert {:ok, %{"score" => 50.0, "count" => 2}} =
             NativePool.execute("evaluate", args, pool: pool)
  end

  test "a failing LM stops a streamed evaluation with its typed error", %{
    server: server,
    pool: pool
  } do
    id = create!(pool)
    LMServer.configure(server, %{status: 500})
    devset = [%{question: "a", answer: "42"}, %{question: "b", answer: "42"}]
    args = %{program_id: id, devset: devset, metric: "exact_match", max_errors: 1}

    error =
      assert_raise NativePool.Error, fn ->
        NativePool.execute_stream("evaluate", args, pool: pool) |> Enum.to_list()
      end

    assert {:system_error, :lm_server_error, _, %{retryable: _}} =
             NativePool.Error.to_reason(error)

    # With room for errors, failed examples score 0 and are counted.
    assert [{:chunk, %{"errors" => 1}}, {:chunk, %{"errors" => 2}}, {:done, done}] =
             NativePool.execute_stream("evaluate", %{args | max_errors: 3}, pool: pool)
             |> Enum.to_list()

    assert done == %{"score" => 0.0, "count" => 2, "errors" => 2}
  end

  test "optimize streams in a session; what it learned stays in that session", %{
    server: server,
    pool: pool
  } do
    id = create!(pool, session: "s1")
    trainset = for q <- ["6*7?", "40+2?", "50-8?"], do: %{question: q, answer: "42"}

    args = %{
      program_id: id,
      trainset: trainset,
      metric: "exact_match",
      max_bootstrapped_demos: 2,
      max_labeled_demos: 0
    }

    LMServer.reset(server)

    # Two demos wanted: the third example is never tried.
    assert [
             {:chunk, %{"done" => 1, "total" => 3, "bootstrapped" => 1}},
             {:chunk, %{"done" => 2, "total" => 3, "bootstrapped" => 2}},
             {:done, %{"program_id" => "qa_optimized", "demos" => 2}}
           ] =
             NativePool.execute_stream("optimize", args, pool: pool, session: "s1")
             |> Enum.to_list()

    assert %{"requests" => 2} = LMServer.stats(server)

    run = %{program_id: "qa_optimized", inputs: %{question: "?"}}

    assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
             NativePool.execute_in_session("s1", "execute_program", run, pool: pool)

    assert {:error, {:validation_error, :program_not_found, message, _}} =
             NativePool.execute("execute_program", run, pool: pool)

    assert message =~ "qa_optimized"

    # Remembered for the session: its worker's replacement gets it back.
    [%{id: "s1", worker: worker}] = NativePool.sessions(pool)
    os_pid = Enum.at(worker_os_pids(pool), worker)
    System.cmd("kill", ["-9", to_string(os_pid)])
    eventually(fn -> (pids = idle_os_pids(pool)) && Enum.at(pids, worker) != os_pid end)

    assert {:ok, %{"outputs" => %{"answer" => "42"}}} =
             NativePool.execute_in_session("s1", "execute_program", run, pool: pool)

    assert LMServer.prompts(server) =~ "40+2?"
  end

  test "a pool-wide command through execute_stream runs on every worker", %{pool: pool} do
    args = %{program_id: "everywhere", signature: "question -> answer"}

    assert [{:done, %{"program_id" => "everywhere"}}] =
             NativePool.execute_stream("create_program", args, pool: pool) |> Enum.to_list()

    assert {:ok, %{0 => {:ok, _}, 1 => {:ok, _}}} =
             NativePool.broadcast(
               "execute_program",
               %{program_id: "everywhere", inputs: %{question: "?"}},
               pool: pool
             )
  end

  test "a bad session id is refused before anything runs", %{pool: pool} do
    error =
      assert_raise NativePool.Error, fn ->
        NativePool.execute_stream("echo", %{}, pool: pool, session: "") |> Enum.to_list()
      end

    assert {:validation_error, :invalid_session, _, _} = NativePool.Error.to_reason(error)
  end
end
