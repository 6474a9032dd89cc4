defmodule DSPex.NativePool.ReplayTest do
  # What a replacement worker is given: only what succeeded, pool-wide or per session, and an
  # LM configured in a session stays that session's.
  use DSPex.NativePool.PoolCase, async: true

  @moduletag timeout: 120_000

  defp dummy(answer), do: %{model: "dummy", answers: [%{answer: answer}]}

  defp kill_worker!(pool, worker) do
    os_pid = Enum.at(worker_os_pids(pool), worker)
    System.cmd("kill", ["-9", to_string(os_pid)])

    eventually(
      fn -> (pids = idle_os_pids(pool)) && Enum.at(pids, worker) != os_pid end,
      30_000
    )
  end

  defp answer(pool, session, id) do
    args = %{program_id: id, inputs: %{question: "?"}}

    result =
      if session,
        do: NativePool.execute_in_session(session, "execute_program", args, pool: pool),
        else: NativePool.execute("execute_program", args, pool: pool)

    case result do
      {:ok, %{"outputs" => %{"answer" => answer}}} -> answer
      other -> other
    end
  end

  test "a configure_lm or create_program that failed is not replayed on a new worker" do
    %{pool: pool} = start_pool!(startup_timeout: 60_000)
    assert {:ok, _} = NativePool.configure_lm(dummy("good"), pool: pool)

    assert {:error, {:validation_error, :invalid_args, _, _}} =
             NativePool.configure_lm(%{model: "dummy", answers: "not a list"}, pool: pool)

    assert {:ok, %{"program_id" => id}} =
             NativePool.execute("create_program", %{signature: "question -> answer"}, pool: pool)

    assert {:error, _} =
             NativePool.execute(
               "create_program",
               %{program_id: "broken", signature: "no arrow here"},
               pool: pool
             )

    kill_worker!(pool, 0)
    assert answer(pool, nil, id) == "good"

    assert {:ok, %{"programs" => programs}} = NativePool.execute("list_programs", %{}, pool: pool)
    assert Enum.map(programs, & &1["program_id"]) == [id]
  end

  test "an LM configured in a session is that session's, and survives its worker" do
    %{pool: pool} = start_pool!(startup_timeout: 60_000)
    assert {:ok, _} = NativePool.configure_lm(dummy("pool-wide"), pool: pool)

    assert {:ok, %{"session_id" => "s1"}} =
             NativePool.configure_lm(dummy("session one"), session: "s1", pool: pool)

    {:ok, %{"program_id" => id}} =
      NativePool.execute_in_session("s1", "create_program", %{signature: "question -> answer"},
        pool: pool
      )

    {:ok, %{"program_id" => anon}} =
      NativePool.execute("create_program", %{signature: "question -> answer"}, pool: pool)

    assert answer(pool, "s1", id) == "session one"
    assert answer(pool, nil, anon) == "pool-wide"

    kill_worker!(pool, 0)
    assert answer(pool, "s1", id) == "session one"
    assert answer(pool, nil, anon) == "pool-wide"
  end
end
