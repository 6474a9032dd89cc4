defmodule DSPex.NativePool.DSPyTest do
  # Real DSPy in real workers, offline through DSPy's DummyLM: programs, sessions with worker
  # affinity, pool-wide configuration, and the SessionPoolV2 drop-in.
  use DSPex.NativePool.PoolCase, async: true

  alias DSPex.NativePool.SessionPoolV2

  @moduletag timeout: 120_000
  @dummy %{model: "dummy", answers: [%{answer: "Paris"}]}

  defp dspy_pool!(opts) do
    %{pool: pool} = start_pool!(Keyword.merge([pool_size: 2, startup_timeout: 60_000], opts))
    assert {:ok, %{"status" => "configured"}} = NativePool.configure_lm(@dummy, pool: pool)
    pool
  end

  defp create!(pool, session, extra \\ %{}) do
    args = Map.merge(%{signature: "question -> answer"}, extra)

    assert {:ok, %{"program_id" => id, "status" => "created"}} =
             NativePool.execute_in_session(session, "create_program", args, pool: pool)

    id
  end

  defp ask(pool, session, id, question \\ "Capital of France?") do
    NativePool.execute_in_session(
      session,
      "execute_program",
      %{program_id: id, inputs: %{question: question}},
      pool: pool
    )
  end

  defp worker_of(pool, session) do
    Enum.find_value(NativePool.sessions(pool), fn s -> s.id == session && s.worker end)
  end

  defp kill_worker!(pool, worker) do
    os_pid = Enum.at(worker_os_pids(pool), worker)
    System.cmd("kill", ["-9", to_string(os_pid)])
    eventually(fn -> not os_process_exists?(os_pid) end)
    os_pid
  end

  # Which workers hold programs of `session` (asks every worker).
  defp holders(pool, session) do
    {:ok, results} = NativePool.broadcast("list_programs", %{session_id: session}, pool: pool)

    for {worker, {:ok, %{"total_count" => n}}} <- results, n > 0, do: worker
  end

  test "ping reports DSPy, and configure_lm reaches every worker, also after a restart" do
    pool = dspy_pool!([])
    assert {:ok, %{"dspy_available" => true}} = NativePool.execute("ping", %{}, pool: pool)

    {:ok, stats} = NativePool.broadcast("get_stats", %{}, pool: pool)
    assert map_size(stats) == 2

    for {_worker, {:ok, s}} <- stats do
      assert %{"lm_configured" => true, "model" => "dummy"} = s
    end

    kill_worker!(pool, 0)
    eventually(fn -> all_idle?(pool) end, 30_000)
    {:ok, stats} = NativePool.broadcast("get_stats", %{}, pool: pool)

    for {_worker, {:ok, s}} <- stats do
      assert %{"lm_configured" => true, "model" => "dummy"} = s
    end
  end

  test "a session's program runs many times concurrently with other sessions, on its worker" do
    pool = dspy_pool!([])
    sessions = for i <- 1..6, do: "concurrent-#{i}"

    programs =
      for session <- sessions,
          into: %{},
          do: {session, create!(pool, session, %{program_type: "ChainOfThought"})}

    results =
      for session <- sessions, n <- 1..15 do
        {session, n}
      end
      |> Task.async_stream(
        fn {session, _n} -> {session, ask(pool, session, programs[session])} end,
        max_concurrency: 24,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, result} -> result end)

    assert length(results) == 90

    for {session, result} <- results do
      id = programs[session]

      assert {:ok, %{"program_id" => ^id, "outputs" => %{"answer" => "Paris", "reasoning" => _}}} =
               result
    end

    for session <- sessions do
      assert holders(pool, session) == [worker_of(pool, session)]
    end

    assert {:ok, %{"execution_count" => 15}} =
             NativePool.execute_in_session(
               "concurrent-1",
               "get_program_info",
               %{program_id: programs["concurrent-1"]},
               pool: pool
             )
  end

  test "when a session's worker dies between calls, the next call still answers" do
    pool = dspy_pool!([])
    id = create!(pool, "survivor")
    assert {:ok, %{"outputs" => %{"answer" => "Paris"}}} = ask(pool, "survivor", id)
    worker = worker_of(pool, "survivor")
    old = kill_worker!(pool, worker)

    # The replacement re-creates the program (and the LM) before this request runs.
    assert {:ok, %{"program_id" => ^id, "outputs" => %{"answer" => "Paris"}}} =
             ask(pool, "survivor", id)

    assert worker_of(pool, "survivor") == worker
    refute Enum.at(worker_os_pids(pool), worker) == old
    assert holders(pool, "survivor") == [worker]

    # Deleted programs are not re-created by a later restart.
    assert {:ok, %{"status" => "deleted"}} =
             NativePool.execute_in_session("survivor", "delete_program", %{program_id: id},
               pool: pool
             )

    kill_worker!(pool, worker)

    assert {:error, {:validation_error, :program_not_found, message, %{python_type: type}}} =
             ask(pool, "survivor", id)

    assert type =~ "ProgramNotFound"
    assert message =~ id
  end

  test "50 sessions on 4 workers are spread across them" do
    pool = dspy_pool!(pool_size: 4)
    for i <- 1..50, do: create!(pool, "spread-#{i}")

    counts =
      NativePool.sessions(pool)
      |> Enum.frequencies_by(& &1.worker)
      |> Map.values()
      |> Enum.sort()

    assert counts == [12, 12, 13, 13]
    assert NativePool.stats(pool).sessions == 50
  end

  test "end_session frees a session's programs on its worker" do
    pool = dspy_pool!([])
    create!(pool, "short-lived")
    assert [_worker] = holders(pool, "short-lived")
    assert :ok = NativePool.end_session("short-lived", pool: pool)
    assert holders(pool, "short-lived") == []
    refute Enum.any?(NativePool.sessions(pool), &(&1.id == "short-lived"))
    assert :ok = NativePool.end_session("never-existed", pool: pool)
  end

  test "idle sessions expire after session_ttl and are freed on their worker" do
    pool = dspy_pool!(session_ttl: 200)
    owner = Process.whereis(pool)
    create!(pool, "forgotten")
    eventually(fn -> NativePool.sessions(pool) == [] end)
    eventually(fn -> holders(pool, "forgotten") == [] end)
    # Freed by the clean-up the pool sent, not by a restart of the pool.
    assert Process.whereis(pool) == owner
  end

  test "programs created outside a session exist on every worker, also after a restart" do
    pool = dspy_pool!([])

    assert {:ok, %{"program_id" => id}} =
             NativePool.execute("create_program", %{signature: "question -> answer"}, pool: pool)

    for _ <- 1..10 do
      assert {:ok, %{"outputs" => %{"answer" => "Paris"}}} =
               NativePool.execute(
                 "execute_program",
                 %{program_id: id, inputs: %{question: "?"}},
                 pool: pool
               )
    end

    kill_worker!(pool, 1)
    eventually(fn -> all_idle?(pool) end, 30_000)
    {:ok, lists} = NativePool.broadcast("list_programs", %{}, pool: pool)

    for {_worker, {:ok, %{"programs" => programs}}} <- lists do
      assert Enum.any?(programs, &(&1["program_id"] == id))
    end
  end

  test "an API key passed to configure_lm is never echoed or logged" do
    %{pool: pool} = start_pool!(pool_size: 1)
    secret = "sk-test-#{System.unique_integer([:positive])}"

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        assert {:ok, result} =
                 NativePool.configure_lm(%{model: "openai/gpt-4o-mini", api_key: secret},
                   pool: pool
                 )

        refute inspect(result) =~ secret
        assert {:ok, stats} = NativePool.execute("get_stats", %{}, pool: pool)
        refute inspect(stats) =~ secret
      end)

    refute log =~ secret
  end

  test "without DSPy, DSPy commands fail clearly and the rest keeps working" do
    %{pool: pool} = start_pool!(env: %{"DSPEX_DISABLE_DSPY" => "1"})
    assert {:ok, %{"dspy_available" => false}} = NativePool.execute("ping", %{}, pool: pool)

    assert {:error, {:resource_error, :dspy_unavailable, message, %{python_type: type}}} =
             NativePool.configure_lm(@dummy, pool: pool)

    assert type =~ "DSPyUnavailable"
    assert message =~ "DSPy"
    assert {:ok, %{"x" => 1}} = NativePool.execute("echo", %{x: 1}, pool: pool)
  end

  test "the SessionPoolV2 drop-in keeps V2's names and result shapes" do
    pool = dspy_pool!([])

    assert {:ok, %{"program_id" => id}} =
             SessionPoolV2.execute_in_session(
               "v2",
               :create_program,
               %{id: "v2_prog", signature: "question -> answer"},
               pool_name: pool
             )

    assert id == "v2_prog"

    assert {:ok, %{"outputs" => %{"answer" => "Paris"}}} =
             SessionPoolV2.execute_in_session(
               "v2",
               :execute_program,
               %{program_id: id, inputs: %{question: "?"}},
               pool_name: pool,
               timeout: 30_000
             )

    assert {:ok, %{"status" => "ok"}} =
             SessionPoolV2.execute_anonymous(:ping, %{}, pool_name: pool)

    assert %{session_id: "v2", operations: 2, started_at: started, last_activity: last} =
             Enum.find(SessionPoolV2.get_session_info(), &(&1.session_id == "v2"))

    assert is_integer(started) and last >= started

    assert %{
             pool_size: 2,
             max_overflow: 0,
             active_sessions: 1,
             sessions: [_],
             uptime_ms: uptime,
             session_affinity: %{active_sessions: 1, workers: %{"v2" => _worker}}
           } = SessionPoolV2.get_pool_status(pool)

    assert uptime >= 0
    assert {:ok, :healthy} = SessionPoolV2.health_check(pool)
    assert :ok = SessionPoolV2.end_session("v2", pool_name: pool)
    refute Enum.any?(SessionPoolV2.get_session_info(), &(&1.session_id == "v2"))
    assert NativePool.sessions(pool) == []
  end
end
