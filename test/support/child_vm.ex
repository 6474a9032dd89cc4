defmodule DSPex.NativePool.ChildVM do
  @moduledoc false
  # Runs Elixir code in a fresh VM, for tests whose failure could be a crash of the VM itself:
  # there a crash is a failed assertion naming the signal, not a dead test run.
  #
  # The child gets this VM's code path (so the library and its NIF load as here), evaluates
  # the code, and prints its result as one marked line; everything else it prints is kept as
  # its output, quoted when it fails.

  @marker "DSPEX_CHILD_VM_RESULT:"

  @doc """
  Evaluates `code` (a string of Elixir) in a child VM, waiting at most `timeout` ms. Returns
  `{:ok, value}` with the value of its last expression, `{:crashed, description, output}` if
  the VM died (a signal, a non-zero exit, or no result), or `{:timeout, output}`.
  """
  def eval(code, timeout \\ 120_000) do
    script =
      Path.join(System.tmp_dir!(), "dspex_child_vm_#{System.unique_integer([:positive])}.exs")

    File.write!(script, wrap(code))

    try do
      run(script, timeout)
    after
      File.rm(script)
    end
  end

  defp wrap(code) do
    """
    Application.ensure_all_started(:logger)
    Logger.configure(level: :warning)
    {:ok, _} = Application.ensure_all_started(:dspex_native_pool)
    result = (fn -> #{code}\n end).()
    IO.puts("#{@marker}" <> Base.encode64(:erlang.term_to_binary(result)))
    """
  end

  defp run(script, timeout) do
    erl = System.find_executable("erl") || raise "erl is not on PATH"
    paths = Enum.flat_map(:code.get_path(), &["-pa", to_string(&1)])

    eval =
      ~s|application:ensure_all_started(elixir), | <>
        ~s|try 'Elixir.Code':eval_file(<<"#{script}">>) of _ -> erlang:halt(0) | <>
        ~s|catch C:R:S -> io:format("~p~n", [{C, R, S}]), erlang:halt(3) end.|

    port =
      Port.open({:spawn_executable, erl}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-noshell", "-noinput" | paths] ++ ["-eval", eval]
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    deadline = System.monotonic_time(:millisecond) + timeout
    collect(port, os_pid, deadline, [])
  end

  defp collect(port, os_pid, deadline, acc) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} ->
        collect(port, os_pid, deadline, [acc, data])

      {^port, {:exit_status, status}} ->
        output = IO.iodata_to_binary(acc)

        case {status, result(output)} do
          {0, {:ok, value}} -> {:ok, value}
          {0, :none} -> {:crashed, "exited with status 0 but printed no result", output}
          {status, _} -> {:crashed, describe(status), output}
        end
    after
      wait ->
        System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
        {:timeout, IO.iodata_to_binary(acc)}
    end
  end

  defp result(output) do
    output
    |> String.split("\n")
    |> Enum.find_value(:none, fn line ->
      case String.split(line, @marker, parts: 2) do
        [_, encoded] ->
          {:ok, encoded |> String.trim() |> Base.decode64!() |> :erlang.binary_to_term()}

        _ ->
          nil
      end
    end)
  end

  defp describe(status) when status > 128,
    do: "killed by signal #{status - 128}#{name(status - 128)}"

  defp describe(status), do: "exited with status #{status}"

  defp name(11), do: " (SIGSEGV)"
  defp name(6), do: " (SIGABRT)"
  defp name(9), do: " (SIGKILL)"
  defp name(_), do: ""
end
