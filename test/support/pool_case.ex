defmodule DSPex.NativePool.PoolCase do
  @moduledoc false
  # `use DSPex.NativePool.PoolCase, async: true` in the end-to-end tests: imports the helpers and
  # aliases the pool.
  use ExUnit.CaseTemplate

  using do
    quote do
      import DSPex.NativePool.TestHelpers
      alias DSPex.NativePool
    end
  end
end
