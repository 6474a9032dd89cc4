//! The thread behind one pool slot: it starts a worker process (`start`), has it serve
//! requests (`serial` one at a time, `multiplex` several at once), and replaces it when it dies,
//! hangs or talks nonsense.
//!
//! The thread outlives every process it spawns (the process is killed when its spawning thread
//! exits), and it is the only thread that reads or writes that process's pipes, so no lock sits
//! on the request path.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::frame::{Body, FrameReader};
use crate::lifecycle::{self, Change};
use crate::output::Output;
use crate::pool::Shared;
use crate::process::{ExitStatus, ProcessHandle};
use crate::request::{Failure, FailureKind, Request};
use crate::start::describe;

/// How long a worker may take to exit after its request pipe closes before it is signalled.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the last stderr lines of a dead worker.
pub(crate) const OUTPUT_DRAIN: Duration = Duration::from_millis(250);
/// A worker that lived this long, or answered a request, was sound: its crash restarts the
/// backoff. One that dies sooner without answering anything makes the next wait longer.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// One running worker process.
pub(crate) struct Live {
    pub(crate) process: Arc<ProcessHandle>,
    pub(crate) requests: File,
    /// Taken by the reader thread of a multiplexed worker.
    pub(crate) replies: Option<FrameReader>,
    pub(crate) output: Output,
    pub(crate) served: u64,
    pub(crate) started: Instant,
}

/// Why a worker process is being let go.
pub(crate) enum End {
    /// The pool is stopping.
    Shutdown,
    /// It served `max_requests`.
    Retired,
    /// It exited by itself (end of file on its reply pipe).
    Died,
    /// It must be killed: hung past a deadline, failed a health check, or broke the protocol.
    Replace(String),
}

pub fn run_slot(shared: Arc<Shared>, index: usize) {
    let mut restart = false;
    while !shared.is_closing() {
        lifecycle::change(&shared, index, Change::Spawning);
        match crate::start::start(&shared, index) {
            Ok(mut live) => {
                let os_pid = live.process.pid();
                lifecycle::change(&shared, index, Change::Ready { os_pid, restart });
                let (end, pending) = serve(&shared, index, &mut live);
                if finish(&shared, index, live, end, pending) {
                    break;
                }
            }
            Err(reason) => {
                lifecycle::change(&shared, index, Change::StartFailed { reason });
            }
        }
        restart = true;
        let delay = lifecycle::change(&shared, index, Change::BackingOff);
        // Woken early only when the pool begins stopping.
        if !matches!(
            shared.shutdown_rx.recv_timeout(delay),
            Err(RecvTimeoutError::Timeout)
        ) {
            break;
        }
    }
    lifecycle::change(&shared, index, Change::Stopped);
}

/// Takes requests until the worker has to go. Returns why, and the requests it was running if
/// the worker died under them (answered once the exit status is known).
fn serve(shared: &Arc<Shared>, index: usize, live: &mut Live) -> (End, Vec<Request>) {
    if shared.config.concurrency > 1 {
        return crate::multiplex::serve(shared, index, live);
    }
    let (end, pending) = crate::serial::serve_one_at_a_time(shared, index, live);
    (end, pending.into_iter().collect())
}

/// Puts a request that never reached its worker back in line. It keeps its deadline; if the
/// queue is full it fails, as a new request would.
pub(crate) fn requeue(shared: &Shared, index: usize, request: Request) {
    if !request.ticket.requeue() {
        return; // the caller gave up meanwhile
    }
    let session_bound = request.route_slot.is_some();
    let queue = if session_bound {
        &shared.slots[index].queue
    } else {
        &shared.queue
    };
    if let Err(request) = queue.push(request) {
        request.fail_unrun(
            FailureKind::WorkerExited,
            format!("worker {index} died before it could take the request, and the queue is full"),
        );
    }
}

/// Requests handed to this worker while it was idle may run on any worker: they go back to the
/// shared queue rather than wait for a replacement. Session requests stay.
fn reroute_anonymous(shared: &Shared, index: usize) {
    let queue = &shared.slots[index].queue;
    let mut bound = Vec::new();
    while let Some(request) = queue.try_pop() {
        if request.route_slot.is_some() {
            bound.push(request);
        } else if let Err(request) = shared.queue.push(request) {
            request.fail_unrun(FailureKind::WorkerExited, "the pool's queue is full");
        }
    }
    for request in bound {
        if let Err(request) = queue.push(request) {
            request.fail_unrun(FailureKind::WorkerExited, "the worker's queue is full");
        }
    }
}

