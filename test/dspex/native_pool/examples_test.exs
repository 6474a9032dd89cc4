defmodule DSPex.NativePool.ExamplesTest do
  # The examples run as a reader runs them, each in a VM of its own; their pattern matches
  # (`{:ok, _} = ...`, `^calls = length(answers)`) are the checks.
  use ExUnit.Case, async: true

  alias DSPex.NativePool.ChildVM

  @moduletag timeout: 300_000

  for example <- ["examples/quickstart.exs", "examples/llm_calls.exs"] do
    test "#{example} runs to its end" do
      assert {:ok, :ran} =
               ChildVM.eval(~s|Code.eval_file(#{inspect(unquote(example))}); :ran|, 120_000)
    end
  end
end
