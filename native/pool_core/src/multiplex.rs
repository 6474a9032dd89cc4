//! A worker that runs several requests at once (`concurrency` above 1).
//!
//! The slot thread writes each request's frame as soon as the worker has room for it and
//! keeps it in a table by id; a reader thread of its own reads replies in whatever order they
//! come and hands each to the request with its id. A request whose caller gave up (deadline,
//! death) is cancelled in the worker by a frame with its id and the command `__cancel__`; the
//! worker and its other requests carry on. Only a cancelled request that does not end within
//! `cancel_grace` gets its worker replaced, and with it every request it still held.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, unbounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::direct::Wire;
use crate::frame::{self, FrameError};
use crate::lifecycle::{self, Change};
use crate::pool::{Shared, Slot};
use crate::protocol;
use crate::request::Request;
use crate::worker::{self, End, Live};

mod watch;

/// The command that tells a worker to cancel the request with the frame's id.
pub const CANCEL_COMMAND: &str = "__cancel__";

/// How often the slot thread looks at deadlines, grace periods and health while it waits.
const TICK: Duration = Duration::from_millis(20);
/// How often it asks whether the callers of running requests are still alive.
const CALLER_CHECK: Duration = Duration::from_millis(250);

pub(crate) struct Running {
    pub(crate) request: Request,
    /// When the worker was told to cancel it.
    pub(crate) cancelled_at: Option<Instant>,
}

pub(crate) type Table = Arc<Mutex<HashMap<u64, Running>>>;

/// Takes request `id` out of its worker's table (locked). The slot's count of cancels pending
/// changes only here, in `cancel_in_worker` and at the worker's end, each under the table's
/// lock, so it always matches the table.
pub(crate) fn take_running(
    table: &mut HashMap<u64, Running>,
    slot: &Slot,
    id: u64,
) -> Option<Running> {
    let running = table.remove(&id)?;
    if running.cancelled_at.is_some() {
        slot.cancels_pending.fetch_sub(1, Ordering::AcqRel);
    }
    Some(running)
}

/// Why a running request is cancelled in its worker: what it counts as in the pool's stats.
#[derive(Clone, Copy)]
enum Cancel {
    /// Its deadline passed, seen by the slot thread.
    Deadline,
    /// Its caller died.
    CallerGone,
    /// Its caller gave up on it: at its deadline (a timeout), or earlier (a stream it ended).
    GaveUp,
}

/// What the reader thread tells the slot thread.
pub(crate) enum News {
    Answered,
    /// Answered, and nothing for the slot thread to do (never sent).
    Quiet,
    /// A reply whose id no running request has (a health ping's, or a stray frame).
    Other(u64),
    Died,
    Broken(String),
}

/// Serves until the worker has to go; returns why, and the requests it still held.
pub(crate) fn serve(shared: &Arc<Shared>, index: usize, live: &mut Live) -> (End, Vec<Request>) {
    let table: Table = Arc::default();
    let (news_tx, news) = unbounded();
    let Some(reader) = live.replies.take() else {
        return (End::Replace("its reply stream is gone".into()), Vec::new());
    };
    let thread_shared = shared.clone();
    let thread_table = table.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("dspex-np-replies-{index}"))
        .stack_size(8 << 20)
        .spawn(move || {
            crate::replies::read_replies(thread_shared, index, reader, thread_table, news_tx)
        });
    if spawned.is_err() {
        return (
            End::Replace("no thread could be made to read its replies".into()),
            Vec::new(),
        );
    }
    let cancels = unbounded();
    let overflow = unbounded();
    let wake = bounded(1);
    let slot = &shared.slots[index];
    // Callers start requests here themselves while it accepts them (see `crate::direct`).
    *slot.wire.lock() = live.requests.try_clone().ok().map(|requests| Wire {
        requests,
        table: table.clone(),
        cancels: cancels.0.clone(),
        overflow: overflow.0.clone(),
        wake: wake.0.clone(),
    });
    let mut serving = Serving {
        shared,
        index,
        live,
        table: table.clone(),
        cancels,
        overflow: overflow.1,
        overflow_tx: overflow.0.clone(),
        closing: false,
        ping: None,
        last_ping: Instant::now(),
        last_caller_check: Instant::now(),
    };
    let end = serving.run(&news, &wake.1);
    // Taken under the lock callers start requests with: none is added to the table after.
    drop(slot.wire.lock().take());
    // Taken from the queue for this worker and never started: back in line (the worker's
    // end moves those free to run anywhere to the pool's queue).
    for request in serving.overflow.try_iter() {
        if let Err(request) = slot.queue.push(request) {
            request.fail_unrun(
                crate::request::FailureKind::WorkerExited,
                format!("worker {index} stopped before it could take the request, and its queue is full"),
            );
        }
    }
    let pending: Vec<Request> = {
        let mut running = table.lock();
        slot.cancels_pending.store(0, Ordering::Release);
        running.drain().map(|(_, r)| r.request).collect()
    };
    slot.in_flight.store(0, Ordering::Release);
    (end, pending)
}

