defmodule DSPex.NativePool.SecretsTest do
  # A secret the worker knows of (a credential-like variable of its environment, an api_key
  # given to configure_lm), or one that looks like a key, never comes back in an error reply,
  # whatever command raised it, nor in a line the worker prints, in either concurrency mode.
  use DSPex.NativePool.PoolCase, async: true

  @token "tok-5ecret-7d1e0a9b"
  @api_key "sk-lm-5ecret-0c4f2e81"

  @handlers ~S'''
  import os, sys

  def leak_env(args):
      print("calling with " + os.environ["BILLING_SERVICE_TOKEN"])
      raise ValueError("rejected token " + os.environ["BILLING_SERVICE_TOKEN"])

  def leak_given(args):
      sys.stderr.write("retrying with key " + args["key"] + "\n")
      raise RuntimeError("bad key " + args["key"])

  def leak_shaped(args):
      raise PermissionError("Incorrect API key provided: sk-proj-" + "q" * 24)

  def has_token(args):
      return os.environ.get("BILLING_SERVICE_TOKEN") == args["expected"]

  def marker(args):
      print("stdout marker " + args["tag"])
      sys.stderr.write("stderr marker " + args["tag"] + "\n")
      return "ok"
  '''

  for concurrency <- [1, 4] do
    @tag concurrency: concurrency
    test "no secret in errors, tracebacks or printed lines (concurrency: #{concurrency})", ctx do
      %{pool: pool} =
        start_pool!(
          handlers_source: @handlers,
          concurrency: ctx.concurrency,
          env: %{"BILLING_SERVICE_TOKEN" => @token}
        )

      attach_logs(pool)

      assert {:error, {:system_error, :python_exception, message, context}} =
               NativePool.execute("leak_env", %{}, pool: pool)

      assert message == "ValueError: rejected token [REDACTED]"
      refute inspect(context) =~ @token

      # An api_key given to configure_lm is a secret from then on, for every command.
      assert {:ok, configured} =
               NativePool.configure_lm(%{model: "dummy", answers: [], api_key: @api_key},
                 pool: pool
               )

      refute inspect(configured) =~ @api_key

      assert {:error, {:system_error, :python_exception, message, context}} =
               NativePool.execute("leak_given", %{key: @api_key}, pool: pool)

      assert message == "RuntimeError: bad key [REDACTED]"
      refute inspect(context) =~ @api_key

      # A key nobody told the worker of is still caught by its look.
      assert {:error, {:system_error, :python_exception, message, _}} =
               NativePool.execute("leak_shaped", %{}, pool: pool)

      assert message == "PermissionError: Incorrect API key provided: [REDACTED]"

      # Each stream is forwarded in order: once both markers arrive, every line before them has.
      assert {:ok, "ok"} = NativePool.execute("marker", %{tag: "end"}, pool: pool)
      lines = logs_until(pool, ["stdout marker end", "stderr marker end"])
      assert Enum.any?(lines, &(&1 =~ "calling with [REDACTED]"))
      assert Enum.any?(lines, &(&1 =~ "retrying with key [REDACTED]"))
      refute Enum.any?(lines, &(&1 =~ @token or &1 =~ @api_key))
    end
  end

  test ":env's values stay out of the child spec and the pool's state, and reach the workers" do
    spec = NativePool.child_spec(name: :env_pool, env: [BILLING_SERVICE_TOKEN: @token])
    refute inspect(spec) =~ @token
    assert inspect(spec) =~ "BILLING_SERVICE_TOKEN"

    # A malformed :env (refused later by start_link/1) inspects without its values too: a
    # failing inspect would print the struct raw.
    malformed = NativePool.child_spec(name: :env_pool, env: [{"KEY", @token}, :junk])
    refute inspect(malformed) =~ @token

    # Supervisor reports print the start call; a crash report prints the pool's state.
    %{pool: pool, pid: pid} =
      start_pool!(handlers_source: @handlers, env: %{"BILLING_SERVICE_TOKEN" => @token})

    refute inspect(:sys.get_state(pid), limit: :infinity) =~ @token
    assert {:ok, true} = NativePool.execute("has_token", %{expected: @token}, pool: pool)
  end

  # The pool's log lines up to the ones ending with each of `markers` (in any order).
  defp logs_until(pool, markers, lines \\ [])
  defp logs_until(_pool, [], lines), do: Enum.reverse(lines)

  defp logs_until(pool, markers, lines) do
    receive do
      {:pool_log, ^pool, _level, line, _meta} ->
        logs_until(pool, Enum.reject(markers, &String.ends_with?(line, &1)), [line | lines])
    after
      5_000 -> flunk("no log line ending with #{inspect(markers)}; got #{inspect(lines)}")
    end
  end
end
