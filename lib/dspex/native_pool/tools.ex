defmodule DSPex.NativePool.Tools do
  @moduledoc false
  # Elixir functions a pool's Python code may call (`:tools`): their validation, what the
  # workers are told of them, and running one call. A call runs in a fresh process under the
  # pool's task supervisor, within what is left of its request's deadline; its result (or why
  # there is none) goes back to the worker that asked.

  require Logger
  alias DSPex.NativePool.{Nif, Telemetry}

  @types ~w(string integer number boolean array object)

  @typedoc "A tool as the pool keeps it."
  @type tool :: %{fun: (map -> term), description: String.t(), args: map}

  @doc false
  # `:tools` as given (a keyword list or map of name => {fun/1, description} or
  # {fun/1, description, args}) to `%{name => tool}`, or `{:error, message}`.
  @spec validate(term) :: {:ok, %{String.t() => tool}} | {:error, String.t()}
  def validate(tools) when is_list(tools) or is_map(tools) do
    Enum.reduce_while(tools, {:ok, %{}}, fn
      {name, spec}, {:ok, acc} ->
        case tool(name, spec) do
          {:ok, key, tool} -> {:cont, {:ok, Map.put(acc, key, tool)}}
          {:error, _} = error -> {:halt, error}
        end

      _other, _acc ->
        {:halt, {:error, "expected a keyword list or map of name => {fun/1, description}"}}
    end)
  end

  def validate(_other),
    do: {:error, "expected a keyword list or map of name => {fun/1, description}"}

  defp tool(name, spec) when is_atom(name) and not is_nil(name),
    do: tool(Atom.to_string(name), spec)

  defp tool(name, spec) when is_binary(name) do
    with :ok <- check_name(name) do
      case spec do
        {fun, description} when is_function(fun, 1) and is_binary(description) ->
          {:ok, name, %{fun: fun, description: description, args: %{}}}

        {fun, description, args} when is_function(fun, 1) and is_binary(description) ->
          with {:ok, args} <- check_args(name, args),
               do: {:ok, name, %{fun: fun, description: description, args: args}}

        _ ->
          {:error,
           "tool #{inspect(name)}: expected {fun/1, description} or {fun/1, description, args}"}
      end
    end
  end

  defp tool(_name, _spec), do: {:error, "a tool's name must be an atom or a string"}

  defp check_name(name) do
    if name =~ ~r/^[A-Za-z_][A-Za-z0-9_]{0,63}$/,
      do: :ok,
      else: {:error, "tool name #{inspect(name)} is not an identifier"}
  end

  defp check_args(name, args) when is_map(args) do
    Enum.reduce_while(args, {:ok, %{}}, fn {arg, spec}, {:ok, acc} ->
      arg = to_string(arg)
      type = to_string(spec[:type] || spec["type"] || "string")
      desc = spec[:desc] || spec["desc"] || spec[:description] || spec["description"] || ""

      if type in @types and is_binary(desc),
        do: {:cont, {:ok, Map.put(acc, arg, %{"type" => type, "desc" => desc})}},
        else:
          {:halt,
           {:error,
            "tool #{inspect(name)}, argument #{inspect(arg)}: type must be one of #{Enum.join(@types, ", ")}, desc a string"}}
    end)
  end

  defp check_args(name, _args),
    do: {:error, "tool #{inspect(name)}: args must be a map of argument name => %{type:, desc:}"}

  @doc false
  # What the workers are told of the tools (`DSPEX_ELIXIR_TOOLS`): names, descriptions and
  # argument schemas as JSON, never the functions.
  @spec worker_env(%{String.t() => tool}) :: [{String.t(), String.t()}]
  def worker_env(tools) when map_size(tools) == 0, do: []

  def worker_env(tools) do
    described =
      Map.new(tools, fn {name, t} -> {name, %{description: t.description, args: t.args}} end)

    {:ok, json} = Nif.encode_json(described)
    [{"DSPEX_ELIXIR_TOOLS", json}]
  end

  @doc false
  # Runs one tool call from worker `worker` for request `id` under `supervisor`, and answers
  # the worker. Never raises: every failure is an answer.
  def run(supervisor, pool, resource, tools, worker, id, deadline_ms, call) do
    %{"tool_call" => %{"call" => call_id} = request} = call
    name = request["name"]
    args = if is_map(request["args"]), do: request["args"], else: %{}

    Task.Supervisor.start_child(supervisor, fn ->
      started = System.monotonic_time()
      outcome = outcome(supervisor, Map.get(tools, name), name, tools, args, deadline_ms)
      duration = System.monotonic_time() - started
      answer = Nif.tool_result(resource, worker, id, call_id, outcome)
      ok? = match?({:ok, _}, outcome) and answer == :ok

      Telemetry.tool(%{duration: duration}, %{
        pool: pool,
        worker_id: worker,
        request_id: id,
        tool: name,
        ok: ok?
      })

      Logger.debug("tool #{inspect(name)} for request #{id}: #{if ok?, do: "ok", else: "failed"}",
        pool: pool,
        worker_id: worker,
        request_id: id
      )
    end)
  end

  defp outcome(_supervisor, nil, name, tools, _args, _deadline_ms) do
    known = tools |> Map.keys() |> Enum.sort() |> Enum.join(", ")

    {:error,
     "no Elixir tool named #{inspect(name)} (registered: #{if known == "", do: "none", else: known})"}
  end

  defp outcome(supervisor, tool, name, _tools, args, deadline_ms) do
    # Raises and throws are answers, not crashes (no crash report for a tool's own error).
    task =
      Task.Supervisor.async_nolink(supervisor, fn ->
        try do
          {:ok, tool.fun.(args)}
        rescue
          exception -> {:raised, exception}
        catch
          kind, reason -> {:caught, kind, reason}
        end
      end)

    # Before the request's own deadline (by a tenth of what is left, up to a second), so that
    # Python still hears why and can answer in time.
    wait = max(deadline_ms - min(1_000, div(deadline_ms, 10)), 0)

    case Task.yield(task, wait) || Task.shutdown(task, :brutal_kill) do
      {:ok, {:ok, result}} ->
        {:ok, result}

      {:ok, {:raised, exception}} ->
        {:error,
         "#{inspect(name)} raised #{inspect(exception.__struct__)}: #{Exception.message(exception)}"}

      {:ok, {:caught, kind, reason}} ->
        {:error, "#{inspect(name)} failed: #{kind} #{inspect(reason, limit: 20)}"}

      {:exit, reason} ->
        {:error, "#{inspect(name)} exited: #{inspect(reason, limit: 20)}"}

      nil ->
        {:error, "#{inspect(name)} did not return within the request's deadline (#{wait} ms)"}
    end
  end
end
