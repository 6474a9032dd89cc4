defmodule DSPex.NativePool.CallOptions do
  @moduledoc false
  # The options of one call (`:pool`, `:timeout`, `:tools`...), its command and its session id,
  # checked on every call's path: one walk of the list, nothing built. Like the pool's options,
  # no message quotes a value.

  import DSPex.NativePool.Options, only: [describe: 1]

  @max_ms DSPex.NativePool.Options.max_ms()

  @doc false
  # Checks that `opts` is a keyword list whose keys are all in `known`.
  @spec check_keys(term, [atom], String.t()) :: :ok | {:error, String.t()}
  def check_keys([], _known, _what), do: :ok

  def check_keys([{key, _value} | rest], known, what) when is_atom(key) do
    if key in known,
      do: check_keys(rest, known, what),
      else: {:error, "unknown option #{inspect(key)}; known: #{inspect(known)}" <> hint(key)}
  end

  def check_keys(opts, _known, what),
    do: {:error, "#{what} must be a keyword list, got #{describe(opts)}"}

  # Options that belong to other calls, or to other pools.
  defp hint(:node), do: " (:node is for pools started with cluster: true)"
  defp hint(:session), do: " (use execute_in_session/4 for a session's call)"
  defp hint(_key), do: ""

  @doc false
  # Checks a call's `:timeout` (or another option in ms, named `key`).
  @spec check_timeout(term, atom) :: {:ok, timeout} | {:error, String.t()}
  def check_timeout(value, key \\ :timeout)
  def check_timeout(:infinity, _key), do: {:ok, :infinity}

  def check_timeout(ms, _key) when is_integer(ms) and ms >= 0 and ms <= @max_ms, do: {:ok, ms}

  def check_timeout(other, key) do
    got = if is_integer(other), do: Integer.to_string(other), else: describe(other)

    {:error,
     "invalid #{inspect(key)}: expected :infinity or an integer from 0 to #{@max_ms} (ms), got #{got}"}
  end

  @doc false
  # Checks a command: a non-empty UTF-8 string or an atom, and not the pool's own.
  @spec check_command(term) :: :ok | {:error, String.t()}
  def check_command(command) when is_atom(command) and command != nil,
    do: command |> Atom.to_string() |> check_command()

  def check_command(""), do: {:error, "the command is an empty string"}

  # The cancel frame's command: a request of that name would never get a reply.
  def check_command("__cancel__"),
    do:
      {:error,
       ~s|"__cancel__" is the pool's own command (it cancels a request); it cannot be called|}

  def check_command(command) when is_binary(command) do
    if String.valid?(command),
      do: :ok,
      else: {:error, "the command is a binary that is not valid UTF-8"}
  end

  def check_command(command),
    do: {:error, "the command must be a UTF-8 string or an atom, got #{describe(command)}"}

  @doc false
  # Checks a session id: a non-empty UTF-8 string.
  @spec check_session(term) :: :ok | {:error, String.t()}
  # A session id is a key, kept by the pool and in logs and errors: never a payload.
  @max_session_bytes 1024

  def check_session(id) when is_binary(id) and id != "" do
    cond do
      byte_size(id) > @max_session_bytes -> session_error("#{byte_size(id)} bytes")
      String.valid?(id) -> :ok
      true -> session_error("a binary that is not valid UTF-8")
    end
  end

  def check_session(""), do: session_error("an empty string")
  def check_session(id), do: session_error(describe(id))

  defp session_error(got),
    do:
      {:error,
       "a session id must be a non-empty UTF-8 string of at most #{@max_session_bytes} bytes, got #{got}"}
end