struct Serving<'a> {
    shared: &'a Arc<Shared>,
    index: usize,
    live: &'a mut Live,
    table: Table,
    cancels: (Sender<u64>, Receiver<u64>),
    /// Requests taken from the queue but not started (no room, or too large for the reader
    /// thread to write): started as room frees.
    overflow: Receiver<Request>,
    overflow_tx: Sender<Request>,
    closing: bool,
    /// The health ping in flight: its id and when it was sent.
    ping: Option<(u64, Instant)>,
    last_ping: Instant,
    last_caller_check: Instant,
}

impl Serving<'_> {
    fn run(&mut self, news: &Receiver<News>, wake: &Receiver<()>) -> End {
        let shared = self.shared;
        let slot = &shared.slots[self.index];
        let config = &shared.config;
        loop {
            let running = self.table.lock().len();
            let retiring = config
                .max_requests
                .is_some_and(|max| self.live.served >= max);
            if running == 0 && (self.closing || retiring) {
                return if self.closing {
                    End::Shutdown
                } else {
                    End::Retired
                };
            }
            let serving = Change::Serving {
                busy: running > 0,
                draining: self.closing,
            };
            lifecycle::change(shared, self.index, serving);
            let accepting = !self.closing && !retiring && self.room_or_park();
            if self.closing || retiring {
                drop(slot.wire.lock().take());
            }
            let own = if accepting {
                slot.queue.receiver().clone()
            } else {
                never()
            };
            let overflow = if accepting {
                self.overflow.clone()
            } else {
                never()
            };
            let any = if accepting {
                shared.queue.receiver().clone()
            } else {
                never()
            };
            let shutdown = if self.closing {
                never()
            } else {
                shared.shutdown_rx.clone()
            };
            let cancels = self.cancels.1.clone();
            let outbox = slot.outbox.rx.clone();
            let wait = self.wait(running);
            let step = select! {
                recv(wake) -> _ => Ok(()),
                recv(news) -> n => self.news(n.unwrap_or(News::Died)),
                recv(outbox) -> m => m.map_or(Ok(()), |(id, frame)| self.write_tool_result(id, &frame)),
                recv(cancels) -> id => id.map_or(Ok(()), |id| self.cancel_in_worker(id, Cancel::GaveUp)),
                recv(shutdown) -> _ => {
                    self.closing = true;
                    Ok(())
                }
                recv(overflow) -> r => match r {
                    Ok(request) => self.take(request, None),
                    Err(_) => Ok(()),
                },
                recv(own) -> r => match r {
                    Ok(request) => self.take(request, Some(&slot.queue)),
                    Err(_) => Ok(()),
                },
                recv(any) -> r => match r {
                    Ok(request) => self.take(request, Some(&shared.queue)),
                    Err(_) => Ok(()),
                },
                default(wait) => Ok(()),
            };
            slot.parked_full.store(false, Ordering::Relaxed);
            slot.dozing.store(false, Ordering::Relaxed);
            if let Err(end) = step.and_then(|()| self.look_around()) {
                return end;
            }
        }
    }

    /// Whether its worker has room for another request. If not, the slot is marked parked
    /// before a second look, so that the reply that makes room either is seen here or sees
    /// the mark (and wakes this thread): without the mark, replies need not wake it.
    fn room_or_park(&self) -> bool {
        let slot = &self.shared.slots[self.index];
        let max = self.shared.config.concurrency as u64;
        if slot.in_flight.load(Ordering::Acquire) < max {
            return true;
        }
        slot.parked_full.store(true, Ordering::SeqCst);
        if slot.in_flight.load(Ordering::SeqCst) < max {
            slot.parked_full.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn news(&mut self, news: News) -> Result<(), End> {
        match news {
            News::Answered | News::Quiet => Ok(()),
            News::Other(id) if self.ping.is_some_and(|(ping, _)| ping == id) => {
                self.ping = None;
                Ok(())
            }
            News::Other(id) => Err(End::Replace(format!(
                "it sent a reply with id {id}, which no request of its has"
            ))),
            News::Died => Err(End::Died),
            News::Broken(why) => Err(End::Replace(why)),
        }
    }

    /// Takes a request out of `queue`: counted in flight before it leaves the queue's count,
    /// so a caller choosing the least loaded worker never sees it in neither.
    fn take(
        &mut self,
        request: Request,
        queue: Option<&crate::queue::Queue<Request>>,
    ) -> Result<(), End> {
        let slot = &self.shared.slots[self.index];
        let in_flight = &slot.in_flight;
        let reserved = slot.reserve(self.shared.config.concurrency);
        if let Some(queue) = queue {
            queue.taken();
        }
        if !reserved {
            // Callers filled the worker since this thread looked: it waits for room here.
            let _ = self.overflow_tx.send(request);
            return Ok(());
        }
        let started = self.start(request);
        if matches!(started, Ok(false)) {
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        started.map(|_| ())
    }

    /// Sends a request to the worker; `false` if its caller had already given up.
    fn start(&mut self, mut request: Request) -> Result<bool, End> {
        let shared = self.shared;
        let id = request.id;
        let cancels = self.cancels.0.clone();
        // Before it starts, so a caller that gives up at any moment after is heard.
        let hook = || {
            request.ticket.on_cancel(move || {
                let _ = cancels.send(id);
            })
        };
        if !worker::admit(shared, &request, hook) {
            return Ok(false);
        }
        let slot = &shared.slots[self.index];
        let frame = std::mem::take(&mut request.frame);
        // Held here until written: the request may be answered, and dropped, meanwhile.
        let splices = request.splices.take();
        let deadline = request.deadline;
        self.live.served += 1;
        slot.requests.fetch_add(1, Ordering::Relaxed);
        // In the table before the worker can answer it.
        self.table.lock().insert(
            id,
            Running {
                request,
                cancelled_at: None,
            },
        );
        let written = self.write(&frame, splices.as_deref(), deadline);
        crate::buffers::give_back(frame);
        written.map(|()| true).map_err(|e| match e {
            FrameError::Timeout => End::Replace("it stopped reading its requests".into()),
            _ => End::Died,
        })
    }

    /// Writes a whole frame to the worker, under the lock callers write with.
    fn write(
        &mut self,
        frame: &[u8],
        splices: Option<&dyn frame::Splices>,
        deadline: Instant,
    ) -> Result<(), FrameError> {
        let _wire = self.shared.slots[self.index].wire.lock();
        frame::write_request(&mut self.live.requests, frame, splices, Some(deadline))
    }

    /// Writes a tool's result for request `id`, if it still runs.
    fn write_tool_result(&mut self, id: u64, frame: &[u8]) -> Result<(), End> {
        if !self.table.lock().contains_key(&id) {
            return Ok(());
        }
        let deadline = Instant::now() + self.shared.config.health_timeout;
        self.write(frame, None, deadline)
            .map_err(|e| End::Replace(format!("cannot write a tool's result: {e}")))
    }

    /// Tells the worker to cancel request `id`, once, and counts it once, whoever saw first
    /// that it had to go.
    fn cancel_in_worker(&mut self, id: u64, why: Cancel) -> Result<(), End> {
        let mut table = self.table.lock();
        let Some(running) = table.get_mut(&id) else {
            return Ok(()); // answered meanwhile
        };
        if running.cancelled_at.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        running.cancelled_at = Some(now);
        let past_deadline = now >= running.request.deadline;
        let slot = &self.shared.slots[self.index];
        slot.cancels_pending.fetch_add(1, Ordering::AcqRel);
        drop(table);
        let counters = &self.shared.counters;
        let counted = match why {
            Cancel::Deadline => Some(&counters.timed_out),
            Cancel::GaveUp if past_deadline => Some(&counters.timed_out),
            Cancel::CallerGone => Some(&counters.dropped),
            Cancel::GaveUp => None,
        };
        if let Some(counter) = counted {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let config = &self.shared.config;
        let frame = protocol::request(id, CANCEL_COMMAND, b"{}", config.max_frame)
            .map_err(|e| End::Replace(format!("cannot write a cancel: {e}")))?;
        self.write(&frame, None, Instant::now() + config.cancel_grace)
            .map_err(|_| End::Died)
    }
}
