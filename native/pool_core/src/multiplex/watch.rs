//! What a multiplexed worker's slot thread watches while its requests run (their deadlines,
//! their callers, cancels past their grace, the worker's health), and how long it may sleep
//! between looks.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Cancel, Serving, CALLER_CHECK, TICK};
use crate::protocol;
use crate::worker::End;

impl Serving<'_> {
    /// How long the thread may wait for news before it looks around again: a short tick
    /// while requests run (their deadlines and callers are watched here), and with none in
    /// flight, until the next health check. An idle worker then costs one wake-up per
    /// `health_interval` instead of one per tick; a request a caller starts meanwhile wakes
    /// the thread (see `crate::direct`).
    pub(super) fn wait(&self, running: usize) -> Duration {
        if running > 0 || self.closing || !self.doze() {
            return TICK;
        }
        let config = &self.shared.config;
        let due = match self.ping {
            Some((_, sent)) => sent + config.health_timeout,
            None => self.last_ping + config.health_interval,
        };
        // A millisecond late rather than a moment early, which would only look again.
        due.saturating_duration_since(Instant::now()) + Duration::from_millis(1)
    }

    /// Marks the slot dozing if nothing is in flight. The mark comes before a second look,
    /// sequentially consistent with a caller's reservation of a place in flight: either
    /// this look sees the caller's request, or the caller sees the mark and wakes the thread.
    fn doze(&self) -> bool {
        let slot = &self.shared.slots[self.index];
        if slot.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        slot.dozing.store(true, Ordering::SeqCst);
        if slot.in_flight.load(Ordering::SeqCst) > 0 {
            slot.dozing.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Deadlines, dead callers, cancels past their grace, and the health ping.
    pub(super) fn look_around(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let config = &self.shared.config;
        let check_callers = now.duration_since(self.last_caller_check) >= CALLER_CHECK;
        if check_callers {
            self.last_caller_check = now;
        }
        let mut to_cancel = Vec::new();
        for (id, running) in self.table.lock().iter() {
            match running.cancelled_at {
                Some(at) if now.duration_since(at) >= config.cancel_grace => {
                    return Err(End::Replace(format!(
                        "request {id} ({:?}) did not end within {} ms of its cancel (cancel_grace)",
                        running.request.command,
                        config.cancel_grace.as_millis()
                    )));
                }
                Some(_) => {}
                None if now >= running.request.deadline => {
                    running.request.ticket.cancel();
                    to_cancel.push((*id, Cancel::Deadline));
                }
                None if check_callers && !running.request.caller.is_alive() => {
                    running.request.ticket.cancel();
                    to_cancel.push((*id, Cancel::CallerGone));
                }
                None => {}
            }
        }
        for (id, why) in to_cancel {
            self.cancel_in_worker(id, why)?;
        }
        self.health(now)
    }

    /// Pings the worker every `health_interval`, busy or not: a worker whose interpreter is
    /// stuck (a C loop holding the GIL) answers neither the ping nor anything else.
    fn health(&mut self, now: Instant) -> Result<(), End> {
        let config = &self.shared.config;
        if let Some((_, sent)) = self.ping {
            if now.duration_since(sent) >= config.health_timeout {
                return Err(End::Replace(format!(
                    "no answer to a health check within {} ms",
                    config.health_timeout.as_millis()
                )));
            }
            return Ok(());
        }
        if now.duration_since(self.last_ping) < config.health_interval {
            return Ok(());
        }
        let id = crate::pool::next_request_id();
        let frame = protocol::request(id, "ping", b"{}", config.max_frame)
            .map_err(|e| End::Replace(format!("cannot write a health check: {e}")))?;
        self.write(&frame, None, now + config.health_timeout)
            .map_err(|_| End::Died)?;
        self.ping = Some((id, now));
        self.last_ping = now;
        Ok(())
    }
}
