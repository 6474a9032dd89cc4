//! A worker that runs one request at a time (`concurrency: 1`): the slot thread writes a
//! request, reads its reply, hands it to the caller, and takes the next, the most recently idle
//! worker first. A request past its deadline kills the worker (`kill_on_timeout`); a stream is
//! told to stop first, and its worker killed only if it has not within `cancel_grace`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::select_biased;

use crate::frame::{self, Body, FrameError};
use crate::lifecycle::{self, Change};
use crate::pool::{Shared, Slot};
use crate::protocol;
use crate::request::{FailureKind, Request};
use crate::start::call_internal;
use crate::tools;
use crate::worker::{admit, fail, hand_over, requeue, End, Live};

pub(crate) fn serve_one_at_a_time(
    shared: &Shared,
    index: usize,
    live: &mut Live,
) -> (End, Option<Request>) {
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
        let (request, waited) = match next_request(shared, index, live) {
            Ok(Some(next)) => next,
            Ok(None) => continue,
            Err(end) => return (end, None),
        };
        let serving = |busy| Change::Serving {
            busy,
            draining: false,
        };
        lifecycle::change(shared, index, serving(true));
        let outcome = run(shared, index, live, request, waited);
        lifecycle::change(shared, index, serving(false));
        if let Some(end) = outcome {
            return end;
        }
    }
}

/// The next request for this worker, and whether the thread had to wait for it: one already
/// waiting, or else it waits listed as idle, so that callers hand their request straight to
/// the most recently idle worker (whose thread and Python process are still warm) rather than
/// wake the one that has slept longest.
type Next = Option<(Request, bool)>;

