defmodule DSPex.NativePool.LMServer do
  @moduledoc false
  # Starts `test/support/lm_server.py`, a local OpenAI-compatible chat server on 127.0.0.1,
  # for the test that calls it; it exits when the test ends (its stdin closes with the port).

  @script Path.expand("lm_server.py", __DIR__)

  @doc "Starts a server; returns `%{port: port, api_base: url}`."
  def start!(opts \\ []) do
    python = DSPex.NativePool.PythonEnv.python() |> System.find_executable()
    args = ["-u", @script, "--latency-ms", to_string(Keyword.get(opts, :latency_ms, 0))]
    args = args ++ ["--answer", Keyword.get(opts, :answer, "42")]

    port =
      Port.open({:spawn_executable, python}, [:binary, {:line, 1024}, :exit_status, args: args])

    ExUnit.Callbacks.on_exit(fn -> if Port.info(port), do: Port.close(port) end)

    receive do
      {^port, {:data, {:eol, "LISTENING " <> number}}} ->
        number = String.to_integer(number)
        %{port: number, api_base: "http://127.0.0.1:#{number}/v1", os_port: port}

      {^port, {:exit_status, status}} ->
        raise "the LM server exited with status #{status}"
    after
      15_000 -> raise "the LM server did not start"
    end
  end

  @doc "The server's counts: requests, active, max_active, aborted, completed."
  def stats(%{port: port}), do: request(port, :get, "/stats")

  @doc "Changes the server's latency, status or answer."
  def configure(%{port: port}, config), do: request(port, :post, "/config", config)

  @doc "The user messages of the server's last 50 requests, as the raw JSON text it sent."
  def prompts(%{port: port}), do: raw_request(port, :get, "/prompts")

  @doc "Lets a held streamed reply (`hold: true`) finish."
  def release(%{port: port}), do: request(port, :post, "/release", %{})

  @doc "Zeroes the counts."
  def reset(%{port: port}), do: request(port, :post, "/reset", %{})

  @doc "The LM map for `configure_lm`: DSPy's own HTTP client, talking to this server."
  def lm_config(server, extra \\ %{}) do
    Map.merge(
      %{model: "openai/test-model", api_base: server.api_base, api_key: "test-key", cache: false},
      extra
    )
  end

  # A tiny HTTP/1.0 client on :gen_tcp, so the tests need no HTTP library.
  defp request(port, method, path, body \\ nil),
    do: decode(raw_request(port, method, path, body))

  defp raw_request(port, method, path, body \\ nil) do
    {:ok, socket} = :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false], 5_000)
    payload = if body, do: json_encode(body), else: ""
    verb = method |> Atom.to_string() |> String.upcase()

    :ok =
      :gen_tcp.send(
        socket,
        "#{verb} #{path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" <>
          "Content-Length: #{byte_size(payload)}\r\n\r\n" <> payload
      )

    response = read_all(socket, "")
    :gen_tcp.close(socket)
    [_head, json] = String.split(response, "\r\n\r\n", parts: 2)
    json
  end

  defp read_all(socket, acc) do
    case :gen_tcp.recv(socket, 0, 5_000) do
      {:ok, data} -> read_all(socket, acc <> data)
      {:error, :closed} -> acc
    end
  end

  defp json_encode(map) do
    Enum.map_join(map, ",", fn {k, v} -> ~s("#{k}":#{encode_value(v)}) end)
    |> then(&"{#{&1}}")
  end

  defp encode_value(v) when is_integer(v), do: Integer.to_string(v)
  defp encode_value(v) when is_binary(v), do: inspect(v)
  defp encode_value(nil), do: "null"
  defp encode_value(v) when is_boolean(v), do: to_string(v)
  defp encode_value(v) when is_atom(v), do: inspect(Atom.to_string(v))
  defp encode_value(v) when is_map(v), do: json_encode(v)
  defp encode_value(v) when is_list(v), do: "[" <> Enum.map_join(v, ",", &encode_value/1) <> "]"

  # The server's replies are flat objects of integers and booleans.
  defp decode(json) do
    ~r/"(\w+)":\s*(-?\d+|true|false)/
    |> Regex.scan(json)
    |> Map.new(fn [_, k, v] -> {k, decode_scalar(v)} end)
  end

  defp decode_scalar("true"), do: true
  defp decode_scalar("false"), do: false
  defp decode_scalar(n), do: String.to_integer(n)
end
