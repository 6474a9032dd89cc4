//! NIF entry points for `DSPex.NativePool.Nif`. Each one decodes its arguments (shapes in
//! `terms` and `config`), calls into pool_core (which knows nothing of Erlang), and encodes the
//! answer.

mod atoms;
mod caller;
mod config;
mod events;
mod fast_reply;
mod held_strings;
mod spare_envs;
mod submit;
mod term_from_json;
mod term_json;
mod terms;

use std::sync::Arc;
use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, Monitor, Resource, ResourceArc, Term};

use dspex_pool_core::pool::Pool;
use dspex_pool_core::request::{Cancelled, Ticket};
use dspex_pool_core::{sessions, tools};

use config::ConfigMap;
use events::OwnerEvents;
use submit::INLINE_ENCODE_BUDGET;
use terms::{Routing, SessionMap, StatsMap, ToolOutcome};

/// The pool, owned by the GenServer that started it (and monitored: if it dies, the pool stops).
pub struct PoolResource {
    pool: Arc<Pool>,
}

#[rustler::resource_impl]
impl Resource for PoolResource {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        close_in_background(self.pool.clone(), Duration::ZERO);
    }
}

impl Drop for PoolResource {
    fn drop(&mut self) {
        // Garbage collection runs this on a scheduler: never block here.
        close_in_background(self.pool.clone(), Duration::ZERO);
    }
}

/// Closing sends messages (`send_and_clear`), which the VM only allows from threads of our own.
fn close_in_background(pool: Arc<Pool>, grace: Duration) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dspex-np-close".into())
        .spawn(move || pool.close(grace))
        .ok()
}

/// A request in flight, for cancelling it and for claiming its reply once.
pub struct TicketResource(Arc<Ticket>);

#[rustler::resource_impl]
impl Resource for TicketResource {}

/// Dirty: spawning a thread per worker can take milliseconds, too long for a normal scheduler.
#[rustler::nif(schedule = "DirtyIo")]
fn start_pool(env: Env, config: ConfigMap, owner: LocalPid) -> Term {
    match Pool::start(config.into(), Arc::new(OwnerEvents { owner })) {
        Ok(pool) => {
            let resource = ResourceArc::new(PoolResource {
                pool: Arc::new(pool),
            });
            resource.monitor(Some(env), &owner);
            (atoms::ok(), resource).encode(env)
        }
        Err(e) => (atoms::error(), format!("cannot start pool threads: {e}")).encode(env),
    }
}

/// Encodes and enqueues a request; the reply arrives as `{tag, outcome}`. Returns
/// `{:ok, ticket, placement}` (whether a waiting worker took it, see `submit::submit`), or
/// `:dirty` when the arguments are too large to encode here: call `submit_dirty/5` instead.
#[rustler::nif]
fn submit<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    command: String,
    arguments: Term<'a>,
    routing: Routing,
) -> Term<'a> {
    let budget = Some(INLINE_ENCODE_BUDGET);
    submit::submit(env, &pool.pool, tag, command, arguments, routing, budget)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn submit_dirty<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    command: String,
    arguments: Term<'a>,
    routing: Routing,
) -> Term<'a> {
    submit::submit(env, &pool.pool, tag, command, arguments, routing, None)
}

/// Remembers a pool-wide command (e.g. configuring the LM) to replay on every new worker.
#[rustler::nif]
fn record_global<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    key: String,
    command: String,
    arguments: Term<'a>,
) -> Term<'a> {
    let mut args_json = Vec::new();
    if let Err(e) = term_json::encode(arguments, &mut args_json, None) {
        let reason = (atoms::validation_error(), e.describe("args"));
        return (atoms::error(), reason).encode(env);
    }
    pool.pool.record_global(sessions::Record::Put {
        key,
        replay: sessions::Replay { command, args_json },
    });
    atoms::ok().encode(env)
}

/// Answers tool call `call` of request `id` on worker `slot`: `{:ok, result}` (encoded to
/// JSON here) or `{:error, message}`. Returns `:ok`, or `{:error, {:validation_error, why}}`
/// when the result cannot be encoded (the worker is then told that instead).
#[rustler::nif(schedule = "DirtyCpu")]
fn tool_result<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    slot: usize,
    id: u64,
    call: u64,
    outcome: ToolOutcome<'a>,
) -> Term<'a> {
    let max_frame = pool.pool.config().max_frame;
    let mut json = Vec::new();
    let (frame, answer) = match outcome {
        ToolOutcome::Ok(value) => match term_json::encode(value, &mut json, None) {
            Ok(()) => (
                tools::tool_result_frame(id, call, Ok(&json), max_frame),
                atoms::ok().encode(env),
            ),
            Err(e) => {
                let why = e.describe("the tool's result");
                let frame = tools::tool_result_frame(id, call, Err(&why), max_frame);
                (
                    frame,
                    (atoms::error(), (atoms::validation_error(), why)).encode(env),
                )
            }
        },
        ToolOutcome::Error(message) => (
            tools::tool_result_frame(id, call, Err(&message), max_frame),
            atoms::ok().encode(env),
        ),
    };
    pool.pool.send_to_worker(slot, id, frame);
    answer
}

