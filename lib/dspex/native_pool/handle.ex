defmodule DSPex.NativePool.Handle do
  @moduledoc "A request started with `DSPex.NativePool.execute_async/3`, for `DSPex.NativePool.await/2`."
  @enforce_keys [:ref, :ticket, :deadline, :timeout, :owner, :context]
  defstruct [:ref, :ticket, :deadline, :timeout, :owner, :context]

  @type t :: %__MODULE__{
          ref: reference,
          ticket: reference,
          deadline: integer | :infinity,
          timeout: timeout,
          owner: pid,
          context: map
        }

  alias DSPex.NativePool.{Call, CallOptions, Nif}

  @doc false
  # Waits for the handle's reply (see `DSPex.NativePool.await/2`): until its deadline, or
  # `timeout` ms if that comes first; a handle is claimed once.
  def await(%__MODULE__{ref: ref, ticket: ticket, context: context} = handle, timeout) do
    with {:ok, timeout} <- await_timeout(timeout, context),
         :ok <- claim(ticket, context) do
      wait = Call.min_timeout(Call.remaining(handle.deadline), timeout)
      shown = Call.min_timeout(handle.timeout, timeout)
      Call.await_reply(ref, ticket, wait, shown, context)
    end
  end

  defp await_timeout(timeout, context) do
    case CallOptions.check_timeout(timeout) do
      {:ok, timeout} -> {:ok, timeout}
      {:error, message} -> Call.invalid(:invalid_options, message, context)
    end
  end

  defp claim(ticket, context) do
    if Nif.claim_await(ticket),
      do: :ok,
      else: Call.invalid(:already_awaited, "this handle was already awaited", context)
  end
end
