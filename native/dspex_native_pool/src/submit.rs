//! A request from a calling process: its arguments encoded to JSON in the caller's NIF call,
//! its frame built, and the request handed to the pool.

use std::time::{Duration, Instant};

use rustler::{Encoder, Env, ResourceArc, Term};

use dspex_pool_core::frame::{self, Splices};
use dspex_pool_core::pool::{self, Placement, Pool, Route, SubmitError};
use dspex_pool_core::request::{Request, Ticket};
use dspex_pool_core::{protocol, sessions};

use crate::atoms;
use crate::caller::ProcessCaller;
use crate::held_strings::HeldStrings;
use crate::spare_envs::SpareEnv;
use crate::term_json::{self, EncodeError};
use crate::terms::{Record, Routing, Target};
use crate::TicketResource;

/// Encodes in place on a normal scheduler up to this many bytes; larger arguments are encoded
/// on a dirty scheduler so that no call holds a normal scheduler for long.
pub const INLINE_ENCODE_BUDGET: usize = 64 * 1024;
/// What a frame encoded on a dirty scheduler starts with: over the inline budget, so large.
const DIRTY_FRAME_CAPACITY: usize = 2 * INLINE_ENCODE_BUDGET;

/// `{:ok, ticket, placement}` (`:waiting_worker`, `:waiting_worker_here` when that worker is
/// pinned to this thread's CPU, or `:queued`), `:dirty` (over `budget`: encode on a dirty
/// scheduler), or `{:error, reason}`.
pub fn submit<'a>(
    env: Env<'a>,
    pool: &Pool,
    tag: Term<'a>,
    command: String,
    args: Term<'a>,
    routing: Routing,
    budget: Option<usize>,
) -> Term<'a> {
    let deadline = Instant::now() + Duration::from_millis(routing.timeout_ms);
    // A caller that registered per-call state under the id (its own tools) chose it already.
    let id = if routing.id > 0 {
        routing.id
    } else {
        pool::next_request_id()
    };
    // Inline, most arguments are small; on the dirty path they are known to be large, so the
    // frame starts in a spare large buffer rather than growing into freshly mapped memory.
    let capacity = if budget.is_some() {
        256
    } else {
        DIRTY_FRAME_CAPACITY
    };
    let mut buf = protocol::begin_request(id, &command, capacity);
    let args_start = buf.len();
    // On the dirty path large strings stay where they are, unless the session must remember
    // the arguments as they were sent (to replay them), which needs them in one piece.
    let mut held =
        (budget.is_none() && matches!(routing.record, Record::None)).then(HeldStrings::new);
    let encoded = match held.as_mut() {
        Some(held) => term_json::encode_holding(args, &mut buf, held),
        None => term_json::encode(args, &mut buf, budget),
    };
    match encoded {
        Ok(()) => {}
        Err(EncodeError::OverBudget) => return atoms::dirty().encode(env),
        Err(e) => {
            let reason = (atoms::validation_error(), e.describe("args"));
            return (atoms::error(), reason).encode(env);
        }
    }
    let record = remembered(routing.record, &command, &buf[args_start..]);
    let max_frame = pool.config().max_frame;
    let splices = held
        .filter(|held| !held.is_empty())
        .map(|held| Box::new(held) as Box<dyn Splices>);
    let spliced = splices.as_ref().map_or(0, |s| s.len());
    let window = routing.stream_window;
    let frame = match protocol::finish_spliced_request(buf, spliced, max_frame, window) {
        Ok(frame) => frame,
        Err(frame::FrameError::TooLarge { len, max }) => {
            return (atoms::error(), (atoms::frame_too_large(), len, max)).encode(env)
        }
        Err(e) => return (atoms::error(), (atoms::validation_error(), e.to_string())).encode(env),
    };
    let owned = SpareEnv::take();
    let saved_tag = owned.save(tag);
    let ticket = Ticket::new();
    let request = Request {
        id,
        command,
        frame,
        splices,
        deadline,
        ticket: ticket.clone(),
        caller: Box::new(ProcessCaller {
            pid: env.pid(),
            env: owned,
            tag: saved_tag,
            stream_tag: (routing.stream_window > 0)
                .then(|| tag.decode::<i64>().ok())
                .flatten(),
        }),
        record,
        route_slot: None,
    };
    let route = match &routing.target {
        Target::Any => Route::AnyWorker,
        Target::Worker(i) => Route::Worker(*i),
        Target::Session(s) => Route::Session(s),
    };
    match pool.submit(request, route) {
        Ok(placement) => {
            let ticket = ResourceArc::new(TicketResource(ticket));
            let placement = match placement {
                Placement::IdleWorker => atoms::waiting_worker(),
                Placement::IdleWorkerOnThisCpu => atoms::waiting_worker_here(),
                Placement::Queued => atoms::queued(),
            };
            (atoms::ok(), ticket, placement).encode(env)
        }
        Err(e) => {
            let reason = match e {
                SubmitError::Saturated => atoms::saturated(),
                SubmitError::Closed => atoms::closed(),
                SubmitError::Unavailable => atoms::unavailable(),
                SubmitError::NoSuchWorker => atoms::no_such_worker(),
            };
            (atoms::error(), reason).encode(env)
        }
    }
}

/// What the session remembers if the command succeeds: the command with its encoded arguments,
/// to replay on a replacement worker, or that a key is deleted.
fn remembered(
    record: Record,
    command: &str,
    args_json: &[u8],
) -> Option<(String, sessions::Record)> {
    match record {
        Record::None => None,
        Record::Put(session, key) => Some((
            session,
            sessions::Record::Put {
                key,
                replay: sessions::Replay {
                    command: command.to_string(),
                    args_json: args_json.to_vec(),
                },
            },
        )),
        Record::Delete(session, key) => Some((session, sessions::Record::Delete { key })),
    }
}
