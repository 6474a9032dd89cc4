defmodule DSPex.NativePool.Server do
  @moduledoc false
  # The process that owns a pool: it starts the NIF's pool, waits for every worker's init
  # ping, publishes the pool for callers (`:persistent_term`), logs worker lifecycle and
  # output, expires idle sessions, and stops the pool with it. It is never in a request's path.

  use GenServer
  require Logger

  alias DSPex.NativePool.{Cluster, Nif, PythonEnv, SessionPoolV2, Telemetry, Tools, WorkerSpec}

  @doc false
  def start_link(config), do: GenServer.start_link(__MODULE__, config, name: config[:name])

  @impl true
  def init(config) do
    name = config[:name]
    Logger.info("Python workers run #{config[:python]} (#{config[:python_source]})", pool: name)

    # Before exits are trapped: the check's port would otherwise leave an :EXIT message.
    with :ok <- check_dspy(config) do
      # Terminate runs on shutdown, so workers are stopped gracefully.
      Process.flag(:trap_exit, true)
      # The VM ignores SIGCHLD by default, which makes the kernel discard exit statuses; the
      # pool reaps its own children, and ports reap theirs through erl_child_setup.
      :os.set_signal(:sigchld, :default)
      Telemetry.refresh()
      # Tool calls run under it (see `DSPex.NativePool.Tools`); it stops with the pool.
      {:ok, tasks} = Task.Supervisor.start_link()
      # Calls' own tools, by request id (see `DSPex.NativePool.Call.register_tools/1`).
      call_tools = :ets.new(:dspex_call_tools, [:set, :public, read_concurrency: true])

      case start_pool(name, Keyword.merge(config, tasks: tasks, call_tools: call_tools)) do
        {:stop, _reason} = stop ->
          # Stopped before this process exits with the start's error, which the linked
          # supervisor would otherwise take for a crash and log as one.
          Supervisor.stop(tasks)
          stop

        started ->
          started
      end
    end
  end

  # `:require_dspy`, `:auto` resolved: only an environment made by the setup task is expected
  # to have DSPy.
  defp check_dspy(config) do
    required? =
      case config[:require_dspy] do
        :auto -> PythonEnv.made_by_setup?(config[:python])
        required? -> required?
      end

    with true <- required?,
         {:error, message} <-
           PythonEnv.check_dspy(config[:python], config[:python_source], config[:startup_timeout]) do
      {:stop,
       {:resource_error, :dspy_missing, message, %{pool: config[:name], python: config[:python]}}}
    else
      _ -> :ok
    end
  end

  defp start_pool(name, config) do
    case Nif.start_pool(WorkerSpec.nif_config(config), self()) do
      {:ok, resource} ->
        deadline = System.monotonic_time(:millisecond) + config[:startup_timeout] + 5_000

        case await_workers(name, config[:pool_size], deadline) do
          :ok ->
            config =
              Keyword.merge(config,
                started_at: System.monotonic_time(:millisecond),
                owner: self()
              )

            :persistent_term.put({DSPex.NativePool, name}, {resource, config})
            schedule_session_sweep(config)
            state = %{name: name, resource: resource, config: config}
            if config[:cluster], do: {:ok, state, {:continue, :join_cluster}}, else: {:ok, state}

          {:error, reason} ->
            Nif.stop_pool(resource, 0)
            {:stop, reason}
        end

      {:error, message} ->
        {:stop, {:resource_error, :startup_failed, message, %{pool: name}}}
    end
  end

  # Every worker must answer its init ping; the first that cannot start fails the pool.
  defp await_workers(_name, 0, _deadline), do: :ok

  defp await_workers(name, pending, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:dspex_native_pool, :worker_ready, worker, os_pid, restart?} ->
        worker_started(name, worker, os_pid, restart?)
        await_workers(name, pending - 1, deadline)

      {:dspex_native_pool, :worker_start_failed, worker, reason, _failures} ->
        {:error,
         {:resource_error, :worker_start_failed, reason, %{pool: name, worker_id: worker}}}

      {:dspex_native_pool, :log, worker, stream, line} ->
        log_line(name, worker, stream, line)
        await_workers(name, pending, deadline)
    after
      wait ->
        {:error,
         {:timeout_error, :startup_timeout, "#{pending} worker(s) did not become ready in time",
          %{pool: name}}}
    end
  end

  @impl true
  def handle_continue(:join_cluster, state) do
    :ok = Cluster.Member.join(state.name, state.resource, state.config)
    {:noreply, state}
  end

  @impl true
  def handle_info(:publish_load, state) do
    Cluster.Member.publish(state.name, state.resource, state.config)
    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :log, worker, stream, line}, state) do
    log_line(state.name, worker, stream, line)
    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :worker_ready, worker, os_pid, restart?}, state) do
    worker_started(state.name, worker, os_pid, restart?)
    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :worker_exited, worker, os_pid, reason}, state) do
    Telemetry.worker(:exit, %{pool: state.name, worker_id: worker, os_pid: os_pid, reason: reason})

    unless String.starts_with?(reason, "stopped with the pool") do
      Logger.warning("worker #{worker} (os pid #{os_pid}) #{reason}",
        pool: state.name,
        worker_id: worker
      )
    end

    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :worker_start_failed, worker, reason, failures}, state) do
    Logger.error("worker #{worker} failed to start (attempt #{failures}): #{reason}",
      pool: state.name,
      worker_id: worker
    )

    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :tool_call, worker, id, deadline_ms, call}, state) do
    %{config: config, resource: resource, name: name} = state

    case call do
      %{"tool_call" => %{"call" => call_id}} when is_integer(call_id) ->
        tools =
          case :ets.lookup(config[:call_tools], id) do
            [{^id, own, _caller}] -> Map.merge(config[:tools], own)
            [] -> config[:tools]
          end

        Tools.run(config[:tasks], name, resource, tools, worker, id, deadline_ms, call)

      _ ->
        Logger.warning("worker #{worker} sent a malformed tool call for request #{id}",
          pool: name,
          worker_id: worker
        )
    end

    {:noreply, state}
  end

  def handle_info({:dspex_native_pool, :warning, worker, message}, state) do
    Logger.warning(message, pool: state.name, worker_id: worker)
    {:noreply, state}
  end

  # Idle sessions are forgotten and their state freed on their workers.
  def handle_info(:sweep_sessions, state) do
    # Tools registered by callers that died before their call ended.
    table = state.config[:call_tools]

    for {id, _tools, caller} <- :ets.tab2list(table),
        not Process.alive?(caller),
        do: :ets.delete(table, id)

    for {session_id, worker} <- Nif.expire_sessions(state.resource, state.config[:session_ttl]) do
      Logger.debug("session #{inspect(session_id)} expired", pool: state.name, worker_id: worker)
      if state.config[:cluster], do: Cluster.session_expired(state.name, session_id)
      SessionPoolV2.Tracker.expired(session_id, state.name)
      args = %{"session_id" => session_id}

      Nif.submit(
        state.resource,
        make_ref(),
        "cleanup_session",
        args,
        {30_000, {:worker, worker}, :none, 0, 0}
      )
    end

    schedule_session_sweep(state.config)
    {:noreply, state}
  end

  def handle_info({:EXIT, _from, reason}, state) do
    {:stop, reason, state}
  end

  # Replies to the session clean-ups sent above.
  def handle_info({ref, _outcome}, state) when is_reference(ref), do: {:noreply, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    :persistent_term.erase({DSPex.NativePool, state.name})
    Nif.stop_pool(state.resource, state.config[:shutdown_timeout])
    :ok
  end

  defp worker_started(name, worker, os_pid, restart?) do
    Telemetry.worker(:start, %{pool: name, worker_id: worker, os_pid: os_pid, restart: restart?})

    if restart? do
      Logger.info("worker #{worker} replaced (os pid #{os_pid})", pool: name, worker_id: worker)
    else
      Logger.debug("worker #{worker} ready (os pid #{os_pid})", pool: name, worker_id: worker)
    end
  end

  defp schedule_session_sweep(config) do
    Process.send_after(self(), :sweep_sessions, min(config[:session_ttl], 60_000))
  end

  defp log_line(name, :template, stream, line),
    do: log_line(name, "template", stream, "(template) " <> line)

  defp log_line(name, slot, :stdout, line),
    do: Logger.info("[python] " <> line, pool: name, worker_id: slot)

  defp log_line(name, slot, :stderr, line),
    do: Logger.warning("[python] " <> line, pool: name, worker_id: slot)
end
