//! The thread behind one pool slot: it starts a worker process, feeds it requests one at a time,
//! and replaces it when it dies, hangs or talks nonsense.
//!
//! The thread outlives every process it spawns (the process is killed when its spawning thread
//! exits), and it is the only thread that reads or writes that process's pipes, so no lock sits
//! on the request path.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select_biased, RecvTimeoutError};

use crate::frame::{self, FrameError, FrameReader};
use crate::output::Output;
use crate::pool::{Event, Shared, Slot, SlotState};
use crate::process::{self, ExitStatus, ProcessHandle};
use crate::protocol;
use crate::request::{Failure, FailureKind, Request};

/// How long a worker may take to exit after its request pipe closes before it is signalled.
const EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the last stderr lines of a dead worker.
const OUTPUT_DRAIN: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
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
    started: Instant,
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
    let mut restarts = 0u64;
    loop {
        if shared.is_closing() {
            break;
        }
        let slot = &shared.slots[index];
        slot.set_state(SlotState::Starting);
        match start(&shared, index) {
            Ok(mut live) => {
                slot.failures_in_row.store(0, Ordering::Release);
                slot.os_pid.store(live.process.pid(), Ordering::Release);
                // Idle before anyone hears it is ready, so stats never lag the event.
                slot.set_state(SlotState::Idle);
                shared.events.event(Event::WorkerReady {
                    slot: index,
                    os_pid: live.process.pid(),
                    restart: restarts > 0,
                });
                let (end, pending) = serve(&shared, index, &mut live);
                let last = finish(&shared, index, live, end, pending);
                if last {
                    break;
                }
            }
            Err(reason) => {
                let failures = slot.failures_in_row.fetch_add(1, Ordering::AcqRel) + 1;
                *slot.last_exit.lock() = Some(reason.clone());
                shared.events.event(Event::WorkerStartFailed {
                    slot: index,
                    reason,
                    failures,
                });
                if !shared.is_available() {
                    shared.fail_queued(index, FailureKind::PoolUnavailable);
                }
            }
        }
        restarts += 1;
        slot.restarts.store(restarts, Ordering::Release);
        if !backoff(&shared, index) {
            break;
        }
    }
    let slot = &shared.slots[index];
    slot.set_state(SlotState::Stopped);
    slot.os_pid.store(0, Ordering::Release);
}

/// Waits before the next start, longer after each failed start or early crash in a row;
/// `false` if the pool began stopping meanwhile.
fn backoff(shared: &Shared, index: usize) -> bool {
    let slot = &shared.slots[index];
    let failures =
        slot.failures_in_row.load(Ordering::Acquire) + slot.crashes_in_row.load(Ordering::Acquire);
    let delay = backoff_delay(failures, shared.config.max_backoff);
    slot.backoff_ms
        .store(delay.as_millis() as u64, Ordering::Release);
    slot.set_state(SlotState::Restarting);
    matches!(
        shared.shutdown_rx.recv_timeout(delay),
        Err(RecvTimeoutError::Timeout)
    )
}

/// 0 after a clean exit; then 100 ms, doubling with each failure in a row, up to `max`.
pub fn backoff_delay(failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF
        .saturating_mul(1 << (failures - 1).min(16))
        .min(max)
}

/// Spawns a worker and waits for its answer to the init ping.
fn start(shared: &Arc<Shared>, index: usize) -> Result<Live, String> {
    let config = &shared.config;
    let spec = config.spawn_spec(index);
    let deadline = Instant::now() + config.startup_timeout;
    let proc = process::spawn(&spec).map_err(|e| {
        format!(
            "cannot start worker {index}: {:?} failed to run: {e}",
            spec.program.to_string_lossy()
        )
    })?;
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
            "worker {index} did not answer its init ping within {} ms",
            config.startup_timeout.as_millis()
        ),
        Err(FrameError::Eof) | Err(FrameError::Truncated { .. }) => {
            format!("worker {index} exited during start-up")
        }
        Err(e) => format!("worker {index} broke the protocol during start-up: {e}"),
    };
    Err(abandon(shared, index, live, &why))
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
    live.process.kill();
    let status = live.process.reap();
    *shared.slots[index].process.lock() = None;
    live.output.drain(OUTPUT_DRAIN);
    describe(why, status, &live.output.tail.text())
}

