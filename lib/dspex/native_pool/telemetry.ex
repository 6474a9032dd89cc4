defmodule DSPex.NativePool.Telemetry do
  @moduledoc """
  Telemetry events of `DSPex.NativePool`, emitted through `:telemetry` when that application is
  loaded (it is an optional dependency: nothing is emitted without it).

  | event | measurements | metadata |
  |---|---|---|
  | `[:dspex, :native_pool, :request, :start]` | `:system_time`, `:monotonic_time` | `:pool`, `:command` |
  | `[:dspex, :native_pool, :request, :stop]` | `:duration` (native units) | `:pool`, `:command`, `:worker_id` |
  | `[:dspex, :native_pool, :request, :exception]` | `:duration` | `:pool`, `:command`, `:worker_id`, `:kind` (`:error`), `:reason` (the error tuple) |
  | `[:dspex, :native_pool, :queue, :rejected]` | `:count` (1) | `:pool`, `:command`, `:reason` (`:pool_saturated`, `:pool_unavailable`, `:pool_closed`) |
  | `[:dspex, :native_pool, :worker, :start]` | `:system_time` | `:pool`, `:worker_id`, `:os_pid`, `:restart` |
  | `[:dspex, :native_pool, :worker, :exit]` | `:system_time` | `:pool`, `:worker_id`, `:os_pid`, `:reason` |
  | `[:dspex, :native_pool, :tool, :stop]` | `:duration` (native units) | `:pool`, `:worker_id`, `:request_id`, `:tool`, `:ok` |
  | `[:dspex, :native_pool, :stream, :stop]` | `:duration` (native units, from the start to the end of the stream), `:chunks` (taken by the consumer) | `:pool`, `:command`, `:outcome` (`:done`, `:error`, `:halted`) |
  | `[:dspex, :native_pool, :cluster, :session_moved]` | `:system_time` | `:pool`, `:session_id`, `:node` (where it is re-created) |

  Request and stream events are emitted in the calling process; worker events in the pool's process;
  tool events in the process that ran the tool call (under the pool's task supervisor);
  `:session_moved` in the calling process, when a session whose node went away is re-created
  on another member of a clustered pool.
  """

  # :telemetry is optional and cannot be a dependency here (no hex).
  @compile {:no_warn_undefined, :telemetry}

  @doc false
  # Checked once per pool start, so a call pays one persistent_term read.
  def refresh do
    :persistent_term.put({__MODULE__, :enabled}, Code.ensure_loaded?(:telemetry))
  end

  @doc false
  def enabled?, do: :persistent_term.get({__MODULE__, :enabled}, false)

  @doc false
  def start(context) do
    if enabled?() do
      now = System.monotonic_time()

      emit([:request, :start], %{system_time: System.system_time(), monotonic_time: now}, %{
        pool: context.pool,
        command: context.command
      })

      now
    end
  end

  @doc false
  # Returns `result`, so a call can end with it.
  def stop(nil, _context, result), do: result

  def stop(started, context, result) do
    duration = System.monotonic_time() - started
    metadata = %{pool: context.pool, command: context.command}

    case result do
      {:ok, _} ->
        emit([:request, :stop], %{duration: duration}, metadata)

      {:error, {_category, _type, _message, error_context} = reason} ->
        metadata =
          Map.merge(metadata, %{
            worker_id: Map.get(error_context, :worker_id),
            kind: :error,
            reason: reason
          })

        emit([:request, :exception], %{duration: duration}, metadata)
    end

    result
  end

  @doc false
  def rejected(context, {_category, type, _message, _context}) do
    if type in [:pool_saturated, :pool_unavailable, :pool_closed] do
      emit([:queue, :rejected], %{count: 1}, %{
        pool: context.pool,
        command: context.command,
        reason: type
      })
    end
  end

  def rejected(_context, _error), do: :ok

  @doc false
  def worker(event, metadata) do
    emit([:worker, event], %{system_time: System.system_time()}, metadata)
  end

  @doc false
  def tool(measurements, metadata), do: emit([:tool, :stop], measurements, metadata)

  @doc false
  def stream(measurements, metadata), do: emit([:stream, :stop], measurements, metadata)

  @doc false
  def session_moved(pool, session_id, node) do
    emit([:cluster, :session_moved], %{system_time: System.system_time()}, %{
      pool: pool,
      session_id: session_id,
      node: node
    })
  end

  defp emit(event, measurements, metadata) do
    if enabled?() do
      :telemetry.execute([:dspex, :native_pool | event], measurements, metadata)
    end

    :ok
  end
end
