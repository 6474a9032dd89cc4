//! Worker lifecycle and output, sent to the GenServer that owns the pool as
//! `{:dspex_native_pool, event, ...}`.

use rustler::{Encoder, LocalPid, OwnedEnv};

use dspex_pool_core::output::TEMPLATE;
use dspex_pool_core::pool::{Event, EventSink, Stream};

use crate::atoms;
use crate::term_from_json;

pub struct OwnerEvents {
    pub owner: LocalPid,
}

impl EventSink for OwnerEvents {
    fn event(&self, event: Event) {
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&self.owner, |env| {
            let tag = atoms::dspex_native_pool();
            match &event {
                Event::WorkerReady {
                    slot,
                    os_pid,
                    restart,
                } => (tag, atoms::worker_ready(), *slot, *os_pid, *restart).encode(env),
                Event::WorkerStartFailed {
                    slot,
                    reason,
                    failures,
                } => (
                    tag,
                    atoms::worker_start_failed(),
                    *slot,
                    reason.as_str(),
                    *failures,
                )
                    .encode(env),
                Event::WorkerExited {
                    slot,
                    os_pid,
                    reason,
                } => (tag, atoms::worker_exited(), *slot, *os_pid, reason.as_str()).encode(env),
                Event::Warning { slot, message } => {
                    (tag, atoms::warning(), *slot, message.as_str()).encode(env)
                }
                Event::ToolCall {
                    slot,
                    id,
                    deadline_ms,
                    body,
                } => match term_from_json::decode_value(env, body) {
                    Ok(call) => {
                        (tag, atoms::tool_call(), *slot, *id, *deadline_ms, call).encode(env)
                    }
                    Err(e) => {
                        let message =
                            format!("worker {slot} sent a tool call that is not JSON: {e}");
                        (tag, atoms::warning(), *slot, message).encode(env)
                    }
                },
                Event::Log { slot, stream, line } => {
                    let stream = match stream {
                        Stream::Stdout => atoms::stdout(),
                        Stream::Stderr => atoms::stderr(),
                    };
                    if *slot == TEMPLATE {
                        (tag, atoms::log(), atoms::template(), stream, line.as_str()).encode(env)
                    } else {
                        (tag, atoms::log(), *slot, stream, line.as_str()).encode(env)
                    }
                }
            }
        });
    }
}