fn describe(why: &str, status: ExitStatus, stderr: &str) -> String {
    if stderr.is_empty() {
        format!("{why} ({status}; no stderr output)")
    } else {
        format!("{why} ({status}); its stderr ended with:\n{stderr}")
    }
}

/// Sends a pool-internal command and waits for its answer.
fn call_internal(
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
    let body = replies.read_frame(Some(deadline))?;
    match protocol::reply_value(body) {
        Ok((got, result)) if got == id => Ok(result),
        Ok((got, _)) => Err(FrameError::Io(std::io::Error::other(format!(
            "reply carried id {got}, expected {id}"
        )))),
        Err(e) => Err(FrameError::Io(std::io::Error::other(e))),
    }
}

/// Takes requests until the worker has to go. Returns why, and the requests it was running if
/// the worker died under them (answered once the exit status is known).
fn serve(shared: &Arc<Shared>, index: usize, live: &mut Live) -> (End, Vec<Request>) {
    if shared.config.concurrency > 1 {
        return crate::multiplex::serve(shared, index, live);
    }
    let (end, pending) = serve_one_at_a_time(shared, index, live);
    (end, pending.into_iter().collect())
}

fn serve_one_at_a_time(shared: &Shared, index: usize, live: &mut Live) -> (End, Option<Request>) {
    let slot = &shared.slots[index];
    let config = &shared.config;
    loop {
        if let Some(max) = config.max_requests {
            if live.served >= max {
                return (End::Retired, None);
            }
        }
        if shared.is_closing() {
            return (End::Shutdown, None);
        }
        let request = match next_request(shared, index, live) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(end) => return (end, None),
        };
        slot.set_state(SlotState::Busy);
        let outcome = run(shared, index, live, request);
        slot.set_state(SlotState::Idle);
        if let Some(end) = outcome {
            return end;
        }
    }
}

/// The next request for this worker: one already waiting, or else it waits listed as idle, so
/// that callers hand their request straight to the most recently idle worker (whose thread and
/// Python process are still warm) rather than wake the one that has slept longest.
fn next_request(shared: &Shared, index: usize, live: &mut Live) -> Result<Option<Request>, End> {
    let slot = &shared.slots[index];
    if let Some(request) = waiting(shared, slot) {
        // Listed since its last reply (see `deliver`): busy again, so no longer.
        shared.idle.remove(index);
        return Ok(Some(request));
    }
    shared.idle.push(index);
    // A request may have reached the shared queue just before this worker was listed, or a
    // caller that sends requests one after another may send its next one right away.
    if let Some(request) = watch_queues(shared, slot) {
        shared.idle.remove(index);
        return Ok(Some(request));
    }
    let next = select_biased! {
        // A worker already dead must not take another request.
        recv(live.output.stderr_closed()) -> _ => Err(End::Died),
        recv(shared.shutdown_rx) -> _ => Err(End::Shutdown),
        recv(slot.queue.receiver()) -> r => Ok(r.ok().inspect(|_| slot.queue.taken())),
        recv(shared.queue.receiver()) -> r => Ok(r.ok().inspect(|_| shared.queue.taken())),
        default(shared.config.health_interval) => Ok(None),
    };
    shared.idle.remove(index);
    if let Ok(None) = next {
        health_check(shared, live).map_err(End::Replace)?;
    }
    next
}

/// A request already waiting for this worker: its own first, then the pool's.
fn waiting(shared: &Shared, slot: &Slot) -> Option<Request> {
    slot.queue.try_pop().or_else(|| shared.queue.try_pop())
}

