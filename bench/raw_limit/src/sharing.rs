//! How C client threads share N workers (`--handoff`):
//!
//! * `barging` (default): a client takes an idle worker and does the round trip itself; a
//!   worker given back goes to whichever client asks first, usually the one that gave it back
//!   and is still running, so the hot path needs no thread wake-up. The highest throughput, at
//!   the price of starved clients, which makes p99 meaningless when clients outnumber workers.
//! * `fifo`: the same, but waiting clients are served in arrival order, as the BEAM pools
//!   serve callers; every hand-off wakes a sleeping thread.
//! * `dispatch`: one thread per worker serves a shared request queue (the pool's own design,
//!   without the BEAM).

use std::cell::Cell;
use std::io;
use std::time::Instant;

use dspex_pool_core::affinity;

use crate::checkout::{Checkout, Discipline};
use crate::dispatch::Dispatch;
use crate::workers::{Worker, REQUEST_TIMEOUT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    Barging,
    Fifo,
    Dispatch,
}

impl Handoff {
    pub fn parse(text: &str) -> Option<Handoff> {
        match text {
            "barging" => Some(Handoff::Barging),
            "fifo" => Some(Handoff::Fifo),
            "dispatch" => Some(Handoff::Dispatch),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Handoff::Barging => "barging",
            Handoff::Fifo => "fifo",
            Handoff::Dispatch => "dispatch",
        }
    }
}

pub enum Sharing {
    /// `follow`: clients move to the CPU of the worker they take (see [`follow`]).
    Checkout {
        idle: Checkout<Worker>,
        follow: bool,
    },
    Dispatch(Dispatch),
}

impl Sharing {
    pub fn new(workers: Vec<Worker>, handoff: Handoff, clients: usize) -> Sharing {
        let follow = clients <= workers.len();
        match handoff {
            Handoff::Barging => Sharing::Checkout {
                idle: Checkout::new(workers, Discipline::Barging),
                follow,
            },
            Handoff::Fifo => Sharing::Checkout {
                idle: Checkout::new(workers, Discipline::Fifo),
                follow,
            },
            Handoff::Dispatch => Sharing::Dispatch(Dispatch::new(workers, clients)),
        }
    }

    /// One round trip: `request` is a whole frame; `check` sees the reply's body where it was
    /// read, when the hand-off allows it.
    pub fn call(
        &self,
        request: Vec<u8>,
        check: impl FnOnce(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match self {
            Sharing::Checkout { idle, follow: f } => {
                let mut worker = idle.take();
                if *f {
                    follow(worker.cpu);
                }
                let result = worker
                    .round_trip(&request, Instant::now() + REQUEST_TIMEOUT)
                    .and_then(check);
                idle.give(worker);
                result
            }
            Sharing::Dispatch(dispatch) => check(&dispatch.call(request)?),
        }
    }

    /// Drops every pipe, so the bridges see EOF and exit.
    pub fn close(self) {
        match self {
            Sharing::Checkout { idle, .. } => drop(idle.drain()),
            Sharing::Dispatch(dispatch) => dispatch.close(),
        }
    }
}

thread_local! {
    static PINNED_TO: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A client that does its round trips itself sits on its worker's CPU, as the pool's slot
/// thread does. Only while there are no more clients than workers, so each can keep one to
/// itself; otherwise clients would chase CPUs at every hand-off.
fn follow(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    PINNED_TO.with(|pinned| {
        if pinned.get() != Some(cpu) && affinity::pin_current_thread(cpu).is_ok() {
            pinned.set(Some(cpu));
        }
    });
}
