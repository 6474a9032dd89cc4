defmodule DSPex.NativePool.StreamRelay do
  @moduledoc false
  # `DSPex.NativePool.stream_to/4`: a process of the caller's (the relay) consumes the stream
  # and sends `{ref, {:chunk, value}}`, then `{ref, {:done, result}}` or `{ref, {:error,
  # reason}}`, to the receiver, on this node or another. It holds back while the receiver has
  # a window's worth of messages waiting, so a slow receiver holds the worker back too, and it
  # ends (the pool then cancels the request) as soon as the receiver dies, even while it waits
  # for the worker's next chunk.

  alias DSPex.NativePool.{Call, Error, Options, Streaming}

  # How long a remote receiver's node may take to say how many messages it has waiting.
  @ask_timeout 5_000

  def start(pid, command, args, opts) do
    ref = make_ref()
    window = window(opts)

    {:ok, relay} =
      Task.start(fn ->
        monitor = Process.monitor(pid)

        try do
          command
          |> Streaming.stream(args, opts)
          |> Enum.reduce(0, fn item, waiting ->
            waiting = hold_back(pid, monitor, window, waiting)
            send(pid, {ref, item})
            waiting + 1
          end)
        rescue
          error in Error -> send(pid, {ref, {:error, Error.to_reason(error)}})
        catch
          :exit, :receiver_down -> :ok
        end
      end)

    end_with_receiver(relay, pid)
    {:ok, ref}
  end

  # The call's :stream_window, or its pool's; a bad one fails the stream itself.
  defp window(opts) do
    {window, _session, opts} = Streaming.pop_stream_options(opts)
    pool = if Keyword.keyword?(opts), do: Keyword.get(opts, :pool, DSPex.NativePool)

    case {window, pool && Call.lookup(pool)} do
      {n, _} when is_integer(n) and n > 0 -> n
      {_, {:ok, _resource, config}} -> config[:stream_window]
      _ -> Options.defaults()[:stream_window]
    end
  end

  # A relay waiting for a chunk that may be minutes away (a generator busy before its next
  # yield) would only see the receiver's death at that chunk: this kills it at once instead,
  # and the pool cancels the request of a caller that died, as for any call.
  defp end_with_receiver(relay, pid) do
    spawn(fn ->
      receiver = Process.monitor(pid)
      relay_down = Process.monitor(relay)

      receive do
        {:DOWN, ^receiver, :process, _, _} -> Process.exit(relay, :kill)
        {:DOWN, ^relay_down, :process, _, _} -> :ok
      end
    end)
  end

  # `waiting`: at most how many messages the receiver has waiting (what it had when last
  # asked, plus what was sent since). A local receiver is asked before every message; a
  # remote one, whose node is a round trip away, only once that bound reaches the window.
  # Returns the new bound.
  defp hold_back(pid, monitor, window, waiting) do
    receive do
      {:DOWN, ^monitor, :process, _, _} -> exit(:receiver_down)
    after
      0 ->
        if node(pid) != node() and waiting < window do
          waiting
        else
          wait_for_room(pid, monitor, window)
        end
    end
  end

  defp wait_for_room(pid, monitor, window) do
    case queue_length(pid) do
      nil ->
        exit(:receiver_down)

      n when n == :infinity or n >= window ->
        receive do
          {:DOWN, ^monitor, :process, _, _} -> exit(:receiver_down)
        after
          5 -> wait_for_room(pid, monitor, window)
        end

      n ->
        n
    end
  end

  # How many messages `pid` has waiting, or nil if it is gone. A remote node too slow to say
  # counts as a full receiver (asked again); an unreachable one as a receiver gone (its
  # monitor says so too).
  defp queue_length(pid) when node(pid) == node() do
    case Process.info(pid, :message_queue_len) do
      {:message_queue_len, n} -> n
      nil -> nil
    end
  end

  defp queue_length(pid) do
    case :erpc.call(node(pid), :erlang, :process_info, [pid, :message_queue_len], @ask_timeout) do
      {:message_queue_len, n} -> n
      :undefined -> nil
    end
  catch
    :error, {:erpc, :timeout} -> :infinity
    :error, {:erpc, _} -> nil
  end
end
