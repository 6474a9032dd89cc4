//! The pool: its queues, its slots and what it tells the outside.
//!
//! Callers put requests on a bounded queue that every idle worker thread takes from (no
//! checkout, no dispatcher); each slot also has a queue of its own for requests that must run on
//! that worker. Nothing here knows about Erlang: replies leave through [`Caller`], news through
//! [`EventSink`].

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::affinity::{self, CpuClaim};
use crate::process::SpawnSpec;
use crate::queue::Queue;
use crate::request::{FailureKind, Request};
use crate::sessions::{Record, SessionInfo, Sessions};

/// Request ids are unique across every pool of the VM, so a reply can never be mistaken for
/// another pool's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_request_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub size: usize,
    /// The worker command; `--worker-id N` is appended for each slot.
    pub spawn: SpawnSpec,
    pub max_frame: usize,
    pub max_queue: usize,
    pub startup_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub max_backoff: Duration,
    pub max_requests: Option<u64>,
    pub kill_on_timeout: bool,
    /// Give each worker a CPU of its own when there are enough free ones (see
    /// [`crate::affinity`]).
    pub pin_cpus: bool,
    /// Requests a worker runs at once; above 1 they are multiplexed by id (see
    /// [`crate::multiplex`]).
    pub concurrency: usize,
    /// How long a cancelled request may take to end before its worker is replaced.
    pub cancel_grace: Duration,
}