/// Whether a request taken from a queue may run: its caller still waits and its deadline has
/// not passed (else it is cancelled, and a dead caller's counted as dropped), and nobody
/// cancelled it first. `before_start` runs just before it is marked running.
pub(crate) fn admit(shared: &Shared, request: &Request, before_start: impl FnOnce()) -> bool {
    let dropped = &shared.counters.dropped;
    if !request.caller.is_alive() {
        request.ticket.cancel();
        dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    if Instant::now() >= request.deadline {
        // The caller's own deadline fired, or is about to: it reports the timeout.
        request.ticket.cancel();
        return false;
    }
    before_start();
    if !request.ticket.start() {
        dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// Sends a reply to the caller whose request finished (`ticket.finish()` won), and records
/// the session state it created. `Some(why)` if the reply shows the worker's stream can no
/// longer be trusted; a result too deep to decode is the caller's failure only.
pub(crate) fn hand_over(
    shared: &Shared,
    index: usize,
    mut request: Request,
    body: Body,
) -> Option<String> {
    let counters = &shared.counters;
    // Counted before the caller can see the reply, so stats read after a call include it.
    counters.completed.fetch_add(1, Ordering::Relaxed);
    let answer = match body {
        Body::Lent(bytes) => request.caller.reply(bytes, request.id, index),
        Body::Owned(frame) => request.caller.reply_large(frame, request.id, index),
    };
    match answer {
        Ok(success) => {
            request.ticket.delivered();
            if let (true, Some((session, record))) = (success, request.record.take()) {
                shared.sessions.lock().record(&session, record);
            }
            None
        }
        // The caller already has the failure.
        Err(failure) => {
            counters.completed.fetch_sub(1, Ordering::Relaxed);
            counters.count_failure(failure.kind);
            request.ticket.delivered();
            (failure.kind != FailureKind::ResultTooDeep).then_some(failure.message)
        }
    }
}

pub(crate) fn fail(
    shared: &Shared,
    request: &mut Request,
    kind: FailureKind,
    message: String,
    index: usize,
) {
    if request.ticket.finish() {
        shared.counters.count_failure(kind);
        request.caller.fail(Failure {
            kind,
            message,
            worker: Some(index),
        });
        request.ticket.delivered();
    }
}

/// Lets a worker process go and reports it. Returns `true` if the slot should stop.
fn finish(shared: &Shared, index: usize, live: Live, end: End, pending: Vec<Request>) -> bool {
    let slot = &shared.slots[index];
    let Live {
        process,
        requests,
        output,
        served: live_served,
        started,
        ..
    } = live;
    let pending_ran = pending.len() as u64;
    lifecycle::change(shared, index, Change::Ending);
    shared.idle.remove(index);
    // Closing the request pipe asks a healthy worker to exit by itself.
    drop(requests);
    let (status, stop) = match &end {
        End::Replace(_) => {
            process.kill();
            let status = process.reap();
            let stop = match status {
                ExitStatus::Signaled(libc::SIGKILL) => {
                    "the pool killed it with SIGKILL".to_string()
                }
                // It had ended by itself before the signal reached it.
                other => format!("the pool killed it, but it had already ended ({other})"),
            };
            (status, stop)
        }
        _ => {
            let stopped = process.terminate(EXIT_GRACE);
            (stopped.status, stopped.to_string())
        }
    };
    *slot.process.lock() = None;
    reroute_anonymous(shared, index);
    output.drain(OUTPUT_DRAIN);
    let tail = output.tail.text();
    let reason = match &end {
        End::Shutdown => format!("stopped with the pool ({stop})"),
        End::Retired => format!("retired after max_requests ({stop})"),
        End::Died => describe("exited unexpectedly", status, &tail),
        End::Replace(why) => format!("replaced: {why} ({stop})"),
    };
    // A crash soon after start, before any answer, counts towards the backoff; one after real
    // work starts it afresh.
    let answered = live_served.saturating_sub(pending_ran);
    let exited = Change::Exited {
        os_pid: process.pid(),
        reason,
        crash: matches!(end, End::Died | End::Replace(_)),
        early: answered == 0 && started.elapsed() < STABLE_AFTER,
    };
    // Before its requests fail: a caller told `:worker_exited` finds the exit in `stats/1`.
    lifecycle::change(shared, index, exited);
    let lost = pending.len();
    for mut request in pending {
        let (kind, message) = if shared.is_closing() {
            (
                FailureKind::PoolClosed,
                format!(
                    "the pool stopped while worker {index} ran {:?}",
                    request.command
                ),
            )
        } else {
            let took = if lost > 1 {
                format!(" (it took down {lost} requests)")
            } else {
                String::new()
            };
            let what = format!(
                "worker {index} (os pid {}) {} while running {:?}{took}",
                process.pid(),
                if matches!(end, End::Replace(_)) {
                    "was replaced"
                } else {
                    "died"
                },
                request.command
            );
            let message = match &end {
                End::Replace(why) => format!("{what}: {why} ({stop})"),
                _ => describe(&what, status, &tail),
            };
            (FailureKind::WorkerExited, message)
        };
        fail(shared, &mut request, kind, message, index);
    }
    matches!(end, End::Shutdown)
}
