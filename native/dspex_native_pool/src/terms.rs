//! The shapes of the terms the NIF takes and gives, as rustler derives: what Elixir sends with
//! a request, and the stats and session maps it reads back.

use rustler::{NifMap, NifTaggedEnum, NifTuple, NifUnitEnum, Term};

use dspex_pool_core::pool::{PoolStats, SlotState, WorkerStats};
use dspex_pool_core::sessions::SessionInfo;

/// Where a request goes: `:any`, `{:worker, index}` or `{:session, id}`.
#[derive(NifTaggedEnum)]
pub enum Target {
    Any,
    Worker(usize),
    Session(String),
}

/// What a session remembers when its request succeeds: `:none`, `{:put, session, key}` or
/// `{:delete, session, key}`.
#[derive(NifTaggedEnum)]
pub enum Record {
    None,
    Put(String, String),
    Delete(String, String),
}

/// What a tool returned: `{:ok, result}` or `{:error, message}`.
#[derive(NifTaggedEnum)]
pub enum ToolOutcome<'a> {
    Ok(Term<'a>),
    Error(String),
}

/// How a request is sent: `{timeout_ms, target, record, stream_window, id}` (a window of 0:
/// the reply does not stream; an id of 0: one is assigned here).
#[derive(NifTuple)]
pub struct Routing {
    pub timeout_ms: u64,
    pub target: Target,
    pub record: Record,
    pub stream_window: u32,
    pub id: u64,
}

#[derive(NifUnitEnum)]
pub enum WorkerState {
    Starting,
    Idle,
    Busy,
    Restarting,
    Stopped,
    Draining,
}

impl From<SlotState> for WorkerState {
    fn from(state: SlotState) -> WorkerState {
        match state {
            SlotState::Starting => WorkerState::Starting,
            SlotState::Idle => WorkerState::Idle,
            SlotState::Busy => WorkerState::Busy,
            SlotState::Restarting => WorkerState::Restarting,
            SlotState::Stopped => WorkerState::Stopped,
            SlotState::Draining => WorkerState::Draining,
        }
    }
}

#[derive(NifMap)]
pub struct WorkerMap {
    id: usize,
    os_pid: Option<i32>,
    state: WorkerState,
    requests: u64,
    restarts: u64,
    last_exit: Option<String>,
    queue_length: usize,
    cpu: Option<usize>,
    backoff_ms: u64,
    in_flight: u64,
}

impl From<WorkerStats> for WorkerMap {
    fn from(w: WorkerStats) -> WorkerMap {
        WorkerMap {
            id: w.id,
            os_pid: (w.os_pid > 0).then_some(w.os_pid),
            state: w.state.into(),
            requests: w.requests,
            restarts: w.restarts,
            last_exit: w.last_exit,
            queue_length: w.queue_length,
            cpu: w.cpu,
            backoff_ms: w.backoff_ms,
            in_flight: w.in_flight,
        }
    }
}

#[derive(NifMap)]
pub struct Counters {
    completed: u64,
    timed_out: u64,
    rejected: u64,
    dropped: u64,
    worker_exited: u64,
    invalid_reply: u64,
    pool_closed: u64,
    pool_unavailable: u64,
}

#[derive(NifMap)]
pub struct StatsMap {
    pool_size: usize,
    queue_length: usize,
    available: bool,
    closing: bool,
    in_flight: u64,
    sessions: usize,
    counters: Counters,
    workers: Vec<WorkerMap>,
}

impl From<PoolStats> for StatsMap {
    fn from(s: PoolStats) -> StatsMap {
        StatsMap {
            pool_size: s.size,
            queue_length: s.queue_length,
            available: s.available,
            closing: s.closing,
            in_flight: s.in_flight,
            sessions: s.sessions,
            counters: Counters {
                completed: s.completed,
                timed_out: s.timed_out,
                rejected: s.rejected,
                dropped: s.dropped,
                worker_exited: s.worker_exited,
                invalid_reply: s.invalid_reply,
                pool_closed: s.pool_closed,
                pool_unavailable: s.pool_unavailable,
            },
            workers: s.workers.into_iter().map(WorkerMap::from).collect(),
        }
    }
}

#[derive(NifMap)]
pub struct SessionMap {
    id: String,
    worker: usize,
    age_ms: u64,
    idle_ms: u64,
    requests: u64,
    definitions: usize,
}

impl From<SessionInfo> for SessionMap {
    fn from(s: SessionInfo) -> SessionMap {
        SessionMap {
            id: s.id,
            worker: s.slot,
            age_ms: s.age.as_millis() as u64,
            idle_ms: s.idle.as_millis() as u64,
            requests: s.requests,
            definitions: s.definitions,
        }
    }
}
