//! One request in flight, and the small state machine that decides who may still answer it.
//!
//! A ticket moves `Queued -> Running -> Done`, or to `Cancelled` from either of the first two.
//! Only the thread that wins the move to `Done` sends a reply, and a caller that wins the move to
//! `Cancelled` knows no reply will ever reach its mailbox: a late reply is dropped, never
//! delivered to whoever calls next.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::sessions::Record;

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const CANCELLED: u8 = 3;
const SENT: u8 = 4;

#[derive(Default)]
pub struct Ticket {
    state: AtomicU8,
    /// Set by the first wait for the reply: a handle can be awaited once.
    awaited: AtomicBool,
    /// Called when the caller gives up while a worker runs the request, so that the worker
    /// can be told to stop it (workers that run several requests at once).
    on_cancel: parking_lot::Mutex<Option<CancelHook>>,
    /// Held while a chunk of a streaming reply is sent, and by the move to `Cancelled`: once a
    /// cancel returns, no chunk can still be on its way to the caller.
    chunks: parking_lot::Mutex<()>,
}

type CancelHook = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// What a cancellation found.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Cancelled {
    /// It had not started: it never will.
    WhileQueued,
    /// A worker was running it: its reply will be dropped.
    WhileRunning,
    /// A reply is being sent to the caller: it will be in its mailbox shortly.
    AlreadyAnswered,
    /// The reply was sent: it is in the caller's mailbox, unless already taken.
    Delivered,
    /// Someone cancelled it before.
    AlreadyCancelled,
}

impl Ticket {
    pub fn new() -> Arc<Ticket> {
        Arc::new(Ticket::default())
    }

    fn advance(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The caller starts waiting for the reply; `false` if it (or a wait before) already did.
    pub fn claim_await(&self) -> bool {
        !self.awaited.swap(true, Ordering::AcqRel)
    }

    /// A worker takes the request; `false` if it was cancelled while queued.
    pub fn start(&self) -> bool {
        self.advance(QUEUED, RUNNING)
    }

    /// What to do if the caller gives up while the request runs; replaced by the next call.
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        *self.on_cancel.lock() = Some(Box::new(hook));
    }

    /// The worker died before reading the request: it may run again elsewhere. `false` if the
    /// caller gave up meanwhile.
    pub fn requeue(&self) -> bool {
        self.advance(RUNNING, QUEUED)
    }

    /// The worker has the answer; `false` if the caller gave up meanwhile.
    pub fn finish(&self) -> bool {
        self.advance(RUNNING, DONE)
    }

    /// Cancels the request only if no worker has taken it yet; `true` if it was still queued
    /// (it will never run).
    pub fn cancel_queued(&self) -> bool {
        self.advance(QUEUED, CANCELLED)
    }

    /// The caller gives up (deadline, death), or the pool fails a request it never started.
    pub fn cancel(&self) -> Cancelled {
        if self.advance(QUEUED, CANCELLED) {
            return Cancelled::WhileQueued;
        }
        let cancelled = {
            let _sending = self.chunks.lock();
            self.advance(RUNNING, CANCELLED)
        };
        if cancelled {
            if let Some(hook) = self.on_cancel.lock().take() {
                hook();
            }
            return Cancelled::WhileRunning;
        }
        match self.state.load(Ordering::Acquire) {
            DONE => Cancelled::AlreadyAnswered,
            SENT => Cancelled::Delivered,
            _ => Cancelled::AlreadyCancelled,
        }
    }

    /// Runs `send` (a chunk of a streaming reply) if the request still runs; `false` if not.
    pub fn while_running(&self, send: impl FnOnce()) -> bool {
        let _sending = self.chunks.lock();
        if self.state.load(Ordering::Acquire) == RUNNING {
            send();
            true
        } else {
            false
        }
    }

    /// The answer has been handed to the caller's mailbox.
    pub fn delivered(&self) {
        self.advance(DONE, SENT);
    }

    /// Settles a request the pool fails without running it (pool closed or unavailable);
    /// `true` if the caller should be told.
    pub fn settle(&self) -> bool {
        self.advance(QUEUED, DONE) || self.advance(RUNNING, DONE)
    }
}

/// Why the pool failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The worker process died while running it.
    WorkerExited,
    /// The worker wrote something that is not a valid reply.
    InvalidReply,
    /// The worker's reply announced a frame over the cap.
    ReplyTooLarge,
    /// The reply is sound but its result is nested too deeply to become a term; the worker's
    /// stream is intact, so it stays.
    ResultTooDeep,
    /// The reply carried another request's id.
    WrongReplyId,
    /// The pool stopped before the request ran.
    PoolClosed,
    /// The pool has no worker and keeps failing to start one.
    PoolUnavailable,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub worker: Option<usize>,
}

