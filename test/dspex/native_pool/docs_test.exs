defmodule DSPex.NativePool.DocsTest do
  # The docs' examples run (doctests, against a real pool named `MyPool`), and the README's
  # tables are the ones the code generates.
  use DSPex.NativePool.PoolCase, async: false

  setup_all do
    ExUnit.CaptureLog.capture_log(fn ->
      {:ok, pid} = NativePool.start_link(name: MyPool, pool_size: 2, pin_cpus: false)
      Process.unlink(pid)
      send(self(), {:pool, pid})
    end)

    assert_received {:pool, pid}
    on_exit(fn -> GenServer.stop(pid) end)
  end

  doctest DSPex.NativePool

  @readme File.read!(Path.expand("../../../README.md", __DIR__))

  test "the README's options table is the one the schema generates" do
    assert @readme =~ DSPex.NativePool.Options.table()
  end

  test "the README's error table is the one DSPex.NativePool.Error documents" do
    assert @readme =~ DSPex.NativePool.Error.table()
  end
end
