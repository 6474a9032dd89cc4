defmodule Bench.V2.Pool do
  @moduledoc """
  A checkout pool in the manner of NimblePool, which DSPex V2 was built on.

  The pool process owns the workers. A caller sends `{:checkout, ...}`, the pool runs the worker
  module's `handle_checkout/2` (V2: `Port.connect/2` the port to the caller) and replies with the
  worker; the caller runs its function with it and sends `{:checkin, ...}`, on which the pool
  runs `handle_checkin/2` (V2: `Port.connect/2` back to the pool). Workers are started one after
  another in `init/1`, as NimblePool does with `lazy: false`. Callers wait in FIFO order.

  The worker module implements `init_worker/1`, `handle_checkout/2`, `handle_checkin/2`,
  `handle_info/2` and `terminate_worker/1` (see `Bench.V2.Worker`).
  """

  use GenServer

  @doc "Options: `:worker` (`{module, arg}`), `:pool_size`, `:name`."
  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.fetch!(opts, :name))
  end

  def stop(pool), do: GenServer.stop(pool, :normal, 30_000)

  @doc "Every worker's state, idle or not (for introspection, e.g. OS pids)."
  def workers(pool), do: GenServer.call(pool, :workers)

  @doc """
  Runs `fun.(client_state)` with a checked-out worker, in the calling process. `fun` returns
  `{result, checkin_state}`; `checkin_state` goes to `handle_checkin/2` and `result` is returned.
  """
  def checkout!(pool, fun, timeout \\ 60_000) do
    pid = GenServer.whereis(pool) || exit({:noproc, {__MODULE__, :checkout!, [pool]}})
    ref = Process.monitor(pid)
    send(pid, {:checkout, {self(), ref}})

    receive do
      {^ref, client_state} -> run_checked_out(pid, ref, fun, client_state)
      {:DOWN, ^ref, _, _, reason} -> exit({reason, {__MODULE__, :checkout!, [pool]}})
    after
      timeout ->
        send(pid, {:cancel, ref})
        Process.demonitor(ref, [:flush])
        exit({:timeout, {__MODULE__, :checkout!, [pool]}})
    end
  end

  defp run_checked_out(pid, ref, fun, client_state) do
    {result, checkin_state} = fun.(client_state)
    send(pid, {:checkin, ref, checkin_state})
    result
  catch
    kind, reason ->
      send(pid, {:checkin, ref, :close})
      :erlang.raise(kind, reason, __STACKTRACE__)
  after
    Process.demonitor(ref, [:flush])
  end

  ## Pool process

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    {module, arg} = Keyword.fetch!(opts, :worker)
    size = Keyword.fetch!(opts, :pool_size)
    workers = for _ <- 1..size, do: start_worker!(module, arg)

    {:ok,
     %{
       module: module,
       arg: arg,
       idle: :queue.from_list(workers),
       waiting: :queue.new(),
       # checkout ref => {worker, monitor of the caller}
       busy: %{}
     }}
  end

  defp start_worker!(module, arg) do
    case module.init_worker(arg) do
      {:ok, worker} -> worker
      {:error, reason} -> exit({:worker_start_failed, reason})
    end
  end

  @impl true
  def handle_call(:workers, _from, state) do
    busy = for {_ref, {worker, _mon}} <- state.busy, do: worker
    {:reply, :queue.to_list(state.idle) ++ busy, state}
  end

  @impl true
  def handle_info({:checkout, {pid, ref} = from}, state) do
    case :queue.out(state.idle) do
      {{:value, worker}, idle} -> {:noreply, hand_out(worker, from, %{state | idle: idle})}
      {:empty, _} -> {:noreply, %{state | waiting: :queue.in({pid, ref}, state.waiting)}}
    end
  end

  def handle_info({:checkin, ref, checkin_state}, state) do
    case Map.pop(state.busy, ref) do
      {nil, _busy} ->
        {:noreply, state}

      {{worker, mon}, busy} ->
        Process.demonitor(mon, [:flush])
        state = %{state | busy: busy}

        case state.module.handle_checkin(checkin_state, worker) do
          {:ok, worker} -> {:noreply, next(worker, state)}
          {:remove, _reason} -> {:noreply, replace(worker, state)}
        end
    end
  end

  # A caller died while holding a worker: its port may hold half a conversation, so replace it.
  def handle_info({:DOWN, mon, :process, _pid, _reason}, state) do
    case Enum.find(state.busy, fn {_ref, {_worker, m}} -> m == mon end) do
      {ref, {worker, _}} ->
        {:noreply, replace(worker, %{state | busy: Map.delete(state.busy, ref)})}

      nil ->
        {:noreply, state}
    end
  end

  def handle_info({:cancel, ref}, state) do
    waiting = :queue.filter(fn {_pid, r} -> r != ref end, state.waiting)
    {:noreply, %{state | waiting: waiting}}
  end

  def handle_info({:EXIT, _from, :normal}, state), do: {:noreply, state}

  # Anything else concerns a worker (its port exited): the worker module decides.
  def handle_info(message, state) do
    idle =
      :queue.filter(
        fn worker ->
          case state.module.handle_info(message, worker) do
            {:ok, _} -> true
            {:remove, _} -> false
          end
        end,
        state.idle
      )

    {:noreply, %{state | idle: idle}}
  end

  @impl true
  def terminate(_reason, state) do
    busy = for {_ref, {worker, _}} <- state.busy, do: worker
    Enum.each(:queue.to_list(state.idle) ++ busy, &state.module.terminate_worker/1)
  end

  # The next live waiting caller gets the worker; otherwise it goes back to the idle queue.
  defp next(worker, state) do
    case :queue.out(state.waiting) do
      {{:value, {pid, ref}}, waiting} ->
        state = %{state | waiting: waiting}

        if Process.alive?(pid),
          do: hand_out(worker, {pid, ref}, state),
          else: next(worker, state)

      {:empty, _} ->
        %{state | idle: :queue.in(worker, state.idle)}
    end
  end

  defp hand_out(worker, {pid, ref} = from, state) do
    case state.module.handle_checkout(from, worker) do
      {:ok, client_state, worker} ->
        mon = Process.monitor(pid)
        send(pid, {ref, client_state})
        %{state | busy: Map.put(state.busy, ref, {worker, mon})}

      {:remove, _reason} ->
        # The caller stays queued for the replacement.
        state = %{state | waiting: :queue.in_r(from, state.waiting)}
        replace(worker, state)
    end
  end

  defp replace(worker, state) do
    state.module.terminate_worker(worker)
    next(start_worker!(state.module, state.arg), state)
  end
end
