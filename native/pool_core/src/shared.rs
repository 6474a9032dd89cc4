//! What every worker thread of a pool shares: its configuration, its slots (one per worker,
//! with the state others read), its counters and queues, and the events it sends out.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use crate::process::SpawnSpec;
use crate::queue::Queue;
use crate::request::{FailureKind, Request};
use crate::sessions::Sessions;
use crate::template::Forker;

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
    /// Fork workers from a template started with these extra arguments (see
    /// [`crate::template`]); `None` spawns each worker.
    pub template: Option<Vec<OsString>>,
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

    /// How the template runs: the worker's command without a worker id, plus `template`'s.
    pub fn template_spec(&self) -> Option<SpawnSpec> {
        let extra = self.template.as_ref()?;
        let mut spec = self.spawn.clone();
        if self.concurrency > 1 {
            spec.args.push(OsString::from("--concurrency"));
            spec.args.push(OsString::from(self.concurrency.to_string()));
        }
        spec.args.extend(extra.iter().cloned());
        Some(spec)
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
    pub(crate) fn from_u8(v: u8) -> SlotState {
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
    /// A running request's worker asks the application to run a tool: `body` is the frame,
    /// `{"id":N,"tool_call":{"call":K,"name":...,"args":...}}`; the answer goes back through
    /// [`crate::pool::Pool::send_to_worker`], within `deadline_ms` (what is left of the
    /// request's deadline).
    ToolCall {
        slot: usize,
        id: u64,
        deadline_ms: u64,
        body: Vec<u8>,
    },
}

pub trait EventSink: Send + Sync + 'static {
    fn event(&self, event: Event);
}

pub struct Slot {
    /// Requests that must run on this worker (sessions, broadcasts).
    pub(crate) queue: Queue<Request>,
    pub(crate) state: AtomicU8,
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
    pub(crate) cpu: AtomicI32,
    /// Requests its worker is running now.
    pub(crate) in_flight: AtomicU64,
    /// Of those, the ones cancelled that have not ended yet: a worker that does not end them
    /// within `cancel_grace` is killed with everything it holds, so new requests avoid it.
    pub(crate) cancels_pending: AtomicU64,
    /// Tool results on their way to its worker (see [`crate::tools`]).
    pub(crate) outbox: crate::tools::Outbox,
    /// Set while its multiplexed worker accepts requests straight from callers (see
    /// [`crate::direct`]); every write to that worker's request pipe holds this lock.
    pub(crate) wire: Mutex<Option<crate::direct::Wire>>,
    /// Set while its multiplexed worker's slot thread waits without taking requests, for want
    /// of room: the reply that makes room must wake it (see `replies::answer`).
    pub(crate) parked_full: AtomicBool,
    /// Set while that slot thread sleeps until its next health check, with nothing in flight:
    /// a request a caller starts meanwhile must wake it (see `direct::wake_if_dozing`).
    pub(crate) dozing: AtomicBool,
}

impl Slot {
    pub(crate) fn new(max_queue: usize) -> Slot {
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
            cancels_pending: AtomicU64::new(0),
            outbox: crate::tools::Outbox::new(),
            wire: Mutex::new(None),
            parked_full: AtomicBool::new(false),
            dozing: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_state(&self, state: SlotState) {
        self.state.store(state as u8, Ordering::Release);
    }

    pub fn state(&self) -> SlotState {
        SlotState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Takes a place in flight if fewer than `concurrency` are taken; `false` if none is free.
    /// Callers, the reader thread and the slot thread all start requests: only this counts.
    pub(crate) fn reserve(&self, concurrency: usize) -> bool {
        self.in_flight
            // Sequentially consistent with the slot thread's look before it dozes.
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < concurrency as u64).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether its worker starts: fewer than [`UNAVAILABLE_AFTER`] failed starts in a row.
    pub(crate) fn starts(&self) -> bool {
        self.failures_in_row.load(Ordering::Acquire) < UNAVAILABLE_AFTER
    }

    /// Requests in flight plus those waiting in this slot's queue.
    pub(crate) fn load(&self) -> u64 {
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
    pub(crate) shutdown_tx: Mutex<Option<Sender<()>>>,
    pub(crate) shutdown_rx: Receiver<()>,
    /// Held for reading while a request is enqueued, so none slips in after the final drain.
    pub(crate) closing: RwLock<bool>,
    pub(crate) closing_flag: AtomicBool,
    pub events: Arc<dyn EventSink>,
    pub counters: Counters,
    pub(crate) sessions: Mutex<Sessions>,
    /// Workers waiting for a request, most recently idle last.
    pub(crate) idle: IdleStack,
    /// The template workers are forked from, if the pool forks them.
    pub(crate) forker: Option<Forker>,
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
pub(crate) const UNAVAILABLE_AFTER: u32 = 3;

impl Shared {
    /// The state of a pool of `config.size` slots, none of them started.
    pub(crate) fn new(config: PoolConfig, events: Arc<dyn EventSink>) -> Shared {
        let (shutdown_tx, shutdown_rx) = bounded(0);
        let forker = config
            .template_spec()
            .map(|spec| Forker::new(spec, events.clone()));
        Shared {
            forker,
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
        self.slots.iter().any(Slot::starts)
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
