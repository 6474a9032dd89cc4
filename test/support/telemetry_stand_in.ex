defmodule :telemetry do
  @moduledoc false
  # A stand-in for the :telemetry application, which cannot be fetched here. It implements the
  # part of its API the pool uses (execute/3) and the part tests use (attach/4, detach/1), with
  # the same calling conventions, so the pool's real emitting path runs under test.

  def attach(id, event, fun, config) do
    handlers = :persistent_term.get({__MODULE__, :handlers}, %{})
    :persistent_term.put({__MODULE__, :handlers}, Map.put(handlers, id, {event, fun, config}))
    :ok
  end

  def detach(id) do
    handlers = :persistent_term.get({__MODULE__, :handlers}, %{})
    :persistent_term.put({__MODULE__, :handlers}, Map.delete(handlers, id))
    :ok
  end

  def execute(event, measurements, metadata) do
    for {_id, {^event, fun, config}} <- :persistent_term.get({__MODULE__, :handlers}, %{}) do
      fun.(event, measurements, metadata, config)
    end

    :ok
  end
end