impl PoolConfig {
    pub fn spawn_spec(&self, index: usize) -> SpawnSpec {
        let mut spec = self.spawn.clone();
        spec.args.push(OsString::from("--worker-id"));
        spec.args.push(OsString::from(index.to_string()));
        if self.concurrency > 1 {
            spec.args.push(OsString::from("--concurrency"));
            spec.args.push(OsString::from(self.concurrency.to_string()));
        }
        spec
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    Starting = 0,
    Idle = 1,
    Busy = 2,
    Restarting = 3,
    Stopped = 4,
    /// The pool is closing; the worker finishes what it runs.
    Draining = 5,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            0 => SlotState::Starting,
            1 => SlotState::Idle,
            2 => SlotState::Busy,
            3 => SlotState::Restarting,
            5 => SlotState::Draining,
            _ => SlotState::Stopped,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// What the pool reports about its workers (lifecycle and output), never per request.
#[derive(Debug, Clone)]
pub enum Event {
    /// Something went wrong that no caller can be told about (a failed replay).
    Warning { slot: usize, message: String },
    WorkerReady {
        slot: usize,
        os_pid: i32,
        restart: bool,
    },
    WorkerStartFailed {
        slot: usize,
        reason: String,
        failures: u32,
    },
    WorkerExited {
        slot: usize,
        os_pid: i32,
        reason: String,
    },
    Log {
        slot: usize,
        stream: Stream,
        line: String,
    },
}

pub trait EventSink: Send + Sync + 'static {
    fn event(&self, event: Event);
}

pub struct Slot {
    /// Requests that must run on this worker (sessions, broadcasts).
    pub(crate) queue: Queue<Request>,
    state: AtomicU8,
    pub(crate) os_pid: AtomicI32,
    pub(crate) requests: AtomicU64,
    pub(crate) restarts: AtomicU64,
    /// Failed starts in a row (a pool whose every slot has several is unavailable).
    pub(crate) failures_in_row: AtomicU32,
    /// Crashes in a row of workers that died early without answering a request.
    pub(crate) crashes_in_row: AtomicU32,
    /// The wait before this slot's latest restart.
    pub(crate) backoff_ms: AtomicU64,
    pub(crate) last_exit: Mutex<Option<String>>,
    pub(crate) process: Mutex<Option<Arc<crate::process::ProcessHandle>>>,
    /// The CPU this slot's thread and worker are pinned to, or -1.
    cpu: AtomicI32,
    /// Requests its worker is running now.
    pub(crate) in_flight: AtomicU64,
}

impl Slot {
    fn new(max_queue: usize) -> Slot {
        Slot {
            queue: Queue::new(max_queue),
            state: AtomicU8::new(SlotState::Starting as u8),
            os_pid: AtomicI32::new(0),
            requests: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            failures_in_row: AtomicU32::new(0),
            crashes_in_row: AtomicU32::new(0),
            backoff_ms: AtomicU64::new(0),
            last_exit: Mutex::new(None),
            process: Mutex::new(None),
            cpu: AtomicI32::new(-1),
            in_flight: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_state(&self, state: SlotState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn state(&self) -> SlotState {
        SlotState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Requests in flight plus those waiting in this slot's queue.
    fn load(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire) + self.queue.len() as u64
    }
}

#[derive(Default)]
pub struct Counters {
    pub completed: AtomicU64,
    pub timed_out: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub worker_exited: AtomicU64,
    pub invalid_reply: AtomicU64,
    pub pool_closed: AtomicU64,
    pub pool_unavailable: AtomicU64,
}

impl Counters {
    pub(crate) fn count_failure(&self, kind: FailureKind) {
        let counter = match kind {
            FailureKind::WorkerExited => &self.worker_exited,
            FailureKind::InvalidReply
            | FailureKind::ReplyTooLarge
            | FailureKind::WrongReplyId
            | FailureKind::ResultTooDeep => &self.invalid_reply,
            FailureKind::PoolClosed => &self.pool_closed,
            FailureKind::PoolUnavailable => &self.pool_unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by the pool handle and its slot threads.
pub struct Shared {
    pub config: PoolConfig,
    pub slots: Vec<Slot>,
    /// Requests any worker may take.
    pub(crate) queue: Queue<Request>,
    /// Dropped when the pool stops: wakes every idle or backing-off slot thread.
    shutdown_tx: Mutex<Option<Sender<()>>>,
    pub(crate) shutdown_rx: Receiver<()>,
    /// Held for reading while a request is enqueued, so none slips in after the final drain.
    closing: RwLock<bool>,
    closing_flag: AtomicBool,
    pub events: Arc<dyn EventSink>,
    pub counters: Counters,
    pub(crate) sessions: Mutex<Sessions>,
    /// Workers waiting for a request, most recently idle last.
    pub(crate) idle: IdleStack,
}

/// The idle workers, as a stack: the last to become idle is the first handed a request.
#[derive(Default)]
pub struct IdleStack(Mutex<Vec<usize>>);

impl IdleStack {
    /// Lists `index` as the most recently idle (moving it to the top if already listed).
    pub(crate) fn push(&self, index: usize) {
        let mut stack = self.0.lock();
        stack.retain(|&i| i != index);
        stack.push(index);
    }

    pub(crate) fn pop(&self) -> Option<usize> {
        self.0.lock().pop()
    }

    pub(crate) fn remove(&self, index: usize) {
        self.take(index);
    }

    /// Removes `index`; `true` if it was listed.
    pub(crate) fn take(&self, index: usize) -> bool {
        let mut stack = self.0.lock();
        let listed = stack.len();
        stack.retain(|&i| i != index);
        stack.len() < listed
    }
}

/// Pools with all workers failing to start this many times in a row fail calls at once.
const UNAVAILABLE_AFTER: u32 = 3;

impl Shared {
    /// The state of a pool of `config.size` slots, none of them started.
    pub(crate) fn new(config: PoolConfig, events: Arc<dyn EventSink>) -> Shared {
        let (shutdown_tx, shutdown_rx) = bounded(0);
        Shared {
            queue: Queue::new(config.max_queue),
            slots: (0..config.size)
                .map(|_| Slot::new(config.max_queue))
                .collect(),
            config,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            shutdown_rx,
            closing: RwLock::new(false),
            closing_flag: AtomicBool::new(false),
            events,
            counters: Counters::default(),
            sessions: Mutex::new(Sessions::default()),
            idle: IdleStack::default(),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing_flag.load(Ordering::Acquire)
    }

    /// `false` once every slot has failed to start several times in a row.
    pub fn is_available(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.failures_in_row.load(Ordering::Acquire) < UNAVAILABLE_AFTER)
    }

    /// Fails everything waiting for `index` and, if the whole pool is down, the shared queue.
    pub(crate) fn fail_queued(&self, index: usize, kind: FailureKind) {
        let message = match kind {
            FailureKind::PoolUnavailable => {
                "no worker could be started; the pool keeps retrying with backoff".to_string()
            }
            _ => "the pool stopped before the request ran".to_string(),
        };
        let fail = |request: Request| {
            self.counters.count_failure(kind);
            request.fail_unrun(kind, message.clone());
        };
        while let Some(request) = self.slots[index].queue.try_pop() {
            fail(request);
        }
        while let Some(request) = self.queue.try_pop() {
            fail(request);
        }
    }
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

/// A snapshot for `stats/1`.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub size: usize,
    pub queue_length: usize,
    pub available: bool,
    pub closing: bool,
    pub completed: u64,
    pub timed_out: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub worker_exited: u64,
    pub invalid_reply: u64,
    pub pool_closed: u64,
    pub pool_unavailable: u64,
    pub in_flight: u64,
    pub workers: Vec<WorkerStats>,
}

#[derive(Debug, Clone)]
pub struct WorkerStats {
    pub id: usize,
    pub os_pid: i32,
    pub state: SlotState,
    pub requests: u64,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub queue_length: usize,
    /// The CPU the worker is pinned to, if any (see [`crate::affinity`]).
    pub cpu: Option<usize>,
    /// How long the slot waited before its latest restart (see `lifecycle::backoff_delay`).
    pub backoff_ms: u64,
    pub in_flight: u64,
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
            Route::Session(id) => Some(self.shared.sessions.lock().route(id, slots.len(), |i| {
                slots[i].failures_in_row.load(Ordering::Acquire) < UNAVAILABLE_AFTER
            })),
        };
        request.route_slot = target;
        let (queue, placement) = match target {
            // Several requests per worker: to the one with the fewest in flight.
            None if self.shared.config.concurrency > 1 => {
                let i = self.least_loaded();
                let placement = if slots[i].load() == 0 {
                    Placement::IdleWorker
                } else {
                    Placement::Queued
                };
                (&slots[i].queue, placement)
            }
            // Straight to the most recently idle worker, if any; else whoever frees up first.
            None => match self.shared.idle.pop() {
                Some(i) => (&slots[i].queue, Placement::IdleWorker),
                None => (&self.shared.queue, Placement::Queued),
            },
            // Off the idle list, so that no other request is handed to it meanwhile.
            Some(i) if self.shared.idle.take(i) && slots[i].queue.is_empty() => {
                (&slots[i].queue, Placement::IdleWorker)
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

    /// The serving slot with the fewest requests in flight or waiting (any slot if none
    /// serves: the request waits for its start).
    fn least_loaded(&self) -> usize {
        let slots = &self.shared.slots;
        let serving = |s: &Slot| matches!(s.state(), SlotState::Idle | SlotState::Busy);
        (0..slots.len())
            .filter(|&i| serving(&slots[i]))
            .min_by_key(|&i| slots[i].load())
            .or_else(|| (0..slots.len()).min_by_key(|&i| slots[i].load()))
            .unwrap_or(0)
    }

    /// Remembers pool-wide state to replay on every new worker.
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
        let s = &self.shared;
        let c = &s.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            size: s.config.size,
            queue_length: s.queue.len() + s.slots.iter().map(|x| x.queue.len()).sum::<usize>(),
            available: s.is_available() && !s.is_closing(),
            closing: s.is_closing(),
            completed: load(&c.completed),
            timed_out: load(&c.timed_out),
            rejected: load(&c.rejected),
            dropped: load(&c.dropped),
            worker_exited: load(&c.worker_exited),
            invalid_reply: load(&c.invalid_reply),
            pool_closed: load(&c.pool_closed),
            pool_unavailable: load(&c.pool_unavailable),
            in_flight: s.slots.iter().map(|x| load(&x.in_flight)).sum(),
            workers: s
                .slots
                .iter()
                .enumerate()
                .map(|(id, slot)| WorkerStats {
                    id,
                    os_pid: slot.os_pid.load(Ordering::Acquire),
                    state: slot.state(),
                    requests: load(&slot.requests),
                    restarts: load(&slot.restarts),
                    last_exit: slot.last_exit.lock().clone(),
                    queue_length: slot.queue.len(),
                    cpu: usize::try_from(slot.cpu.load(Ordering::Acquire)).ok(),
                    backoff_ms: load(&slot.backoff_ms),
                    in_flight: load(&slot.in_flight),
                })
                .collect(),
        }
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
