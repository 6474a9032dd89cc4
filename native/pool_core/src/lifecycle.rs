//! A slot's lifecycle: one state ([`SlotState`]) changed in one place ([`change`]), which also
//! keeps the slot's counters and tells the pool's event sink.
//!
//! ```text
//!   Starting ──Ready──▶ Idle ◀──Serving──▶ Busy ──(closing)──▶ Draining
//!      ▲  │                 └──────┬───────────┘                  │
//!      │  └StartFailed┐      Ending, Exited                     Exited
//!      │              ▼            ▼                               ▼
//!      └──Spawning── Restarting ◀──BackingOff            Stopped (the pool closed)
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::pool::{Event, Shared, SlotState};
use crate::request::FailureKind;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What happened to a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A worker process is being started.
    Spawning,
    /// It answered its init ping and got its predecessor's state.
    Ready { os_pid: i32, restart: bool },
    /// It could not start.
    StartFailed { reason: String },
    /// It runs requests (`busy`) or waits for one; `draining` once the pool is closing.
    Serving { busy: bool, draining: bool },
    /// Its worker has to go (it died, is replaced or retires): no new request is sent its
    /// way while it is killed and its requests are failed.
    Ending,
    /// It is gone. `crash`: it died or was killed, and `early` if that was before it did any
    /// real work (answered a request, or lived a while).
    Exited {
        os_pid: i32,
        reason: String,
        crash: bool,
        early: bool,
    },
    /// The slot waits before its next start; [`change`] returns how long.
    BackingOff,
    /// The slot thread ends: the pool closed.
    Stopped,
}

