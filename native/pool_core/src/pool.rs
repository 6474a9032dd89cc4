//! The pool: its queues, its slots and what it tells the outside.
//!
//! Callers put requests on a bounded queue that every idle worker thread takes from (no
//! checkout, no dispatcher); each slot also has a queue of its own for requests that must run on
//! that worker. Nothing here knows about Erlang: replies leave through [`Caller`], news through
//! [`EventSink`].

mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use parking_lot::Mutex;

use crate::affinity::{self, CpuClaim};
use crate::request::{FailureKind, Request};
use crate::sessions::{Record, SessionInfo};

pub use crate::shared::{
    Counters, Event, EventSink, IdleStack, PoolConfig, Shared, Slot, SlotState, Stream,
};
pub use stats::{PoolStats, WorkerStats};

/// Request ids are unique across every pool of the VM, so a reply can never be mistaken for
/// another pool's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_request_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    Saturated,
    Closed,
    Unavailable,
    NoSuchWorker,
}

/// Where an accepted request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Straight to a worker that was waiting for one: its reply is one round trip away.
    IdleWorker,
    /// Straight to a waiting worker pinned to the CPU the submitting thread runs on: a caller
    /// that polls for the reply there takes that CPU from the worker.
    IdleWorkerOnThisCpu,
    /// Behind other requests.
    Queued,
}

/// Where a request may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    AnyWorker,
    Worker(usize),
    /// The worker the session is bound to (bound now if the session is new).
    Session(&'a str),
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Disconnects once every slot thread has ended (each holds a sender).
    threads_done: Receiver<()>,
}

