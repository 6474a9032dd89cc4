defmodule DSPex.NativePool.PythonBridgeTest do
  # The bridge's own unit tests (test/python), run with the interpreter pools use, so the
  # Python side is checked by `mix test` too.
  use ExUnit.Case, async: true

  @tag timeout: 180_000
  test "the Python bridge's unit tests pass" do
    python = DSPex.NativePool.PythonEnv.python() |> System.find_executable()
    tests = Path.expand("../../python", __DIR__)

    {output, status} =
      System.cmd(python, ["-m", "unittest", "discover", "-s", tests], stderr_to_stdout: true)

    assert status == 0, output
    assert output =~ ~r/Ran \d+ tests/
  end
end