/// Whoever waits for a request. Implemented in the NIF by a process that receives a message.
pub trait Caller: Send + 'static {
    /// Whether anyone still waits; a dead caller's queued request is dropped unrun.
    fn is_alive(&self) -> bool;
    /// Decodes and sends the reply `body`, which must answer request `id`, and tells whether the
    /// command succeeded. A malformed body fails the request instead: the caller is sent that
    /// failure, which is also returned, so the pool can count it and replace the worker.
    fn reply(&mut self, body: &[u8], id: u64, worker: usize) -> Result<bool, Failure>;
    /// [`Caller::reply`] for a large reply, whose buffer the caller may keep rather than copy
    /// its bytes out of.
    fn reply_large(
        &mut self,
        body: crate::frame::LargeFrame,
        id: u64,
        worker: usize,
    ) -> Result<bool, Failure> {
        self.reply(body.bytes(), id, worker)
    }
    fn fail(&mut self, failure: Failure);
    /// Sends one chunk of a streaming reply (`{"id":N,"chunk":...}`) from worker `worker`;
    /// called only while the request runs. Callers that do not stream drop it.
    fn chunk(&mut self, _body: &[u8], _id: u64, _worker: usize) {}
    /// Whether the call streams its reply (and so can be told to stop at a `yield`).
    fn streams(&self) -> bool {
        false
    }
}

/// A request as it waits in a queue.
pub struct Request {
    pub id: u64,
    pub command: String,
    /// The sealed frame, header included. A large one goes back to [`crate::buffers`] when the
    /// request is dropped.
    pub frame: Vec<u8>,
    /// Large pieces of the frame that are not in `frame` (see [`crate::frame::Splices`]).
    pub splices: Option<Box<dyn crate::frame::Splices>>,
    pub deadline: Instant,
    pub ticket: Arc<Ticket>,
    pub caller: Box<dyn Caller>,
    /// What to remember for the session named here if the command succeeds.
    pub record: Option<(String, Record)>,
    /// Set when the request must run on one worker (session or broadcast), so a requeue keeps
    /// it there.
    pub route_slot: Option<usize>,
}

impl Drop for Request {
    fn drop(&mut self) {
        crate::buffers::give_back(std::mem::take(&mut self.frame));
    }
}

impl Request {
    /// The frame's size, header and pieces included.
    pub fn frame_len(&self) -> usize {
        self.frame.len() + self.splices.as_ref().map_or(0, |s| s.len())
    }

    /// Fails a request the pool will not run, if its caller still waits for it.
    pub fn fail_unrun(mut self, kind: FailureKind, message: impl Into<String>) {
        if self.ticket.settle() {
            self.caller.fail(Failure {
                kind,
                message: message.into(),
                worker: None,
            });
            self.ticket.delivered();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_queued_only_cancels_what_no_worker_took() {
        let t = Ticket::new();
        assert!(t.cancel_queued());
        assert!(!t.start());
        let t = Ticket::new();
        assert!(t.start());
        assert!(!t.cancel_queued());
        assert!(t.finish());
    }

    #[test]
    fn only_one_side_wins() {
        let t = Ticket::new();
        assert!(t.start());
        assert_eq!(t.cancel(), Cancelled::WhileRunning);
        assert!(!t.finish(), "a cancelled request must not be answered");
        assert_eq!(t.cancel(), Cancelled::AlreadyCancelled);

        let t = Ticket::new();
        assert!(t.start());
        assert!(t.finish());
        assert_eq!(t.cancel(), Cancelled::AlreadyAnswered);
        t.delivered();
        assert_eq!(t.cancel(), Cancelled::Delivered);

        let t = Ticket::new();
        assert_eq!(t.cancel(), Cancelled::WhileQueued);
        assert!(!t.start(), "a request cancelled in the queue must not run");
        assert!(!t.settle());
    }

    #[test]
    fn racing_threads_agree() {
        for _ in 0..1000 {
            let t = Ticket::new();
            assert!(t.start());
            let t2 = t.clone();
            let finisher = std::thread::spawn(move || t2.finish());
            let cancel = t.cancel();
            let finished = finisher.join().unwrap();
            match cancel {
                Cancelled::WhileRunning => assert!(!finished),
                Cancelled::AlreadyAnswered => assert!(finished),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