/// How long an idle worker thread watches its queues before it parks.
const WATCH: Duration = Duration::from_micros(30);

/// A caller that sends requests one after another sends its next within microseconds of its
/// reply. Caught here rather than parked, it needs no wake-up of this thread from another CPU,
/// which on a VM costs more than the round trip to Python; and that Python process, idle on
/// this thread's CPU until the request arrives, loses nothing to the wait.
fn watch_queues(shared: &Shared, slot: &Slot) -> Option<Request> {
    let until = Instant::now() + WATCH;
    let mut looks = 0u32;
    loop {
        if let Some(request) = waiting(shared, slot) {
            return Some(request);
        }
        if Instant::now() >= until {
            return None;
        }
        looks += 1;
        if looks < 64 {
            std::hint::spin_loop();
        } else {
            // Not a bare spin: the caller may be waiting for this very CPU to send the request.
            std::thread::yield_now();
        }
    }
}

pub(crate) fn health_check(shared: &Shared, live: &mut Live) -> Result<(), String> {
    let deadline = Instant::now() + shared.config.health_timeout;
    match call_internal(shared.config.max_frame, live, "ping", "{}", deadline) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("health check failed: {e}")),
        Err(FrameError::Timeout) => Err(format!(
            "no answer to a health check within {} ms",
            shared.config.health_timeout.as_millis()
        )),
        Err(e) => Err(format!("health check failed: {e}")),
    }
}