impl Pool {
    /// Starts one thread per slot; each spawns its worker at once, so workers start in parallel.
    /// Readiness is reported through `events`.
    pub fn start(config: PoolConfig, events: Arc<dyn EventSink>) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared::new(config, events));
        let (done_tx, threads_done) = bounded::<()>(0);
        let pool = Pool {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            threads_done,
        };
        // Held by every slot thread: the CPUs are free again once the last one has ended.
        let claim = shared
            .config
            .pin_cpus
            .then(|| CpuClaim::claim(shared.config.size).map(Arc::new))
            .flatten();
        for index in 0..shared.config.size {
            let thread_shared = shared.clone();
            let done = done_tx.clone();
            let claim = claim.clone();
            let handle = std::thread::Builder::new()
                .name(format!("dspex-np-worker-{index}"))
                // Decoding a deeply nested reply recurses on this thread.
                .stack_size(8 << 20)
                .spawn(move || {
                    let _done = done;
                    if let Some(claim) = &claim {
                        // Before the worker is spawned, which inherits the CPU. If the OS
                        // refuses, the slot simply runs where the OS puts it.
                        let cpu = claim.cpu(index);
                        if affinity::pin_current_thread(cpu).is_ok() {
                            thread_shared.slots[index]
                                .cpu
                                .store(cpu as i32, Ordering::Release);
                        }
                    }
                    crate::worker::run_slot(thread_shared, index)
                });
            match handle {
                Ok(handle) => pool.threads.lock().push(handle),
                Err(e) => {
                    pool.close(Duration::ZERO);
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Enqueues a request without blocking; says whether a waiting worker took it.
    pub fn submit(&self, mut request: Request, route: Route) -> Result<Placement, SubmitError> {
        let closing = self.shared.closing.read();
        if *closing {
            return Err(SubmitError::Closed);
        }
        if !self.shared.is_available() {
            self.shared
                .counters
                .pool_unavailable
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Unavailable);
        }
        let slots = &self.shared.slots;
        let target = match route {
            Route::AnyWorker => None,
            Route::Worker(i) if i < slots.len() => Some(i),
            Route::Worker(_) => return Err(SubmitError::NoSuchWorker),
            Route::Session(id) => Some(
                self.shared
                    .sessions
                    .lock()
                    .route(id, slots.len(), |i| slots[i].starts()),
            ),
        };
        request.route_slot = target;
        let (queue, placement) = match target {
            // Several requests per worker: to the one with the fewest in flight.
            None if self.shared.config.concurrency > 1 => {
                let i = self.least_loaded();
                if slots[i].queue.is_empty() {
                    match crate::direct::start(&self.shared, i, request) {
                        Ok(true) => return Ok(self.idle_placement(i)),
                        Ok(false) => return Ok(Placement::Queued),
                        Err(back) => request = back,
                    }
                }
                let placement = if slots[i].load() == 0 {
                    self.idle_placement(i)
                } else {
                    Placement::Queued
                };
                (&slots[i].queue, placement)
            }
            // Straight to the most recently idle worker, if any; else whoever frees up first.
            None => match self.shared.idle.pop() {
                Some(i) => (&slots[i].queue, self.idle_placement(i)),
                None => (&self.shared.queue, Placement::Queued),
            },
            // Off the idle list, so that no other request is handed to it meanwhile.
            Some(i) if self.shared.idle.take(i) && slots[i].queue.is_empty() => {
                (&slots[i].queue, self.idle_placement(i))
            }
            Some(i) => (&slots[i].queue, Placement::Queued),
        };
        queue.push(request).map(|()| placement).map_err(|_refused| {
            self.shared
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
            SubmitError::Saturated
        })
    }

    /// A request handed to the waiting worker of slot `index`: whether the submitting thread
    /// runs on that worker's CPU, where polling for the reply would take turns with it (a VM
    /// that binds its schedulers, `+sbt db`, had a lone caller's p50 at 87 µs instead of 37).
    fn idle_placement(&self, index: usize) -> Placement {
        let pinned = usize::try_from(self.shared.slots[index].cpu.load(Ordering::Relaxed));
        if pinned.is_ok_and(affinity::runs_on) {
            Placement::IdleWorkerOnThisCpu
        } else {
            Placement::IdleWorker
        }
    }

    /// The slot with the fewest requests in flight or waiting, among the best kind there is:
    /// serving; else starting (the request waits for its worker); else serving but holding a
    /// cancelled request that has not ended, which may get the worker killed with all it
    /// holds at `cancel_grace`; else any.
    fn least_loaded(&self) -> usize {
        let slots = &self.shared.slots;
        let kind = |s: &Slot| match s.state() {
            SlotState::Idle | SlotState::Busy if s.cancels_pending.load(Ordering::Acquire) == 0 => {
                0
            }
            SlotState::Starting | SlotState::Restarting if s.starts() => 1,
            SlotState::Idle | SlotState::Busy => 2,
            _ => 3,
        };
        (0..slots.len())
            .min_by_key(|&i| (kind(&slots[i]), slots[i].load()))
            .unwrap_or(0)
    }

    /// Remembers pool-wide state to replay on every new worker.
    /// Hands a frame (a tool's result) to the worker of `slot`, for request `id`: written by
    /// the worker's thread if that request still runs there, dropped otherwise. `false` if
    /// there is no such slot.
    pub fn send_to_worker(&self, slot: usize, id: u64, frame: Vec<u8>) -> bool {
        match self.shared.slots.get(slot) {
            Some(slot) => {
                slot.outbox.push(id, frame);
                true
            }
            None => false,
        }
    }

    pub fn record_global(&self, record: Record) {
        self.shared.sessions.lock().record_global(record);
    }

    /// Forgets remembered state, pool-wide and of every session, under keys starting with `prefix`.
    pub fn forget(&self, prefix: &str) {
        self.shared.sessions.lock().forget(prefix);
    }

    /// Forgets a session; returns the slot whose worker holds its state.
    pub fn end_session(&self, session: &str) -> Option<usize> {
        self.shared.sessions.lock().end(session)
    }

    /// Forgets sessions idle for `ttl`; returns them with their slots.
    pub fn expire_sessions(&self, ttl: Duration) -> Vec<(String, usize)> {
        self.shared.sessions.lock().expire(ttl)
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared.sessions.lock().info()
    }

    pub fn stats(&self) -> PoolStats {
        stats::snapshot(&self.shared)
    }

    /// Stops the pool: no new requests; running ones get up to `grace` to finish; then every
    /// worker is killed and reaped and every queued request is failed. Blocks until done.
    pub fn close(&self, grace: Duration) {
        let s = &self.shared;
        {
            let mut closing = s.closing.write();
            *closing = true;
            s.closing_flag.store(true, Ordering::Release);
        }
        s.shutdown_tx.lock().take();
        if let Some(forker) = &s.forker {
            forker.begin_close();
        }
        // A worker still starting runs no request: no reason to let it finish.
        for slot in &s.slots {
            if matches!(slot.state(), SlotState::Starting | SlotState::Restarting) {
                if let Some(process) = slot.process.lock().as_ref() {
                    process.kill();
                }
            }
        }
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *self.threads.lock());
        let _ = self.threads_done.recv_deadline(Instant::now() + grace);
        // Whoever is still running a request past the grace period is killed.
        for slot in &s.slots {
            if let Some(process) = slot.process.lock().as_ref() {
                process.kill();
            }
        }
        for thread in threads {
            let _ = thread.join();
        }
        // Last: it reports the exits of the workers reaped above.
        if let Some(forker) = &s.forker {
            forker.close();
        }
        for index in 0..s.slots.len() {
            s.fail_queued(index, FailureKind::PoolClosed);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.threads.lock().is_empty() {
            self.close(Duration::ZERO);
        }
    }
}
