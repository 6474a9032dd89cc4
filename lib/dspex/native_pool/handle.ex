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
end
