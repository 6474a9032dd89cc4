defmodule DSPex.NativePool.CallOptions do
  @moduledoc false
  # The options of one call (`:pool`, `:timeout`, `:tools`...), checked on every call's path:
  # one walk of the list, nothing built. Like the pool's options, no message quotes a value.

  import DSPex.NativePool.Options, only: [describe: 1]

  @max_ms DSPex.NativePool.Options.max_ms()

  @doc false
  # Checks that `opts` is a keyword list whose keys are all in `known`.
  @spec check_keys(term, [atom], String.t()) :: :ok | {:error, String.t()}
  def check_keys([], _known, _what), do: :ok

  def check_keys([{key, _value} | rest], known, what) when is_atom(key) do
    if key in known,
      do: check_keys(rest, known, what),
      else: {:error, "unknown option #{inspect(key)}; known: #{inspect(known)}"}
  end

  def check_keys(opts, _known, what),
    do: {:error, "#{what} must be a keyword list, got #{describe(opts)}"}

  @doc false
  # Checks a call's `:timeout`.
  @spec check_timeout(term) :: {:ok, timeout} | {:error, String.t()}
  def check_timeout(:infinity), do: {:ok, :infinity}

  def check_timeout(ms) when is_integer(ms) and ms >= 0 and ms <= @max_ms, do: {:ok, ms}

  def check_timeout(other) do
    got = if is_integer(other), do: Integer.to_string(other), else: describe(other)

    {:error,
     "invalid :timeout: expected :infinity or an integer from 0 to #{@max_ms} (ms), got #{got}"}
  end
end