/// Applies `change` to slot `index`: its state, its counters and the events it sends. Returns
/// the wait before the next start for [`Change::BackingOff`], zero otherwise.
pub fn change(shared: &Shared, index: usize, change: Change) -> Duration {
    let slot = &shared.slots[index];
    match change {
        Change::Spawning => slot.set_state(SlotState::Starting),
        Change::Ready { os_pid, restart } => {
            slot.failures_in_row.store(0, Ordering::Release);
            slot.os_pid.store(os_pid, Ordering::Release);
            // Idle before anyone hears it is ready, so stats never lag the event.
            slot.set_state(SlotState::Idle);
            shared.events.event(Event::WorkerReady {
                slot: index,
                os_pid,
                restart,
            });
        }
        Change::StartFailed { reason } => {
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
        Change::Serving { busy, draining } => slot.set_state(match (busy, draining) {
            (true, true) => SlotState::Draining,
            (true, false) => SlotState::Busy,
            (false, _) => SlotState::Idle,
        }),
        // While the pool closes, it stays draining until it stops.
        Change::Ending if shared.is_closing() => {}
        Change::Ending => slot.set_state(SlotState::Restarting),
        Change::Exited {
            os_pid,
            reason,
            crash,
            early,
        } => {
            slot.os_pid.store(0, Ordering::Release);
            match (crash, early) {
                // After real work the count starts afresh: one crash is not a crash loop, and
                // its replacement starts at once.
                (_, false) | (false, true) => slot.crashes_in_row.store(0, Ordering::Release),
                (true, true) => {
                    slot.crashes_in_row.fetch_add(1, Ordering::AcqRel);
                }
            }
            *slot.last_exit.lock() = Some(reason.clone());
            shared.events.event(Event::WorkerExited {
                slot: index,
                os_pid,
                reason,
            });
        }
        Change::BackingOff => {
            let failures = slot.failures_in_row.load(Ordering::Acquire)
                + slot.crashes_in_row.load(Ordering::Acquire);
            let delay = backoff_delay(failures, shared.config.max_backoff);
            slot.restarts.fetch_add(1, Ordering::AcqRel);
            slot.backoff_ms
                .store(delay.as_millis() as u64, Ordering::Release);
            slot.set_state(SlotState::Restarting);
            return delay;
        }
        Change::Stopped => {
            slot.set_state(SlotState::Stopped);
            slot.os_pid.store(0, Ordering::Release);
        }
    }
    Duration::ZERO
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{EventSink, PoolConfig};
    use crate::process::SpawnSpec;
    use parking_lot::Mutex;
    use std::sync::Arc;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Event>>);

    impl EventSink for Recorded {
        fn event(&self, event: Event) {
            self.0.lock().push(event);
        }
    }

    fn shared(size: usize) -> (Shared, Arc<Recorded>) {
        let events = Arc::new(Recorded::default());
        let config = PoolConfig {
            size,
            spawn: SpawnSpec::default(),
            max_frame: 1 << 20,
            max_queue: 10,
            startup_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_millis(400),
            max_requests: None,
            kill_on_timeout: true,
            pin_cpus: false,
            concurrency: 1,
            cancel_grace: Duration::from_secs(1),
            template: None,
        };
        (Shared::new(config, events.clone()), events)
    }

    fn crash(early: bool) -> Change {
        Change::Exited {
            os_pid: 7,
            reason: "crashed".into(),
            crash: true,
            early,
        }
    }

    #[test]
    fn a_start_makes_the_slot_idle_and_says_so() {
        let (shared, events) = shared(1);
        change(&shared, 0, Change::Spawning);
        assert_eq!(shared.slots[0].state(), SlotState::Starting);
        change(
            &shared,
            0,
            Change::Ready {
                os_pid: 42,
                restart: false,
            },
        );
        assert_eq!(shared.slots[0].state(), SlotState::Idle);
        assert_eq!(shared.slots[0].os_pid.load(Ordering::Acquire), 42);
        assert!(matches!(
            events.0.lock().as_slice(),
            [Event::WorkerReady { os_pid: 42, .. }]
        ));
        change(
            &shared,
            0,
            Change::Serving {
                busy: true,
                draining: false,
            },
        );
        assert_eq!(shared.slots[0].state(), SlotState::Busy);
        change(
            &shared,
            0,
            Change::Serving {
                busy: true,
                draining: true,
            },
        );
        assert_eq!(shared.slots[0].state(), SlotState::Draining);
    }

    #[test]
    fn failed_starts_make_the_pool_unavailable_until_one_succeeds() {
        let (shared, _events) = shared(1);
        for _ in 0..3 {
            change(
                &shared,
                0,
                Change::StartFailed {
                    reason: "no python".into(),
                },
            );
        }
        assert!(!shared.is_available());
        assert_eq!(
            shared.slots[0].last_exit.lock().as_deref(),
            Some("no python")
        );
        let ready = Change::Ready {
            os_pid: 1,
            restart: true,
        };
        change(&shared, 0, ready);
        assert!(shared.is_available());
    }

    #[test]
    fn early_crashes_grow_the_backoff_and_real_work_resets_it() {
        let (shared, _events) = shared(1);
        let mut delays = Vec::new();
        for _ in 0..4 {
            change(&shared, 0, crash(true));
            delays.push(change(&shared, 0, Change::BackingOff).as_millis());
        }
        assert_eq!(delays, [100, 200, 400, 400]);
        change(&shared, 0, crash(false));
        assert_eq!(change(&shared, 0, Change::BackingOff), Duration::ZERO);
        change(&shared, 0, crash(true));
        assert_eq!(change(&shared, 0, Change::BackingOff).as_millis(), 100);
        let clean = Change::Exited {
            os_pid: 7,
            reason: "retired".into(),
            crash: false,
            early: false,
        };
        change(&shared, 0, clean);
        assert_eq!(change(&shared, 0, Change::BackingOff), Duration::ZERO);
        assert_eq!(shared.slots[0].restarts.load(Ordering::Acquire), 7);
        assert_eq!(shared.slots[0].state(), SlotState::Restarting);
        // Crashes never make the pool unavailable: its workers do start.
        assert!(shared.is_available());
    }

    #[test]
    fn a_worker_that_has_to_go_takes_no_new_request_until_replaced() {
        let (shared, events) = shared(1);
        change(
            &shared,
            0,
            Change::Serving {
                busy: true,
                draining: false,
            },
        );
        change(&shared, 0, Change::Ending);
        assert_eq!(shared.slots[0].state(), SlotState::Restarting);
        assert!(events.0.lock().is_empty());
    }

    #[test]
    fn stopping_clears_the_process() {
        let (shared, events) = shared(1);
        shared.slots[0].os_pid.store(5, Ordering::Release);
        change(&shared, 0, Change::Stopped);
        assert_eq!(shared.slots[0].state(), SlotState::Stopped);
        assert_eq!(shared.slots[0].os_pid.load(Ordering::Acquire), 0);
        assert!(events.0.lock().is_empty());
    }
}
