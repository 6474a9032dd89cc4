defmodule DSPex.NativePool.Nif do
  @moduledoc false
  # Stubs for the Rust NIF in native/dspex_native_pool; see lib.rs there for each function.

  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:dspex_native_pool), ~c"native/dspex_native_pool")
    :erlang.load_nif(path, 0)
  end

  def start_pool(_config, _owner), do: err()
  def submit(_pool, _tag, _command, _args, _routing), do: err()
  def submit_dirty(_pool, _tag, _command, _args, _routing), do: err()
  def cancel(_ticket), do: err()
  def claim_await(_ticket), do: err()
  def cancel_queued(_ticket), do: err()
  def stop_pool(_pool, _grace_ms), do: err()
  def pool_stats(_pool), do: err()
  def record_global(_pool, _key, _command, _args), do: err()
  def forget(_pool, _prefix), do: err()
  def end_session(_pool, _session), do: err()
  def expire_sessions(_pool, _ttl_ms), do: err()
  def list_sessions(_pool), do: err()
  def tool_result(_pool, _slot, _id, _call, _outcome), do: err()
  def encode_json(_term), do: err()
  def stream_credit(_pool, _slot, _id, _n), do: err()
  def next_request_id, do: err()
  def stream_cancel(_pool, _slot, _id), do: err()

  defp err, do: :erlang.nif_error(:nif_not_loaded)
end
