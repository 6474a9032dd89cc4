defmodule DSPex.NativePool.Cluster.Member do
  @moduledoc false
  # What a pool started with `cluster: true` does as a member, in its owner process: before
  # it takes calls from other nodes it adopts the cluster's records of the pool and replays
  # the pool-wide ones on its workers; then it publishes its load to every directory every
  # `@publish_ms`, which is how callers on any node choose a member without asking.

  alias DSPex.NativePool.Cluster.Directory
  alias DSPex.NativePool.Nif

  @publish_ms 100
  @ask_timeout 5_000

  @doc false
  def join(name, resource, config) do
    case records_elsewhere(name) do
      nil -> Directory.record(name, :reset)
      records -> adopt(name, records, config)
    end

    publish(name, resource, config)
  end

  # The records of a node that has a member of the pool, asked directly (this node's own
  # directory may not have heard of the others yet); nil if no node has one.
  defp records_elsewhere(name) do
    Enum.find_value(Node.list(), fn node ->
      try do
        case :erpc.call(node, Directory, :members, [name], @ask_timeout) do
          [] -> nil
          _members -> :erpc.call(node, Directory, :export, [name], @ask_timeout)
        end
      catch
        _kind, _reason -> nil
      end
    end)
  end

  defp adopt(name, records, config) do
    :ok = Directory.adopt(name, records)
    opts = [pool: name, timeout: config[:startup_timeout]]

    for {command, args} <- Directory.globals(name),
        do: DSPex.NativePool.Local.run_anonymous(command, args, opts, nil)
  end

  @doc false
  # Tells every directory how loaded this member is, and again in `@publish_ms`.
  def publish(name, resource, config) do
    Directory.publish(name, load(resource, config))
    Process.send_after(self(), :publish_load, @publish_ms)
    :ok
  end

  @doc false
  # A member's load as it publishes it.
  def load(resource, config) do
    stats = Nif.pool_stats(resource)

    %{
      pool_size: config[:pool_size],
      capacity: config[:pool_size] * config[:concurrency],
      in_flight: stats.in_flight,
      queue_length: stats.queue_length
    }
  end

  @doc false
  # Places free in a load (negative when calls wait).
  def free(load), do: load.capacity - load.in_flight - load.queue_length
end
