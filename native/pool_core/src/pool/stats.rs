//! What a pool reports of itself: a snapshot of its counters and of each worker, for `stats/1`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shared::{Shared, Slot, SlotState};

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
    pub sessions: usize,
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

/// The pool's counters and each worker as they are now.
pub(crate) fn snapshot(s: &Shared) -> PoolStats {
    let c = &s.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // A worker serving one request at a time counts none in flight: its state says.
    let in_flight = |slot: &Slot, state: SlotState| match s.config.concurrency {
        1 => u64::from(state == SlotState::Busy),
        _ => load(&slot.in_flight),
    };
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
        in_flight: s
            .slots
            .iter()
            .map(|slot| in_flight(slot, slot.state()))
            .sum(),
        sessions: s.sessions.lock().len(),
        workers: s
            .slots
            .iter()
            .enumerate()
            .map(|(id, slot)| {
                // One reading of each for both fields, so a worker never shows idle with a
                // request in flight.
                let state = slot.state();
                let in_flight = in_flight(slot, state);
                WorkerStats {
                    id,
                    os_pid: slot.os_pid.load(Ordering::Acquire),
                    state: shown_state(state, s.config.concurrency, in_flight),
                    requests: load(&slot.requests),
                    restarts: load(&slot.restarts),
                    last_exit: slot.last_exit.lock().clone(),
                    queue_length: slot.queue.len(),
                    cpu: usize::try_from(slot.cpu.load(Ordering::Acquire)).ok(),
                    backoff_ms: load(&slot.backoff_ms),
                    in_flight,
                }
            })
            .collect(),
    }
}

/// A worker's state as `stats` shows it. A multiplexed worker's thread is not woken by each
/// reply (see `multiplex`), so its own state may say busy after the last one: whether it is
/// busy is what it has in flight.
fn shown_state(state: SlotState, concurrency: usize, in_flight: u64) -> SlotState {
    match state {
        SlotState::Busy | SlotState::Idle if concurrency > 1 => {
            if in_flight > 0 {
                SlotState::Busy
            } else {
                SlotState::Idle
            }
        }
        state => state,
    }
}
