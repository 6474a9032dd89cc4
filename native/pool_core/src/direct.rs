//! Starting a request on a multiplexed worker from the caller's own thread.
//!
//! A worker that runs several requests at once (`concurrency` above 1) and has room for one
//! more gets the request's frame written by the thread that submits it, with no hop through
//! the worker's slot thread: waking that thread for every request cost more than the round
//! trip to Python. The slot thread still owns the worker: it publishes a [`Wire`] while it
//! accepts requests, takes it back before it stops, and watches the deadlines, cancels and
//! health of every request in the table, however it started.
//!
//! The write never blocks: only a frame of at most `PIPE_BUF` bytes is written here, to the
//! non-blocking request pipe, and such a write is whole or refused (`EAGAIN`, POSIX), never
//! partial; a refused request goes back unstarted, and through the worker's queue. Anything
//! larger goes through the queue too.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;

use crossbeam_channel::Sender;

use crate::multiplex::{Running, Table};
use crate::request::Request;
use crate::shared::{Shared, Slot};
use crate::worker;

/// The largest frame a caller's thread writes (Linux's `PIPE_BUF`: such a write is atomic).
pub const MAX_DIRECT_FRAME: usize = 4096;

/// How long a caller's thread waits for another's write before it queues its request.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

/// What a caller's thread needs to start a request on a serving worker.
pub(crate) struct Wire {
    /// A second handle to the worker's request pipe, closed when serving ends (before the
    /// worker is let go), so no caller writes to a worker that is stopping.
    pub(crate) requests: File,
    pub(crate) table: Table,
    /// Where a running request's cancel goes (the slot thread writes it to the worker).
    pub(crate) cancels: Sender<u64>,
    /// Queued requests the reader thread took but could not start: the slot thread starts
    /// them.
    pub(crate) overflow: Sender<Request>,
    /// Wakes a dozing slot thread (see `wake_if_dozing`).
    pub(crate) wake: Sender<()>,
}

/// Starts `request` on the worker of slot `index` if it has room now; gives it back otherwise
/// (the caller then queues it). `Ok(true)` if the worker had nothing in flight before it.
// The request comes back by value to be queued: boxing it would cost an allocation each.
#[allow(clippy::result_large_err)]
pub(crate) fn start(shared: &Shared, index: usize, request: Request) -> Result<bool, Request> {
    let slot = &shared.slots[index];
    if !fits(shared, &request) {
        return Err(request);
    }
    // Another caller's write takes microseconds; the slot thread's own may wait for room
    // (a large frame), and then the queue is as fast.
    let Some(mut wire) = slot.wire.try_lock_for(LOCK_WAIT) else {
        return Err(request);
    };
    let Some(wire) = wire.as_mut() else {
        return Err(request);
    };
    let idle = slot.in_flight.load(Ordering::Acquire) == 0;
    if !slot.reserve(shared.config.concurrency) {
        return Err(request);
    }
    match write_reserved(shared, index, wire, request) {
        Ok(()) => Ok(idle),
        Err(request) => {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
            Err(request)
        }
    }
}

/// Starts requests waiting in slot `index`'s queue while its worker has room: the reader
/// thread calls it when a reply frees a place the queue was waiting for. What it cannot
/// start here it hands to the slot thread (which the reader thread then wakes).
pub(crate) fn refill(shared: &Shared, index: usize) {
    let slot = &shared.slots[index];
    // Waits for the lock no longer than a caller would: the slot thread may hold it while
    // its worker, which waits for this thread to read its replies, reads nothing.
    let Some(mut wire) = slot.wire.try_lock_for(LOCK_WAIT) else {
        return;
    };
    let Some(wire) = wire.as_mut() else {
        return;
    };
    loop {
        // Counted in flight before it leaves the queue's count (see `multiplex`).
        if !slot.reserve(shared.config.concurrency) {
            return;
        }
        let Some(request) = slot.queue.try_pop() else {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        let started = if fits(shared, &request) {
            write_reserved(shared, index, wire, request)
        } else {
            Err(request)
        };
        if let Err(request) = started {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
            let _ = wire.overflow.send(request);
            return;
        }
    }
}

fn fits(shared: &Shared, request: &Request) -> bool {
    request.splices.is_none()
        && request.frame.len() <= MAX_DIRECT_FRAME
        && shared.config.max_requests.is_none()
}

/// Starts a request whose place in flight is reserved, on a worker with room.
#[allow(clippy::result_large_err)]
fn write_reserved(
    shared: &Shared,
    index: usize,
    wire: &Wire,
    mut request: Request,
) -> Result<(), Request> {
    let slot = &shared.slots[index];
    let id = request.id;
    let cancels = wire.cancels.clone();
    let hook = || {
        request.ticket.on_cancel(move || {
            let _ = cancels.send(id);
        })
    };
    if !worker::admit(shared, &request, hook) {
        // Its caller already gave up; nothing more is owed to it.
        slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        return Ok(());
    }
    slot.requests.fetch_add(1, Ordering::Relaxed);
    let frame = std::mem::take(&mut request.frame);
    // In the table before the worker can answer it.
    wire.table.lock().insert(
        id,
        Running {
            request,
            cancelled_at: None,
        },
    );
    match (&wire.requests).write(&frame) {
        Ok(n) if n == frame.len() => {}
        // A full pipe (its worker is not reading): the request goes back, unstarted.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(unstart(shared, index, wire, id, frame));
        }
        // The worker is gone (or took part of a frame, which POSIX rules out): the slot
        // thread finds out from the reply pipe and fails what the table holds.
        _ => {}
    }
    // After the write: the request goes first, the wake-up (a system call) after it.
    wake_if_dozing(slot, wire);
    crate::buffers::give_back(frame);
    Ok(())
}

/// Takes back a request whose frame could not be written.
fn unstart(shared: &Shared, index: usize, wire: &Wire, id: u64, frame: Vec<u8>) -> Request {
    let slot = &shared.slots[index];
    let mut running = crate::multiplex::take_running(&mut wire.table.lock(), slot, id)
        .expect("a request put in the table under the wire's lock is still there");
    slot.requests.fetch_sub(1, Ordering::Relaxed);
    running.request.frame = frame;
    running.request.ticket.requeue();
    running.request
}

/// A slot thread dozes only with nothing in flight, and this request now is (its place was
/// reserved before this look, sequentially consistent with the thread's mark): its deadline
/// and its caller must be watched, so the thread is woken.
fn wake_if_dozing(slot: &Slot, wire: &Wire) {
    if slot.dozing.load(Ordering::SeqCst) && slot.dozing.swap(false, Ordering::SeqCst) {
        let _ = wire.wake.try_send(());
    }
}
