//! The atoms the NIF sends; every one is fixed here, none is made from worker data.

rustler::atoms! {
    ok, error, dirty,
    queued, running, answered, delivered,
    python_error, pool_error, validation_error, frame_too_large,
    saturated, closed, unavailable, no_such_worker,
    worker_exited, invalid_reply, reply_too_large, wrong_reply_id, result_too_deep,
    pool_closed, pool_unavailable,
    stdout, stderr,
    dspex_native_pool, worker_ready, worker_start_failed, log, warning, tool_call,
    template,
    waiting_worker, waiting_worker_here,
    chunk, nil,
}

/// The key of a chunk frame's value, as the decoder makes keys (binaries).
pub fn chunk_key(env: rustler::Env) -> rustler::Term {
    use rustler::Encoder;
    "chunk".encode(env)
}
