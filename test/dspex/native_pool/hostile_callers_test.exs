defmodule DSPex.NativePool.HostileCallersTest do
  # What a careless or hostile caller passes: each is a structured error, at once, with nothing
  # sent, nothing left running, no stray message, and no secret quoted back.
  use DSPex.NativePool.PoolCase, async: true

  setup do
    start_pool!(handlers_source: :standard)
  end

  defp python_requests(pool) do
    {:ok, %{"requests" => n}} = NativePool.execute("get_stats", %{}, pool: pool)
    n
  end

  defp refute_stray_messages do
    refute_received _any
  end

  test "call options and arguments that cannot be used are validation errors", %{pool: pool} do
    before = python_requests(pool)

    calls = [
      fn -> NativePool.execute("echo", %{}, pool: pool, timeout: 4_294_967_296) end,
      fn -> NativePool.execute("echo", %{}, pool: pool, timeout: 2 ** 64) end,
      fn -> NativePool.execute(<<0xFF, 0xFE>>, %{}, pool: pool) end,
      fn -> NativePool.execute("echo", %{}, %{pool: pool}) end,
      fn -> NativePool.execute("echo", %{}, pool: pool, timout: 5) end,
      fn -> NativePool.execute_in_session(<<0xFF>>, "echo", %{}, pool: pool) end,
      fn -> NativePool.execute_in_session(:s, "echo", %{}, pool: pool) end,
      fn -> NativePool.end_session(:atom, pool: pool) end,
      fn -> NativePool.end_session(<<0xC3>>, pool: pool) end,
      fn -> NativePool.execute("create_program", %{program_id: {1, 2}}, pool: pool) end,
      fn -> NativePool.execute("delete_program", %{program_id: %{}}, pool: pool) end,
      fn ->
        NativePool.execute_in_session("s", "create_program", %{program_id: self()}, pool: pool)
      end,
      fn -> NativePool.execute_async("echo", %{}, pool: pool, timeout: -1) end,
      fn -> NativePool.broadcast("ping", %{}, [:pool]) end,
      fn -> NativePool.execute("echo", %{}, pool: :not_on_this_node, node: "py1@host") end,
      fn -> NativePool.execute("echo", %{}, pool: :not_on_this_node, node: nil) end
    ]

    for call <- calls do
      assert {:error, {:validation_error, type, message, context}} = call.()
      assert type in [:invalid_options, :invalid_command, :invalid_session, :invalid_args]
      assert is_binary(message) and is_map(context)
    end

    assert python_requests(pool) == before + 1
    refute_stray_messages()
  end

  test "a session id that cannot be used is described, never quoted", %{pool: pool} do
    for {id, got} <- [
          {"", "an empty string"},
          {<<0xFF, "secret">>, "a binary that is not valid UTF-8"},
          {42, "an integer"},
          {String.duplicate("s", 1025), "1025 bytes"}
        ] do
      assert {:error, {:validation_error, :invalid_session, message, _}} =
               NativePool.execute_in_session(id, "echo", %{}, pool: pool)

      assert message ==
               "a session id must be a non-empty UTF-8 string of at most 1024 bytes, got #{got}"
    end

    refute_stray_messages()
  end

  test "await with a bad timeout, or awaited twice, answers at once", %{pool: pool} do
    handle = NativePool.execute_async("echo", %{a: 1}, pool: pool, timeout: :infinity)

    assert {:error, {:validation_error, :invalid_options, _, _}} = NativePool.await(handle, -5)
    assert {:ok, %{"a" => 1}} = NativePool.await(handle)

    assert {:error, {:validation_error, :already_awaited, _, _}} = NativePool.await(handle)

    slow = NativePool.execute_async("slow", %{seconds: 30}, pool: pool, timeout: :infinity)

    assert {:error, {:timeout_error, _queue_or_request, message, _}} = NativePool.await(slow, 50)
    assert message =~ "within 50 ms"
    # Not a second wait of 30 s, nor forever.
    assert {:error, {:validation_error, :already_awaited, _, _}} = NativePool.await(slow)
    refute_stray_messages()
  end

  test "awaiting after the deadline names the call's timeout, not 0 ms", %{pool: pool} do
    handle = NativePool.execute_async("slow", %{seconds: 30}, pool: pool, timeout: 100)
    # The deadline itself is what is waited for here.
    ref = make_ref()
    Process.send_after(self(), ref, 150)
    assert_receive ^ref, 1_000
    assert {:error, {:timeout_error, _queue_or_request, message, _}} = NativePool.await(handle)
    assert message =~ "within 100 ms"
  end

  test "no secret is quoted back: not from args, not from :env", %{pool: pool} do
    secret = "sk-test-5ecret-value"

    assert {:error, {:validation_error, :invalid_args, message, _}} =
             NativePool.configure_lm([{"model", "openai/x"}, {"api_key", secret}], pool: pool)

    refute message =~ secret

    assert {:error, {:validation_error, :invalid_options, message, _}} =
             NativePool.start_link(
               name: unique_name(),
               env: %{"OPENAI_API_KEY" => 5, "B" => secret}
             )

    refute message =~ secret
    assert message =~ "OPENAI_API_KEY"

    assert {:error, {:validation_error, :invalid_options, message, _}} =
             NativePool.start_link(name: unique_name(), env: [{"A", secret}, :not_a_pair])

    refute message =~ secret
  end

  test "a stopped pool reports itself unavailable", %{pool: pool} do
    {resource, _config} = :persistent_term.get({NativePool, pool})
    assert DSPex.NativePool.Nif.pool_stats(resource).available
    :ok = stop_supervised(pool)
    refute DSPex.NativePool.Nif.pool_stats(resource).available
  end
end
