defmodule DSPex.NativePool.DSPy do
  @moduledoc false
  # The bridge's DSPy commands that define state: the one place on the Elixir side that knows
  # their names and arguments. `DSPex.NativePool.Replay` asks it what a call sets up, and
  # carries that out for any command.
  #
  # * Pool-wide (`configure_lm`, `create_program`, `load_program`, `import_session`,
  #   `delete_program`, `reset_state` outside a session): run on every worker; all but the
  #   last two are remembered and replayed on every worker started later; deleting forgets
  #   first.
  # * In a session (the same but `reset_state`): remembered for the session, replayed on its
  #   worker's replacement before the session's next request.
  #
  # `optimize` runs on one worker; what it learned is then loaded (`load_program`) pool-wide or
  # into the session, and so replayed like any other program.

  @pool_wide [
    "configure_lm",
    "create_program",
    "load_program",
    "import_session",
    "delete_program",
    "reset_state"
  ]

  @typedoc "A key the pool remembers state under."
  @type key :: String.t()

  @doc false
  def pool_wide, do: @pool_wide

  @doc false
  @spec pool_wide?(String.t()) :: boolean
  def pool_wide?(command), do: command in @pool_wide

  @doc false
  # The arguments as they must be sent and remembered: a create_program without an id gets
  # one here, so that its replay keeps it. `{:error, message}` for an id the bridge refuses.
  @spec prepare(String.t(), map) :: {:ok, map} | {:error, String.t()}
  def prepare("load_program", args) do
    case program_id(args) || program_id(definition(args)) do
      nil -> {:ok, Map.put(args, "program_id", new_program_id())}
      id -> with {:ok, _key} <- program_key(%{"program_id" => id}), do: {:ok, put_id(args, id)}
    end
  end

  def prepare("create_program", args) do
    case program_id(args) do
      nil -> {:ok, Map.put(args, "program_id", new_program_id())}
      _id -> with {:ok, _key} <- program_key(args), do: {:ok, args}
    end
  end

  def prepare("delete_program", args),
    do: with({:ok, _key} <- program_key(args), do: {:ok, args})

  def prepare(_command, args), do: {:ok, args}

  @doc false
  # The key prefix a pool-wide call forgets before it runs (a worker started meanwhile must not
  # get the state back), or nil.
  @spec forgets(String.t(), map) :: key | nil
  def forgets("delete_program", args),
    do: if(program_id(args) != nil, do: elem(program_key(args), 1))

  def forgets("reset_state", _args), do: "program:"
  def forgets(_command, _args), do: nil

  @doc false
  # The key a successful pool-wide call is remembered under, or nil.
  @spec remembers(String.t(), map) :: key | nil
  def remembers("configure_lm", _args), do: "configure_lm"

  def remembers(command, args) when command in ["create_program", "load_program"],
    do: elem(program_key(args), 1)

  def remembers("import_session", args), do: import_key(args)
  def remembers(_command, _args), do: nil

  @doc false
  # What a session keeps of a successful call: `{:put, key}`, `{:delete, key}` or nil.
  @spec session_record(String.t(), map) :: {:put, key} | {:delete, key} | nil
  def session_record("configure_lm", _args), do: {:put, "configure_lm"}

  def session_record(command, args) when command in ["create_program", "load_program"],
    do: {:put, elem(program_key(args), 1)}

  def session_record("import_session", args), do: {:put, import_key(args)}
  def session_record("delete_program", args), do: {:delete, elem(program_key(args), 1)}
  def session_record(_command, _args), do: nil

  # An import is remembered as a whole, under a key of its own (its programs' ids).
  defp import_key(args) do
    programs = Map.get(args, "programs") || Map.get(args, :programs) || []
    "import:" <> Integer.to_string(:erlang.phash2(programs), 36)
  end

  @doc false
  # The call that must follow a successful one, as `{command, args}`, or nil.
  @spec follow_up(String.t(), term) :: {String.t(), map} | nil
  def follow_up("optimize", %{"program_id" => id, "definition" => definition, "state" => state})
      when is_map(definition),
      do: {"load_program", %{"program_id" => id, "definition" => definition, "state" => state}}

  def follow_up(_command, _result), do: nil

  defp new_program_id, do: "prog_" <> Integer.to_string(System.unique_integer([:positive]), 36)

  defp program_key(args) do
    id = program_id(args)

    if is_nil(id) or (is_binary(id) and String.valid?(id)) or is_atom(id) or is_integer(id),
      do: {:ok, "program:" <> to_string(id)},
      else: {:error, "program_id must be a string, got #{DSPex.NativePool.Options.describe(id)}"}
  end

  # Only where the caller named no id at the top: a second key for it would be refused.
  defp put_id(args, id), do: if(program_id(args), do: args, else: Map.put(args, "program_id", id))

  defp definition(args) do
    case Map.get(args, "definition") || Map.get(args, :definition) do
      definition when is_map(definition) -> definition
      _ -> %{}
    end
  end

  # V2 callers name it "id".
  defp program_id(args) do
    Enum.find_value(["program_id", :program_id, "id", :id], &Map.get(args, &1))
  end
end
