//! The reader thread of a worker serving many requests at once: each frame its Python process
//! writes is a reply (handed to its request's caller), a chunk of a streaming reply, or a tool
//! call; what the slot thread must know comes back as [`News`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::frame::{Body, FrameError, FrameReader};
use crate::multiplex::{News, Table};
use crate::pool::Shared;
use crate::{protocol, tools, worker};

/// The reader thread: hands each reply to its request, until the worker is gone.
pub(crate) fn read_replies(
    shared: Arc<Shared>,
    index: usize,
    mut reader: FrameReader,
    table: Table,
    news: Sender<News>,
) {
    loop {
        let told = match reader.read_frame(None) {
            Ok(body) if tools::is_tool_call(body) => {
                tool_call(&shared, index, &table, body);
                continue;
            }
            Ok(body) if tools::is_chunk(body) => {
                chunk(index, &table, body);
                continue;
            }
            Ok(body) => match protocol::peek_id(body) {
                Some(id) => answer(&shared, index, &table, id, reader.last_frame()),
                None => News::Broken(format!(
                    "invalid reply: no id; reply began with {}",
                    protocol::preview(body)
                )),
            },
            Err(FrameError::Eof) | Err(FrameError::Truncated { .. }) => News::Died,
            Err(FrameError::TooLarge { len, max }) => News::Broken(format!(
                "worker {index} sent a reply of {len} bytes, over the {max}-byte frame cap (max_frame)"
            )),
            Err(FrameError::Timeout) | Err(FrameError::Woken) => continue,
            Err(FrameError::Io(e)) => News::Broken(format!("reading from worker {index} failed: {e}")),
        };
        if matches!(told, News::Quiet) {
            continue;
        }
        let last = matches!(told, News::Died | News::Broken(_));
        if news.send(told).is_err() || last {
            return;
        }
    }
}

/// A running request's tool call, handed to the application; one for a request that is no
/// longer running is dropped.
fn tool_call(shared: &Shared, index: usize, table: &Table, body: &[u8]) {
    let Some(id) = protocol::peek_id(body) else {
        return;
    };
    let table = table.lock();
    if let Some(running) = table.get(&id) {
        crate::serial::tool_call(shared, index, &running.request, body);
    }
}

/// A chunk of a running request's streaming reply, sent to its caller.
fn chunk(index: usize, table: &Table, body: &[u8]) {
    let Some(id) = protocol::peek_id(body) else {
        return;
    };
    if let Some(running) = table.lock().get_mut(&id) {
        let request = &mut running.request;
        let caller = &mut request.caller;
        request
            .ticket
            .while_running(|| caller.chunk(body, id, index));
    }
}

fn answer(shared: &Shared, index: usize, table: &Table, id: u64, body: Body) -> News {
    let slot = &shared.slots[index];
    let (running, left) = {
        let mut table = table.lock();
        (
            crate::multiplex::take_running(&mut table, slot, id),
            table.len(),
        )
    };
    let Some(running) = running else {
        return News::Other(id);
    };
    // Sequentially consistent with the slot thread's mark (see `Serving::room_or_park`).
    slot.in_flight.fetch_sub(1, Ordering::SeqCst);
    let request = running.request;
    // A cancelled request's reply (its result, or the worker's "Cancelled") is dropped.
    if request.ticket.finish() {
        if let Some(why) = worker::hand_over(shared, index, request, body) {
            return News::Broken(why);
        }
    }
    // Queued requests are started from here as soon as there is room. The slot thread needs
    // waking only when it stopped taking requests for want of the room this reply made, or
    // when it waits for its worker to run dry (to stop, or to retire): a wake-up per reply
    // cost more than the reply.
    if !slot.queue.is_empty() {
        crate::direct::refill(shared, index);
    }
    let parked =
        slot.parked_full.load(Ordering::SeqCst) && slot.parked_full.swap(false, Ordering::SeqCst);
    let waits_for_dry = left == 0 && (shared.is_closing() || shared.config.max_requests.is_some());
    if parked || waits_for_dry {
        News::Answered
    } else {
        News::Quiet
    }
}