/// A request id, unique in the VM, for a caller that registers something under it first.
#[rustler::nif]
fn next_request_id() -> u64 {
    dspex_pool_core::pool::next_request_id()
}

/// Lets streaming request `id` on worker `slot` send `n` more chunks.
#[rustler::nif]
fn stream_credit(pool: ResourceArc<PoolResource>, slot: usize, id: u64, n: u64) -> rustler::Atom {
    pool.pool
        .send_to_worker(slot, id, tools::control_frame(id, Some(n)));
    atoms::ok()
}

/// Tells worker `slot` to stop request `id` (a stream its consumer left); the caller has
/// cancelled its ticket already.
#[rustler::nif]
fn stream_cancel(pool: ResourceArc<PoolResource>, slot: usize, id: u64) -> rustler::Atom {
    pool.pool
        .send_to_worker(slot, id, tools::control_frame(id, None));
    atoms::ok()
}

/// A term as JSON text (`{:ok, binary}` or `{:error, why}`), with the pool's own encoder.
#[rustler::nif(schedule = "DirtyCpu")]
fn encode_json<'a>(env: Env<'a>, term: Term<'a>) -> Term<'a> {
    let mut json = Vec::new();
    match term_json::encode(term, &mut json, None) {
        Ok(()) => {
            let mut binary = rustler::OwnedBinary::new(json.len());
            binary.as_mut_slice().copy_from_slice(&json);
            (atoms::ok(), binary.release(env)).encode(env)
        }
        Err(e) => (atoms::error(), e.describe("term")).encode(env),
    }
}

/// Forgets the state, pool-wide and of every session, recorded under keys starting with `prefix`.
/// Dirty, like the other calls that walk every session: a pool may hold 100,000 of them.
#[rustler::nif(schedule = "DirtyCpu")]
fn forget(pool: ResourceArc<PoolResource>, prefix: String) -> rustler::Atom {
    pool.pool.forget(&prefix);
    atoms::ok()
}

/// Forgets a session; returns the worker index that held it, or nil.
#[rustler::nif]
fn end_session(pool: ResourceArc<PoolResource>, session: String) -> Option<usize> {
    pool.pool.end_session(&session)
}

/// Forgets sessions idle for `ttl_ms`; returns `[{session, worker_index}]`.
#[rustler::nif(schedule = "DirtyCpu")]
fn expire_sessions(pool: ResourceArc<PoolResource>, ttl_ms: u64) -> Vec<(String, usize)> {
    pool.pool.expire_sessions(Duration::from_millis(ttl_ms))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn list_sessions(pool: ResourceArc<PoolResource>) -> Vec<SessionMap> {
    pool.pool
        .sessions()
        .into_iter()
        .map(SessionMap::from)
        .collect()
}

/// Gives up on a request. `:queued` or `:running`: no reply will come. `:answered`: the reply
/// is on its way to the caller's mailbox. `:delivered`: it is there, unless already taken.
#[rustler::nif]
fn cancel(ticket: ResourceArc<TicketResource>) -> rustler::Atom {
    match ticket.0.cancel() {
        Cancelled::WhileQueued => atoms::queued(),
        Cancelled::WhileRunning | Cancelled::AlreadyCancelled => atoms::running(),
        Cancelled::AlreadyAnswered => atoms::answered(),
        Cancelled::Delivered => atoms::delivered(),
    }
}

/// Gives up on a request only if it is still waiting for a worker; `true` if it was (it will
/// never run, and no reply will come).
#[rustler::nif]
fn cancel_queued(ticket: ResourceArc<TicketResource>) -> bool {
    ticket.0.cancel_queued()
}

/// `true` the first time a handle's reply is waited for, `false` after.
#[rustler::nif]
fn claim_await(ticket: ResourceArc<TicketResource>) -> bool {
    ticket.0.claim_await()
}

/// Stops the pool and waits until every worker is gone.
#[rustler::nif(schedule = "DirtyIo")]
fn stop_pool(pool: ResourceArc<PoolResource>, grace_ms: u64) -> rustler::Atom {
    if let Some(closer) = close_in_background(pool.pool.clone(), Duration::from_millis(grace_ms)) {
        let _ = closer.join();
    }
    atoms::ok()
}

#[rustler::nif]
fn pool_stats(pool: ResourceArc<PoolResource>) -> StatsMap {
    pool.pool.stats().into()
}

rustler::init!("Elixir.DSPex.NativePool.Nif");
