defmodule DSPex.NativePool.TestLogForwarder do
  @moduledoc false
  # An Erlang `:logger` handler that forwards the log events of one pool (those whose metadata
  # has `pool: name`) to a test process as `{:pool_log, pool, level, text, metadata}`.
  #
  # Worker output reaches Logger asynchronously (a reader thread per stream, then a message to
  # the pool's GenServer), so a test that expects a line waits for this message instead of
  # sleeping. `:logger` calls handlers in the process that logs, so this costs one `send/2`.

  @doc "Forwards `pool`'s log events to the calling process until `detach/1` or the test ends."
  def attach(pool) do
    id = :"np_log_forwarder_#{System.unique_integer([:positive])}"
    config = %{level: :all, config: %{pid: self(), pool: pool}}
    :ok = :logger.add_handler(id, __MODULE__, config)
    ExUnit.Callbacks.on_exit(fn -> :logger.remove_handler(id) end)
    id
  end

  @doc "Stops forwarding and drops the forwarded events already in the mailbox."
  def detach(id) do
    :ok = :logger.remove_handler(id)
    drain()
  end

  defp drain do
    receive do
      {:pool_log, _pool, _level, _text, _meta} -> drain()
    after
      0 -> :ok
    end
  end

  ## :logger handler callback

  @doc false
  def log(%{level: level, msg: msg, meta: %{pool: pool} = meta}, %{
        config: %{pid: pid, pool: pool}
      }) do
    send(pid, {:pool_log, pool, level, text(msg), meta})
    :ok
  end

  def log(_event, _config), do: :ok

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({:report, report}), do: inspect(report)

  defp text({format, args}) when is_list(args),
    do: format |> :io_lib.format(args) |> IO.chardata_to_string()

  defp text(other), do: inspect(other)
end