/// Runs one request. `None` means the worker may take the next one.
fn run(
    shared: &Shared,
    index: usize,
    live: &mut Live,
    mut request: Request,
) -> Option<(End, Option<Request>)> {
    let counters = &shared.counters;
    if !request.caller.is_alive() {
        request.ticket.cancel();
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if Instant::now() >= request.deadline {
        // The caller's own deadline fired, or is about to: it reports the timeout.
        request.ticket.cancel();
        return None;
    }
    if !request.ticket.start() {
        counters.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let replies = live
        .replies
        .as_mut()
        .expect("a worker serving one request at a time");
    if replies.has_unread() {
        // Out of step: its next frame would answer this request with someone else's reply.
        requeue(shared, index, request);
        let why = "it wrote a reply frame that no request asked for".to_string();
        return Some((End::Replace(why), None));
    }
    live.served += 1;
    shared.slots[index].requests.fetch_add(1, Ordering::Relaxed);

    if let Err(e) = frame::write_frame(&mut live.requests, &request.frame, Some(request.deadline)) {
        return Some(match e {
            FrameError::Timeout => {
                request.ticket.cancel();
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                (
                    End::Replace(format!(
                        "it stopped reading its requests; {:?} timed out",
                        request.command
                    )),
                    None,
                )
            }
            // A closed pipe: the worker died before it could read the request, which never
            // ran: it goes back in the queue for another worker (or this slot's replacement).
            _ => {
                requeue(shared, index, request);
                (End::Died, None)
            }
        });
    }
    // A worker may be kept past a deadline (kill_on_timeout: false); its late reply is dropped.
    let mut deadline = Some(request.deadline);
    loop {
        match replies.read_frame(deadline) {
            Ok(body) => return deliver(shared, index, request, body),
            Err(FrameError::Timeout) => {
                request.ticket.cancel();
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                if shared.config.kill_on_timeout {
                    let why = format!(
                        "it was still running {:?} at the caller's deadline",
                        request.command
                    );
                    return Some((End::Replace(why), None));
                }
                deadline = None;
            }
            Err(FrameError::Eof) | Err(FrameError::Truncated { .. }) => {
                // Died before reading a byte of it (killed as it was sent): it never ran.
                if frame::unread_bytes(&live.requests) == Some(request.frame.len()) {
                    requeue(shared, index, request);
                    return Some((End::Died, None));
                }
                return Some((End::Died, Some(request)));
            }
            Err(FrameError::TooLarge { len, max }) => {
                let message = format!(
                    "worker {index} sent a reply of {len} bytes, over the {max}-byte frame cap (max_frame)"
                );
                fail(
                    shared,
                    &mut request,
                    FailureKind::ReplyTooLarge,
                    message.clone(),
                    index,
                );
                return Some((End::Replace(message), None));
            }
            Err(FrameError::Io(e)) => {
                let message = format!("reading from worker {index} failed: {e}");
                fail(
                    shared,
                    &mut request,
                    FailureKind::InvalidReply,
                    message.clone(),
                    index,
                );
                return Some((End::Replace(message), None));
            }
        }
    }
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

/// Hands a reply to its caller. A malformed reply fails the request and the worker is replaced,
/// since its stream can no longer be trusted.
fn deliver(
    shared: &Shared,
    index: usize,
    request: Request,
    body: &[u8],
) -> Option<(End, Option<Request>)> {
    if !request.ticket.finish() {
        // The caller gave up: drop the reply, but still check the stream is sound.
        return match protocol::peek_id(body) {
            Some(id) if id == request.id => None,
            Some(id) => Some((
                End::Replace(format!("reply carried id {id}, expected {}", request.id)),
                None,
            )),
            None => Some((
                End::Replace(format!(
                    "invalid reply: no id; reply began with {}",
                    protocol::preview(body)
                )),
                None,
            )),
        };
    }
    // Listed as idle before the caller can send its next request, which then comes back here
    // (warm) instead of to a worker that has been asleep.
    shared.idle.push(index);
    hand_over(shared, index, request, body).map(|why| (End::Replace(why), None))
}

/// Sends a reply to the caller whose request finished (`ticket.finish()` won), and records
/// the session state it created. `Some(why)` if the reply shows the worker's stream can no
/// longer be trusted; a result too deep to decode is the caller's failure only.
pub(crate) fn hand_over(
    shared: &Shared,
    index: usize,
    mut request: Request,
    body: &[u8],
) -> Option<String> {
    let counters = &shared.counters;
    // Counted before the caller can see the reply, so stats read after a call include it.
    counters.completed.fetch_add(1, Ordering::Relaxed);
    match request.caller.reply(body, request.id, index) {
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
    // Closing the request pipe asks a healthy worker to exit by itself.
    drop(requests);
    let (status, stop) = match &end {
        End::Replace(_) => {
            process.kill();
            let status = process.reap();
            (status, format!("killed by the pool ({status})"))
        }
        _ => {
            let stopped = process.terminate(EXIT_GRACE);
            (stopped.status, stopped.to_string())
        }
    };
    *slot.process.lock() = None;
    slot.os_pid.store(0, Ordering::Release);
    shared.idle.remove(index);
    reroute_anonymous(shared, index);
    output.drain(OUTPUT_DRAIN);
    let tail = output.tail.text();
    let reason = match &end {
        End::Shutdown => format!("stopped with the pool ({stop})"),
        End::Retired => format!("retired after max_requests ({stop})"),
        End::Died => describe("exited unexpectedly", status, &tail),
        End::Replace(why) => format!("replaced: {why} ({stop})"),
    };
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
    if matches!(end, End::Died | End::Replace(_)) {
        // A crash soon after start, before any answer, counts towards the backoff; one after
        // real work starts it afresh.
        let answered = live_served.saturating_sub(pending_ran);
        if answered > 0 || started.elapsed() >= STABLE_AFTER {
            slot.crashes_in_row.store(1, Ordering::Release);
        } else {
            slot.crashes_in_row.fetch_add(1, Ordering::AcqRel);
        }
    } else {
        slot.crashes_in_row.store(0, Ordering::Release);
    }
    *slot.last_exit.lock() = Some(reason.clone());
    shared.events.event(Event::WorkerExited {
        slot: index,
        os_pid: process.pid(),
        reason,
    });
    matches!(end, End::Shutdown)
}
