//! Starting a worker process: spawning it, its init ping, and the replay of the state its
//! predecessor had (pool-wide settings, then the sessions bound to its slot).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::affinity;
use crate::frame::{self, FrameError, FrameReader};
use crate::output::Output;
use crate::pool::{Event, Shared};
use crate::process::{self, ExitStatus, ProcessHandle};
use crate::protocol;
use crate::template::Launch;
use crate::worker::{Live, OUTPUT_DRAIN};

/// Spawns a worker and waits for its answer to the init ping.
pub(crate) fn start(shared: &Arc<Shared>, index: usize) -> Result<Live, String> {
    let config = &shared.config;
    let spec = config.spawn_spec(index);
    let deadline = Instant::now() + config.startup_timeout;
    let proc = launch(shared, index, &spec, deadline)?;
    let process = Arc::new(proc.handle);
    let output = Output::start(
        proc.stdout,
        proc.stderr,
        || process.exit_watch().ok(),
        index,
        shared.events.clone(),
    );
    // Registered at once, so a pool that stops meanwhile can kill a worker still starting.
    *shared.slots[index].process.lock() = Some(process.clone());
    if shared.is_closing() {
        process.kill();
    }
    let _ = frame::set_nonblocking(&proc.requests);
    let mut replies = FrameReader::new(proc.replies, config.max_frame);
    let _ = replies.eager();
    // A child the worker forked may hold the reply pipe open after the worker died.
    if let Ok(watch) = process.exit_watch() {
        replies.watch_exit(watch);
    }
    let mut live = Live {
        process,
        requests: proc.requests,
        replies: Some(replies),
        output,
        served: 0,
        started: Instant::now(),
    };
    let worker_id = index.to_string();
    let args = serde_json::json!({ "worker_id": worker_id }).to_string();
    let why = match call_internal(config.max_frame, &mut live, "ping", &args, deadline) {
        Ok(Ok(result)) if result["worker_id"] == worker_id.as_str() => {
            match replay(shared, index, &mut live, deadline) {
                Ok(()) => return Ok(live),
                Err(why) => why,
            }
        }
        Ok(Ok(result)) => {
            format!("worker {index} answered the init ping with the wrong worker id: {result}")
        }
        Ok(Err(error)) => format!("worker {index} failed its init ping: {error}"),
        Err(FrameError::Timeout) => format!(
            "worker {index} did not answer its init ping within {} ms (startup_timeout; a slow \
             import of the handler module or of a preloaded one counts against it), so the pool \
             killed it",
            config.startup_timeout.as_millis()
        ),
        Err(e) if gone_before_answering(&e) => format!(
            "worker {index} ({:?}) exited during start-up",
            spec.program.to_string_lossy()
        ),
        Err(e) => format!("worker {index} broke the protocol during start-up: {e}"),
    };
    Err(abandon(shared, index, live, &why))
}

/// Whether the init ping failed because the worker had exited: before it could read the ping
/// (a closed pipe), or before it answered.
fn gone_before_answering(e: &FrameError) -> bool {
    match e {
        FrameError::Eof | FrameError::Truncated { .. } => true,
        FrameError::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
        _ => false,
    }
}

/// Forks the worker from the pool's template, or spawns it.
fn launch(
    shared: &Shared,
    index: usize,
    spec: &process::SpawnSpec,
    deadline: Instant,
) -> Result<process::WorkerProcess, String> {
    if let Some(forker) = &shared.forker {
        let pinned = usize::try_from(shared.slots[index].cpu.load(Ordering::Acquire)).ok();
        let cpus = match pinned {
            Some(cpu) => vec![cpu],
            None => affinity::allowed_cpus().unwrap_or_default(),
        };
        if let Launch::Forked(worker) = forker.launch(index, &cpus, deadline)? {
            return Ok(worker);
        }
    }
    process::spawn(spec).map_err(|e| {
        format!(
            "cannot start worker {index}: {:?} failed to run: {e}",
            spec.program.to_string_lossy()
        )
    })
}

/// Gives a new worker the state its predecessor had: pool-wide settings, then the definitions
/// of the sessions bound to this slot. A command that fails is reported and skipped; a worker
/// that dies or hangs doing it failed to start.
fn replay(shared: &Shared, index: usize, live: &mut Live, deadline: Instant) -> Result<(), String> {
    let replays = shared.sessions.lock().replays_for(index);
    for r in replays {
        let args = String::from_utf8_lossy(&r.args_json);
        match call_internal(shared.config.max_frame, live, &r.command, &args, deadline) {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => shared.events.event(Event::Warning {
                slot: index,
                message: format!(
                    "replaying {:?} on the new worker failed: {error}",
                    r.command
                ),
            }),
            Err(e) => {
                return Err(format!(
                    "worker {index} failed while replaying {:?}: {e}",
                    r.command
                ))
            }
        }
    }
    Ok(())
}

/// Kills a worker that failed to start and describes why, quoting its stderr.
fn abandon(shared: &Shared, index: usize, live: Live, why: &str) -> String {
    let described = kill_and_describe(&live.process, &live.output, why);
    *shared.slots[index].process.lock() = None;
    described
}

/// Kills a process that failed (a worker or a template), reaps it, and says why with the last
/// lines of its stderr.
pub(crate) fn kill_and_describe(process: &ProcessHandle, output: &Output, why: &str) -> String {
    process.kill();
    let status = process.reap();
    output.drain(OUTPUT_DRAIN);
    describe(why, status, &output.tail.text())
}

pub(crate) fn describe(why: &str, status: ExitStatus, stderr: &str) -> String {
    if stderr.is_empty() {
        format!("{why} ({status}; no stderr output)")
    } else {
        format!("{why} ({status}); its stderr ended with:\n{stderr}")
    }
}

/// Sends a pool-internal command and waits for its answer.
pub(crate) fn call_internal(
    max_frame: usize,
    live: &mut Live,
    command: &str,
    args_json: &str,
    deadline: Instant,
) -> Result<Result<serde_json::Value, serde_json::Value>, FrameError> {
    let id = crate::pool::next_request_id();
    let frame = protocol::request(id, command, args_json.as_bytes(), max_frame)?;
    frame::write_frame(&mut live.requests, &frame, Some(deadline))?;
    let replies = live
        .replies
        .as_mut()
        .expect("a worker's replies before it multiplexes");
    // No tool result is due to a pool-internal request: a waker's nudge is not its answer.
    let waker = replies.watch_waker(None);
    let outcome = match replies.read_frame(Some(deadline)) {
        Ok(body) => match protocol::reply_value(body) {
            Ok((got, result)) if got == id => Ok(result),
            Ok((got, _)) => Err(FrameError::Io(std::io::Error::other(format!(
                "reply carried id {got}, expected {id}"
            )))),
            Err(e) => Err(FrameError::Io(std::io::Error::other(e))),
        },
        Err(e) => Err(e),
    };
    replies.watch_waker(waker);
    outcome
}
