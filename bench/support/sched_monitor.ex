defmodule Bench.SchedMonitor do
  @moduledoc """
  Watches for processes that hold a normal scheduler for 1 ms or more without yielding
  (`:erlang.system_monitor/2` with `{:long_schedule, 1}`), for the whole run. Every event is tagged
  with the phase the harness was in (`phase/1`), e.g. `{:native, case}`, so an event can be put
  down to the library, to V2, or to the machine (events while `raw_limit` runs, when the VM is
  idle, measure how much the shared machine itself preempts the VM's threads).
  """

  use GenServer

  @max_events 5_000

  def start_link(_opts \\ []), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc "Sets the phase that the following events are attributed to."
  def phase(label), do: GenServer.call(__MODULE__, {:phase, label})

  @doc "All events so far: `%{ms, phase, in, out, who}`, longest first."
  def events, do: GenServer.call(__MODULE__, :events)

  def stop do
    :erlang.system_monitor(:undefined)
    GenServer.stop(__MODULE__)
  end

  @impl true
  def init(nil) do
    :erlang.system_monitor(self(), [{:long_schedule, 1}])
    {:ok, %{phase: :setup, events: [], count: 0}}
  end

  @impl true
  def handle_call({:phase, label}, _from, state), do: {:reply, :ok, %{state | phase: label}}

  def handle_call(:events, _from, state) do
    {:reply, Enum.sort_by(state.events, & &1.ms, :desc), state}
  end

  @impl true
  def handle_info({:monitor, who, :long_schedule, info}, state) when state.count < @max_events do
    event = %{
      ms: info[:timeout],
      phase: state.phase,
      in: info[:in] || info[:port_op],
      out: info[:out],
      who: if(is_port(who), do: :port, else: :process)
    }

    {:noreply, %{state | events: [event | state.events], count: state.count + 1}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  @doc """
  True if an event's process was scheduled in or out inside the library (`DSPex.NativePool` or
  its NIF module): the call that held the scheduler was the library's.
  """
  def library_event?(%{in: inn, out: out}), do: library_mfa?(inn) or library_mfa?(out)

  defp library_mfa?({module, _f, _a}),
    do: module in [DSPex.NativePool, DSPex.NativePool.Nif]

  defp library_mfa?(_), do: false
end
