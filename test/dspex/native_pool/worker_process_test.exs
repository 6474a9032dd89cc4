defmodule DSPex.NativePool.WorkerProcessTest do
  use DSPex.NativePool.PoolCase, async: true

  describe "the worker's environment" do
    setup do
      start_pool!(handlers_source: :standard)
    end

    test "the worker holds no descriptor but stdio and its two protocol pipes", %{pool: pool} do
      assert {:ok, %{"fds" => fds, "links" => links}} = NativePool.execute("fds", %{}, pool: pool)

      # 0-4, plus the one os.listdir opened to list them.
      assert [0, 1, 2, 3, 4, listing_fd] = fds
      assert listing_fd > 4
      assert links["0"] == "/dev/null"

      for fd <- ~w(1 2 3 4) do
        assert links[fd] =~ ~r/^pipe:\[\d+\]$/, "fd #{fd} is #{links[fd]}"
      end

      # Four distinct pipes: stdout, stderr, requests, replies.
      assert links |> Map.take(~w(1 2 3 4)) |> Map.values() |> Enum.uniq() |> length() == 4
    end

    test "subprocesses report their real exit status (SIGCHLD is not ignored)", %{pool: pool} do
      assert {:ok, 3} = NativePool.execute("subprocess_status", %{}, pool: pool)
    end

    test "the worker runs in its own process group", %{pool: pool} do
      [os_pid] = worker_os_pids(pool)
      # Field 5 of /proc/PID/stat (after the parenthesised command) is the process group.
      stat = File.read!("/proc/#{os_pid}/stat")
      [_, after_comm] = String.split(stat, ") ", parts: 2)
      [_state, _ppid, pgrp | _] = String.split(after_comm)
      assert String.to_integer(pgrp) == os_pid
    end
  end

  describe "a command that raises SystemExit" do
    setup do
      start_pool!(handlers_source: :standard, pool_size: 2)
    end

    test "SystemExit raised by a command really exits the worker", %{pool: pool} do
      old_os_pids = worker_os_pids(pool)

      assert {:error, {:communication_error, :worker_exited, message, %{worker_id: worker_id}}} =
               NativePool.execute("system_exit", %{status: 4}, pool: pool)

      assert message =~ "exited with status 4"
      assert_replaced(pool, old_os_pids, worker_id)
    end
  end

  # The pool is back to full size: the dead worker's slot has a new, idle process; the other
  # worker is untouched.
  defp assert_replaced(pool, old_os_pids, worker_id) do
    dead = Enum.at(old_os_pids, worker_id)

    stats =
      eventually(
        fn ->
          stats = idle_stats(pool)
          stats && Enum.at(stats.workers, worker_id).os_pid != dead && stats
        end,
        10_000
      )

    refute os_process_exists?(dead)
    assert length(stats.workers) == 2

    for {worker, id} <- Enum.with_index(stats.workers) do
      if id == worker_id do
        assert worker.restarts == 1
        assert worker.last_exit =~ "exited unexpectedly"
      else
        assert worker.os_pid == Enum.at(old_os_pids, id)
        assert worker.restarts == 0
      end
    end

    # Both serve.
    for _ <- 1..4,
        do: assert({:ok, %{"status" => "ok"}} = NativePool.execute("ping", %{}, pool: pool))
  end
end
