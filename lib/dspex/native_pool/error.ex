defmodule DSPex.NativePool.Error do
  # Every error type, once: the moduledoc's table and the README's come from this list (a test
  # checks the README's copy).
  @types [
    {:validation_error, :invalid_args,
     "an argument cannot be encoded as JSON (pid, ref, fun, tuple, struct, non-UTF-8 binary, integer beyond 64 bits, nesting deeper than 128), and nothing was sent; or the command refused its arguments (a DSPy command's missing `program_id`, inputs that are not the program's, an unknown `program_type`; a handler raising `dspex_bridge.errors.InvalidArguments`), and `context` has `:python_type`"},
    {:validation_error, :invalid_command,
     "the command is not a non-empty UTF-8 string or an atom, or is the reserved `__cancel__`"},
    {:validation_error, :invalid_options, "a start or call option is not valid"},
    {:validation_error, :invalid_session,
     "a session id is not a non-empty UTF-8 string of at most 1,024 bytes"},
    {:validation_error, :request_too_large,
     "the encoded request is over the pool's `:max_frame`"},
    {:validation_error, :unknown_command, "the worker has no such command"},
    {:validation_error, :already_awaited,
     "`await/2` on a handle that was already awaited (answered at once)"},
    {:timeout_error, :queue_timeout,
     "the deadline passed while the request waited for a worker; it never ran"},
    {:timeout_error, :request_timeout,
     "the deadline passed while a worker ran the request; its reply, if any, is dropped"},
    {:timeout_error, :startup_timeout,
     "workers did not become ready in time (from `start_link/1`)"},
    {:resource_error, :pool_not_found,
     "no pool of that name is running (for a clustered pool: on this node, for a function that uses this node's member only; the message lists the nodes that have one)"},
    {:resource_error, :pool_saturated, "the queue is full (`:max_queue`); fails at once"},
    {:resource_error, :pool_unavailable,
     "every worker keeps failing to start; fails at once until one starts"},
    {:resource_error, :pool_closed, "the pool stopped before (or while) the request ran"},
    {:resource_error, :reply_too_large,
     "the command's result, or a chunk it streamed, encodes to more than `:max_frame`; the worker stays"},
    {:resource_error, :worker_start_failed,
     "a worker could not start (from `start_link/1`; the message quotes its stderr)"},
    {:resource_error, :dspy_missing,
     "the pool's Python has no `dspy` package and `:require_dspy` asks for it (from `start_link/1`; the message names the interpreter, why it was chosen, and the fixes)"},
    {:communication_error, :worker_exited,
     "the worker died while running the request; the message names the exit status or signal and quotes its last stderr lines. With `concurrency` above 1 also a worker replaced while it held the request (another request's cancel outlived `:cancel_grace`, or it wrote bad output); the message says why"},
    {:communication_error, :invalid_reply,
     "the worker wrote bytes that are not a valid reply frame or JSON; it is replaced"},
    {:communication_error, :wrong_reply_id,
     "the worker answered another request's id; it is replaced"},
    {:communication_error, :oversized_reply,
     "a reply frame announced more than `:max_frame` bytes; the worker is replaced"},
    {:communication_error, :protocol_error, "the worker could not read the request"},
    {:communication_error, :node_down,
     "a clustered pool's call ran on a node that went down or became unreachable; `context` has `:node`"},
    {:system_error, :remote_call_failed,
     "the process running a clustered pool's call on another node failed (the message gives why); `context` has `:node`"},
    {:resource_error, :lm_rate_limited,
     "the LM refused the call for its rate limit (HTTP 429); `context` has `:retry_after` (seconds the provider asked to wait, or `nil`) and `:retryable`"},
    {:timeout_error, :lm_timeout, "the LM did not answer in time"},
    {:system_error, :lm_auth_failed,
     "the LM refused the credentials or the account (HTTP 401/403, billing)"},
    {:communication_error, :lm_unreachable,
     "the LM could not be reached (connection refused, DNS, TLS)"},
    {:system_error, :lm_server_error, "the LM failed (HTTP 5xx)"},
    {:validation_error, :lm_context_window_exceeded,
     "the prompt is longer than the model's context window"},
    {:validation_error, :lm_invalid_request,
     "the LM's provider rejected the request: a model it does not serve, or a parameter or feature it does not take (HTTP 400, 404, 422)"},
    {:system_error, :lm_output_unparseable,
     "the LM's answer does not fit the signature's output fields"},
    {:validation_error, :program_not_found,
     "no program of that id in the call's session (or the pool's anonymous namespace)"},
    {:validation_error, :lm_not_configured,
     "a DSPy program ran with no LM configured for the pool, the session or the call, or with one its provider cannot be called with as configured (no API key: the message says where DSPy looked)"},
    {:validation_error, :invalid_signature, "DSPy cannot build the signature given"},
    {:resource_error, :dspy_unavailable,
     "a DSPy command on a worker whose Python has no `dspy` (or `DSPEX_DISABLE_DSPY` is set)"},
    {:system_error, :python_exception,
     "the command raised; `context` has `:python_type` and `:traceback`"},
    {:system_error, :unserializable_result,
     "the command returned or streamed something JSON cannot carry (including integers beyond 64 bits, or nesting deeper than 512 levels)"}
  ]

  # The kinds the bridge gives an error it classified (a fixed table: no atom is made from
  # worker data), and their types.
  @kinds %{
    "lm_rate_limited" => {:resource_error, :lm_rate_limited},
    "lm_timeout" => {:timeout_error, :lm_timeout},
    "lm_auth_failed" => {:system_error, :lm_auth_failed},
    "lm_unreachable" => {:communication_error, :lm_unreachable},
    "lm_server_error" => {:system_error, :lm_server_error},
    "lm_context_window_exceeded" => {:validation_error, :lm_context_window_exceeded},
    "lm_invalid_request" => {:validation_error, :lm_invalid_request},
    "lm_output_unparseable" => {:system_error, :lm_output_unparseable},
    "program_not_found" => {:validation_error, :program_not_found},
    "lm_not_configured" => {:validation_error, :lm_not_configured},
    "invalid_signature" => {:validation_error, :invalid_signature},
    "invalid_args" => {:validation_error, :invalid_args},
    "dspy_unavailable" => {:resource_error, :dspy_unavailable},
    # What a result would get: a streamed chunk that cannot be sent (dspex_bridge.streaming).
    "unserializable_result" => {:system_error, :unserializable_result},
    "reply_too_large" => {:resource_error, :reply_too_large}
  }

  @table Enum.join(
           ["| category | type | when |", "|---|---|---|"] ++
             Enum.map(@types, fn {category, type, text} ->
               "| `#{inspect(category)}` | `#{inspect(type)}` | #{text} |"
             end),
           "\n"
         )

  @doc false
  @spec table() :: String.t()
  def table, do: @table

  @doc false
  @spec types() :: [{atom, atom, String.t()}]
  def types, do: @types

  @moduledoc """
  The error shape of `DSPex.NativePool`, and the exception `DSPex.NativePool.execute!/3` raises.

  Every failure is `{:error, {category, type, message, context}}`, the shape DSPex's
  SessionPoolV2 used, so its callers can switch without rewriting their error handling:

    * `category` — one of `:timeout_error`, `:resource_error`, `:communication_error`,
      `:system_error`, `:validation_error`;
    * `type` — an atom naming the exact failure (table below);
    * `message` — a sentence for humans;
    * `context` — a map with `:pool`, `:command` and `:worker_id` where known, for
      Python exceptions `:python_type` and `:traceback`, and for a clustered pool's call
      that reached a member, that member's `:node`.

  #{@table}
  """

  @type category ::
          :timeout_error
          | :resource_error
          | :communication_error
          | :system_error
          | :validation_error

  @type context :: %{optional(atom) => term}
  @type reason :: {category, atom, String.t(), context}

  defexception [:category, :type, :message, :context]

  @type t :: %__MODULE__{
          category: category,
          type: atom,
          message: String.t(),
          context: context
        }

  @doc false
  # The error tuple an exception was raised from.
  def to_reason(%__MODULE__{category: category, type: type, message: message, context: context}),
    do: {category, type, message, context}

  @doc "Turns an error reason into an exception."
  @spec exception(reason) :: t
  @impl true
  def exception({category, type, message, context}) do
    %__MODULE__{category: category, type: type, message: message, context: context}
  end

  @impl true
  def message(%__MODULE__{category: category, type: type, message: message, context: context}) do
    where =
      context
      |> Map.take([:pool, :command, :worker_id])
      |> Enum.reject(fn {_k, v} -> is_nil(v) end)
      |> Enum.map_join(", ", fn {k, v} -> "#{k}: #{inspect(v)}" end)

    "#{category}/#{type}: #{message}" <> if(where == "", do: "", else: " (#{where})")
  end

  @doc false
  # Maps what the NIF reports to the public shape.
  @spec from_outcome(term, context) :: reason
  def from_outcome({:python_error, error, worker}, context) when is_map(error) do
    context = Map.put(context, :worker_id, worker)
    python_type = Map.get(error, "type", "Exception")
    message = Map.get(error, "message", "")

    case python_type do
      "UnknownCommand" ->
        {:validation_error, :unknown_command, message, context}

      "FrameTooLarge" ->
        {:resource_error, :reply_too_large, message, context}

      "SerializationError" ->
        {:system_error, :unserializable_result, message, context}

      "ProtocolError" ->
        {:communication_error, :protocol_error, message, context}

      _ ->
        classified(Map.get(@kinds, Map.get(error, "kind")), python_type, message, error, context)
    end
  end

  def from_outcome({:python_error, error, worker}, context) do
    python_exception("Exception", inspect(error), %{}, Map.put(context, :worker_id, worker))
  end

  def from_outcome({:pool_error, kind, message, worker}, context) do
    context = Map.put(context, :worker_id, worker)

    case kind do
      :pool_closed -> {:resource_error, :pool_closed, message, context}
      :pool_unavailable -> {:resource_error, :pool_unavailable, message, context}
      # The header announced more than the cap: the stream is broken, not the result too big.
      :reply_too_large -> {:communication_error, :oversized_reply, message, context}
      :result_too_deep -> {:system_error, :unserializable_result, message, context}
      other -> {:communication_error, other, message, context}
    end
  end

  # An error the bridge classified (a DSPy LM failure): its own type, with DSPy's judgement
  # of whether a retry may help.
  defp classified(nil, python_type, message, error, context),
    do: python_exception(python_type, message, error, context)

  defp classified({category, type}, python_type, message, error, context) do
    context =
      Map.merge(context, %{
        python_type: python_type,
        traceback: Map.get(error, "traceback"),
        retryable: Map.get(error, "retryable") == true
      })

    context =
      if type == :lm_rate_limited,
        do: Map.put(context, :retry_after, retry_after(Map.get(error, "retry_after"))),
        else: context

    {category, type, message, context}
  end

  defp retry_after(seconds) when is_number(seconds) and seconds >= 0, do: seconds
  defp retry_after(_other), do: nil

  defp python_exception(python_type, message, error, context) do
    context =
      Map.merge(context, %{python_type: python_type, traceback: Map.get(error, "traceback")})

    {:system_error, :python_exception, exception_message(python_type, message), context}
  end

  # `raise KeyboardInterrupt()` has no message: its type alone says it.
  defp exception_message(python_type, message) when message in [nil, ""], do: python_type
  defp exception_message(python_type, message), do: "#{python_type}: #{message}"

  @doc false
  # Maps a refusal of the NIF's submit to the public shape.
  @spec from_submit(term, context, keyword) :: reason
  def from_submit(reason, context, config) do
    case reason do
      {:validation_error, message} ->
        {:validation_error, :invalid_args, message, context}

      {:frame_too_large, len, max} ->
        {:validation_error, :request_too_large,
         "the request encodes to #{len} bytes, over the pool's max_frame of #{max}", context}

      :saturated ->
        {:resource_error, :pool_saturated,
         "the pool's queue is full (max_queue: #{config[:max_queue]}); try again later or raise :max_queue",
         context}

      :unavailable ->
        {:resource_error, :pool_unavailable,
         "no worker could be started; the pool keeps retrying with backoff (see the log for why)",
         context}

      :closed ->
        {:resource_error, :pool_closed, "the pool is stopping", context}

      :no_such_worker ->
        {:validation_error, :invalid_options, "no worker with that id in this pool", context}
    end
  end
end