fn next_request(shared: &Shared, index: usize, live: &mut Live) -> Result<Next, End> {
    let slot = &shared.slots[index];
    if let Some(request) = waiting(shared, slot) {
        // Listed since its last reply (see `deliver`): busy again, so no longer.
        shared.idle.remove(index);
        return Ok(Some((request, false)));
    }
    shared.idle.push(index);
    // A request may have reached the shared queue just before this worker was listed, or a
    // caller that sends requests one after another may send its next one right away.
    if let Some(request) = watch_queues(shared, slot) {
        shared.idle.remove(index);
        return Ok(Some((request, false)));
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
    next.map(|request| request.map(|r| (r, true)))
}

/// A request already waiting for this worker: its own first, then the pool's.
fn waiting(shared: &Shared, slot: &Slot) -> Option<Request> {
    slot.queue.try_pop().or_else(|| shared.queue.try_pop())
}

/// How often the thread running a request asks whether its caller is still alive.
const CALLER_CHECK: Duration = Duration::from_millis(250);

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

/// Runs one request. `None` means the worker may take the next one. `waited`: the thread waited
/// for it, so the worker had time to write something unasked, which the pipe is checked for.
fn run(
    shared: &Shared,
    index: usize,
    live: &mut Live,
    mut request: Request,
    waited: bool,
) -> Option<(End, Option<Request>)> {
    let counters = &shared.counters;
    if !admit(shared, &request, || {}) {
        return None;
    }
    let replies = live
        .replies
        .as_mut()
        .expect("a worker serving one request at a time");
    let outbox = &shared.slots[index].outbox;
    if let Some(waker) = &outbox.waker {
        replies.watch_waker(Some(waker.raw_fd()));
    }
    outbox.clear();
    // Asking the pipe costs a system call: only after a wait, not between requests that follow
    // each other within microseconds.
    if replies.has_buffered() || (waited && replies.has_unread()) {
        // Out of step: its next frame would answer this request with someone else's reply.
        requeue(shared, index, request);
        let why = "it wrote a reply frame that no request asked for".to_string();
        return Some((End::Replace(why), None));
    }
    live.served += 1;
    shared.slots[index].requests.fetch_add(1, Ordering::Relaxed);

    let written = frame::write_request(
        &mut live.requests,
        &request.frame,
        request.splices.as_deref(),
        Some(request.deadline),
    );
    if let Err(e) = written {
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
    let mut caller_gone = false;
    // Set when a stream is told to stop at its deadline; `deadline` is then its grace's end.
    let mut told_to_stop = false;
    loop {
        // Woken now and then to see whether its caller is still there (a stream's consumer
        // that died must not leave its generator waiting for credits until the deadline).
        let look = Instant::now() + CALLER_CHECK;
        let wait_until = match deadline {
            Some(d) if d <= look => Some(d),
            _ if caller_gone => deadline,
            _ => Some(look),
        };
        match replies.read_frame(wait_until) {
            Err(FrameError::Timeout) if wait_until != deadline => {
                if !request.caller.is_alive() {
                    caller_gone = true;
                    request.ticket.cancel();
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    let cancel = tools::control_frame(request.id, None);
                    let until = Some(Instant::now() + shared.config.health_timeout);
                    if frame::write_frame(&mut live.requests, &cancel, until).is_err() {
                        return Some((End::Died, None));
                    }
                }
            }
            Ok(body) if tools::is_tool_call(body) => {
                tool_call(shared, index, &request, body);
            }
            Ok(body) if tools::is_chunk(body) => {
                let caller = &mut request.caller;
                request
                    .ticket
                    .while_running(|| caller.chunk(body, request.id, index));
            }
            Ok(_) => return deliver(shared, index, request, replies.last_frame()),
            Err(FrameError::Woken) => {
                if let Some(end) = write_tool_results(shared, index, &mut live.requests, request.id)
                {
                    return Some((end, Some(request)));
                }
            }
            Err(FrameError::Timeout) if told_to_stop => {
                let why = format!(
                    "it was still running {:?} {} ms after the caller's deadline, though told to stop",
                    request.command,
                    shared.config.cancel_grace.as_millis()
                );
                return Some((End::Replace(why), None));
            }
            Err(FrameError::Timeout) => {
                request.ticket.cancel();
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                // A stream stops at its next `yield` when told, as when its consumer halts:
                // its worker is kept if it does so within the grace period.
                if shared.config.kill_on_timeout && request.caller.streams() {
                    let grace = Instant::now() + shared.config.cancel_grace;
                    let cancel = tools::control_frame(request.id, None);
                    if frame::write_frame(&mut live.requests, &cancel, Some(grace)).is_err() {
                        return Some((End::Died, None));
                    }
                    deadline = Some(grace);
                    told_to_stop = true;
                    continue;
                }
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
                if frame::unread_bytes(&live.requests) == Some(request.frame_len()) {
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

/// Hands a reply to its caller. A malformed reply fails the request and the worker is replaced,
/// since its stream can no longer be trusted.
fn deliver(
    shared: &Shared,
    index: usize,
    request: Request,
    body: Body,
) -> Option<(End, Option<Request>)> {
    if !request.ticket.finish() {
        // The caller gave up: drop the reply, but still check the stream is sound.
        return match protocol::peek_id(&body) {
            Some(id) if id == request.id => None,
            Some(id) => Some((
                End::Replace(format!("reply carried id {id}, expected {}", request.id)),
                None,
            )),
            None => Some((
                End::Replace(format!(
                    "invalid reply: no id; reply began with {}",
                    protocol::preview(&body)
                )),
                None,
            )),
        };
    }
    // Listed as idle before the caller can send its next request, which then comes back here
    // (warm) instead of to a worker that has been asleep; and idle in stats read after the
    // call, as `completed` is counted before the caller sees the reply.
    shared.idle.push(index);
    let idle = Change::Serving {
        busy: false,
        draining: false,
    };
    lifecycle::change(shared, index, idle);
    hand_over(shared, index, request, body).map(|why| (End::Replace(why), None))
}

/// Hands a request's tool call to the application.
pub(crate) fn tool_call(shared: &Shared, index: usize, request: &Request, body: &[u8]) {
    let left = request.deadline.saturating_duration_since(Instant::now());
    shared.events.event(crate::pool::Event::ToolCall {
        slot: index,
        id: request.id,
        deadline_ms: left.as_millis() as u64,
        body: body.to_vec(),
    });
}

/// Writes the tool results waiting for request `id` (others are for requests that ended);
/// a worker that no longer reads its requests must go.
fn write_tool_results(
    shared: &Shared,
    index: usize,
    requests: &mut std::fs::File,
    id: u64,
) -> Option<End> {
    let outbox = &shared.slots[index].outbox;
    while let Ok((for_id, frame)) = outbox.rx.try_recv() {
        if for_id != id {
            continue;
        }
        let deadline = Instant::now() + shared.config.health_timeout;
        if let Err(e) = frame::write_frame(requests, &frame, Some(deadline)) {
            return Some(End::Replace(format!("cannot write a tool's result: {e}")));
        }
    }
    None
}
