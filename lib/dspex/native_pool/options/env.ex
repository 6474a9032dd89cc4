defmodule DSPex.NativePool.Options.Env do
  @moduledoc false
  # A pool's `:env` once checked, and as `child_spec/1` passes it on: inspected, it shows the
  # variables' names and never their values. Options and a pool's state are printed whole by
  # supervisor reports ("Start Call: ..."), crash reports and `:sys.get_state/1`, and `:env`
  # is where an API key is given to the workers.

  @enforce_keys [:pairs]
  defstruct [:pairs]

  @type t :: %__MODULE__{pairs: [{String.t(), String.t()}] | map | keyword}

  @doc false
  # Hides the values of a keyword list's `:env`, if it has one that is a list or a map.
  @spec hide_in(term) :: term
  def hide_in(opts) do
    with true <- Keyword.keyword?(opts),
         {:ok, env} when is_list(env) or (is_map(env) and not is_struct(env)) <-
           Keyword.fetch(opts, :env) do
      Keyword.put(opts, :env, %__MODULE__{pairs: env})
    else
      _ -> opts
    end
  end

  @doc false
  @spec pairs(t) :: term
  def pairs(%__MODULE__{pairs: pairs}), do: pairs

  defimpl Inspect do
    # Never fails: a failing inspect would print the struct raw, values and all.
    def inspect(%{pairs: pairs}, _opts) do
      pairs = if is_map(pairs), do: Map.to_list(pairs), else: List.wrap(pairs)
      names = for {name, _value} <- pairs, do: name(name)
      "#DSPex.NativePool.Options.Env<" <> Enum.join(names, ", ") <> " (values hidden)>"
    end

    defp name(name) when is_binary(name) or is_atom(name), do: to_string(name)
    defp name(name), do: Kernel.inspect(name)
  end
end
