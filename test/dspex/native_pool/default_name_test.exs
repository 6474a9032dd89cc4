defmodule DSPex.NativePool.DefaultNameTest do
  # The default name is global: this module must not run alongside another user of it.
  use DSPex.NativePool.PoolCase, async: false

  test "without :name the pool is DSPex.NativePool, which calls and stats use by default" do
    pid = start_supervised!({NativePool, pool_size: 1, shutdown_timeout: 1_000})

    assert Process.whereis(DSPex.NativePool) == pid
    assert {:ok, %{"status" => "ok", "worker_id" => "0"}} = NativePool.execute("ping")
    assert {:ok, %{"a" => 1}} = NativePool.execute("echo", %{a: 1})
    assert %{name: DSPex.NativePool, pool_size: 1} = NativePool.stats()

    :ok = stop_supervised(DSPex.NativePool)
    assert {:error, {:resource_error, :pool_not_found, _, _}} = NativePool.execute("ping")
  end
end
