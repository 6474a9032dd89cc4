defmodule DSPex.NativePool.Nif do
  @moduledoc false
  # Stubs for the Rust NIF in native/dspex_native_pool; see lib.rs there for each function.

  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:dspex_native_pool), ~c"native/dspex_native_pool")
    :erlang.load_nif(path, 0)
  end

  def start_pool(_config, _owner), do: :erlang.nif_error(:nif_not_loaded)

  def submit(_pool, _tag, _command, _args, _timeout_ms, _worker),
    do: :erlang.nif_error(:nif_not_loaded)

  def submit_dirty(_pool, _tag, _command, _args, _timeout_ms, _worker),
    do: :erlang.nif_error(:nif_not_loaded)

  def cancel(_ticket), do: :erlang.nif_error(:nif_not_loaded)
  def stop_pool(_pool, _grace_ms), do: :erlang.nif_error(:nif_not_loaded)
  def pool_stats(_pool), do: :erlang.nif_error(:nif_not_loaded)
end
