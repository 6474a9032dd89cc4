//! NIF entry points for `DSPex.NativePool.Nif`. Each one decodes its arguments, calls into the
//! plain Rust modules below (which know nothing of Erlang), and encodes the answer.

mod spare_envs;
mod term_json;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustler::env::SavedTerm;
use rustler::{Encoder, Env, LocalPid, Monitor, NifResult, OwnedEnv, Resource, ResourceArc, Term};

use dspex_pool_core::process::SpawnSpec;
use dspex_pool_core::request::{Caller, Cancelled, Failure, FailureKind, Request, Ticket};
use dspex_pool_core::{frame, pool, protocol, sessions};
use pool::{
    Event, EventSink, Placement, Pool, PoolConfig, PoolStats, Route, SlotState, SubmitError,
};
use spare_envs::SpareEnv;
use term_json::EncodeError;

mod atoms {
    rustler::atoms! {
        ok, error, dirty, nil,
        queued, running, answered, delivered,
        python_error, pool_error, validation_error, frame_too_large,
        saturated, closed, unavailable, no_such_worker,
        worker_exited, invalid_reply, reply_too_large, wrong_reply_id, result_too_deep,
        pool_closed, pool_unavailable,
        starting, idle, busy, restarting, stopped, draining,
        stdout, stderr,
        dspex_native_pool, worker_ready, worker_start_failed, log, warning,
        worker, session, put, delete, slot, idle_ms, age_ms, definitions,
        pool_size, queue_length, available, closing, workers, counters,
        id, os_pid, state, requests, restarts, last_exit, cpu, backoff_ms, in_flight,
        completed, timed_out, rejected, dropped,
    }
}

/// Encodes in place on a normal scheduler up to this many bytes; larger arguments are encoded
/// on a dirty scheduler so that no call holds a normal scheduler for long.
const INLINE_ENCODE_BUDGET: usize = 64 * 1024;
/// What a frame encoded on a dirty scheduler starts with: over the inline budget, so large.
const DIRTY_FRAME_CAPACITY: usize = 2 * INLINE_ENCODE_BUDGET;

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
fn close_in_background(pool: Arc<Pool>, grace: Duration) {
    let _ = std::thread::Builder::new()
        .name("dspex-np-close".into())
        .spawn(move || pool.close(grace));
}

pub struct TicketResource(Arc<Ticket>);

#[rustler::resource_impl]
impl Resource for TicketResource {}

/// The process waiting for a request, and the tag it waits on.
struct ProcessCaller {
    pid: LocalPid,
    env: SpareEnv,
    tag: SavedTerm,
}

impl Caller for ProcessCaller {
    fn is_alive(&self) -> bool {
        self.env.run(|env| env.is_process_alive(self.pid))
    }

    fn reply(&mut self, body: &[u8], id: u64, worker: usize) -> Result<bool, Failure> {
        let tag = &self.tag;
        let mut answer = Ok(false);
        // Decoded straight into the message's environment: nothing is copied before it is sent.
        let _ = self.env.send_and_clear(&self.pid, |env| {
            match decode_outcome(env, body, id, worker) {
                Ok((outcome, success)) => {
                    answer = Ok(success);
                    (tag.load(env), outcome).encode(env)
                }
                Err(failure) => {
                    let message = failure_message(env, tag, &failure);
                    answer = Err(failure);
                    message
                }
            }
        });
        answer
    }

    fn fail(&mut self, failure: Failure) {
        let tag = &self.tag;
        let _ = self
            .env
            .send_and_clear(&self.pid, |env| failure_message(env, tag, &failure));
    }
}

/// A reply as the caller receives it (`{:ok, result}` or `{:python_error, error, worker}`), and
/// whether the command succeeded.
fn decode_outcome<'a>(
    env: Env<'a>,
    body: &[u8],
    id: u64,
    worker: usize,
) -> Result<(Term<'a>, bool), Failure> {
    let reply = term_json::decode_reply(env, body).map_err(|e| {
        // The id first: a frame that is not this request's reply means the stream is out of
        // step, whatever else is wrong with it, and the worker must be replaced.
        match protocol::peek_id(body) {
            Some(got) if got != id => wrong_reply_id(worker, got, id),
            Some(_) if term_json::is_too_deep(&e) => Failure {
                kind: FailureKind::ResultTooDeep,
                message: format!(
                    "the result is nested deeper than {} levels",
                    term_json::MAX_DECODE_DEPTH
                ),
                worker: Some(worker),
            },
            _ => Failure {
                kind: FailureKind::InvalidReply,
                message: format!(
                    "worker {worker} sent an invalid reply: {}",
                    protocol::describe_json_error(&e, body)
                ),
                worker: Some(worker),
            },
        }
    })?;
    if reply.id != id {
        return Err(wrong_reply_id(worker, reply.id, id));
    }
    let outcome = if reply.success {
        (atoms::ok(), reply.payload).encode(env)
    } else {
        (atoms::python_error(), reply.payload, worker).encode(env)
    };
    Ok((outcome, reply.success))
}

fn wrong_reply_id(worker: usize, got: u64, expected: u64) -> Failure {
    Failure {
        kind: FailureKind::WrongReplyId,
        message: format!("worker {worker} answered request {got} while running request {expected}"),
        worker: Some(worker),
    }
}

/// `{tag, {:pool_error, kind, message, worker}}`.
fn failure_message<'a>(env: Env<'a>, tag: &SavedTerm, failure: &Failure) -> Term<'a> {
    let kind = match failure.kind {
        FailureKind::WorkerExited => atoms::worker_exited(),
        FailureKind::InvalidReply => atoms::invalid_reply(),
        FailureKind::ReplyTooLarge => atoms::reply_too_large(),
        FailureKind::ResultTooDeep => atoms::result_too_deep(),
        FailureKind::WrongReplyId => atoms::wrong_reply_id(),
        FailureKind::PoolClosed => atoms::pool_closed(),
        FailureKind::PoolUnavailable => atoms::pool_unavailable(),
    };
    let worker = match failure.worker {
        Some(w) => w.encode(env),
        None => atoms::nil().encode(env),
    };
    (
        tag.load(env),
        (atoms::pool_error(), kind, failure.message.as_str(), worker),
    )
        .encode(env)
}

/// Sends worker lifecycle and output to the owning GenServer.
struct OwnerEvents {
    owner: LocalPid,
}

impl EventSink for OwnerEvents {
    fn event(&self, event: Event) {
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&self.owner, |env| {
            let tag = atoms::dspex_native_pool();
            match &event {
                Event::WorkerReady {
                    slot,
                    os_pid,
                    restart,
                } => (tag, atoms::worker_ready(), *slot, *os_pid, *restart).encode(env),
                Event::WorkerStartFailed {
                    slot,
                    reason,
                    failures,
                } => (
                    tag,
                    atoms::worker_start_failed(),
                    *slot,
                    reason.as_str(),
                    *failures,
                )
                    .encode(env),
                Event::WorkerExited {
                    slot,
                    os_pid,
                    reason,
                } => (tag, atoms::worker_exited(), *slot, *os_pid, reason.as_str()).encode(env),
                Event::Warning { slot, message } => {
                    (tag, atoms::warning(), *slot, message.as_str()).encode(env)
                }
                Event::Log { slot, stream, line } => {
                    let stream = match stream {
                        pool::Stream::Stdout => atoms::stdout(),
                        pool::Stream::Stderr => atoms::stderr(),
                    };
                    (tag, atoms::log(), *slot, stream, line.as_str()).encode(env)
                }
            }
        });
    }
}

fn get<'a, T: rustler::Decoder<'a>>(map: Term<'a>, key: &str) -> NifResult<T> {
    let env = map.get_env();
    let key = rustler::Atom::from_str(env, key)?;
    map.map_get(key)?.decode()
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn decode_config(config: Term) -> NifResult<PoolConfig> {
    let env_pairs: Vec<(String, String)> = get(config, "env")?;
    let cwd: Option<String> = get(config, "cwd")?;
    let args: Vec<String> = get(config, "args")?;
    let max_requests: Option<u64> = get(config, "max_requests")?;
    Ok(PoolConfig {
        size: get(config, "size")?,
        spawn: SpawnSpec {
            program: OsString::from(get::<String>(config, "python")?),
            args: args.into_iter().map(OsString::from).collect(),
            env: env_pairs
                .into_iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            // The Elixir side sends the whole environment (see `Options.worker_env`).
            clear_env: true,
            cwd: cwd.map(OsString::from),
        },
        max_frame: get(config, "max_frame")?,
        max_queue: get(config, "max_queue")?,
        startup_timeout: millis(get(config, "startup_timeout")?),
        health_interval: millis(get(config, "health_interval")?),
        health_timeout: millis(get(config, "health_timeout")?),
        max_backoff: millis(get(config, "max_backoff")?),
        max_requests,
        kill_on_timeout: get(config, "kill_on_timeout")?,
        pin_cpus: get(config, "pin_cpus")?,
        concurrency: get(config, "concurrency")?,
        cancel_grace: millis(get(config, "cancel_grace")?),
    })
}

/// Dirty: spawning a thread per worker can take milliseconds, too long for a normal scheduler.
#[rustler::nif(schedule = "DirtyIo")]
fn start_pool<'a>(env: Env<'a>, config: Term<'a>, owner: LocalPid) -> NifResult<Term<'a>> {
    let config = decode_config(config)?;
    let events = Arc::new(OwnerEvents { owner });
    match Pool::start(config, events) {
        Ok(pool) => {
            let resource = ResourceArc::new(PoolResource {
                pool: Arc::new(pool),
            });
            resource.monitor(Some(env), &owner);
            Ok((atoms::ok(), resource).encode(env))
        }
        Err(e) => Ok((atoms::error(), format!("cannot start pool threads: {e}")).encode(env)),
    }
}

/// Where a request goes: `nil` (any worker), `{:worker, index}` or `{:session, id}`.
enum Target {
    Any,
    Worker(usize),
    Session(String),
}

fn decode_target(term: Term) -> NifResult<Target> {
    if term.is_atom() {
        return Ok(Target::Any);
    }
    let (kind, value): (rustler::Atom, Term) = term.decode()?;
    if kind == atoms::worker() {
        Ok(Target::Worker(value.decode()?))
    } else if kind == atoms::session() {
        Ok(Target::Session(value.decode()?))
    } else {
        Err(rustler::Error::BadArg)
    }
}

/// What to remember on success: `nil`, `{:put, session, key}` or `{:delete, session, key}`.
fn decode_record(term: Term) -> NifResult<Option<(String, String, bool)>> {
    if term.is_atom() {
        return Ok(None);
    }
    let (kind, session, key): (rustler::Atom, String, String) = term.decode()?;
    Ok(Some((session, key, kind == atoms::put())))
}

#[allow(clippy::too_many_arguments)]
fn submit_with<'a>(
    env: Env<'a>,
    pool: &PoolResource,
    tag: Term<'a>,
    command: String,
    args: Term<'a>,
    timeout_ms: u64,
    target: Term<'a>,
    record: Term<'a>,
    budget: Option<usize>,
) -> NifResult<Term<'a>> {
    let target = decode_target(target)?;
    let record = decode_record(record)?;
    let deadline = Instant::now() + millis(timeout_ms);
    let id = pool::next_request_id();
    // Inline, most arguments are small; on the dirty path they are known to be large, so the
    // frame starts in a spare large buffer rather than growing into freshly mapped memory.
    let capacity = if budget.is_some() {
        256
    } else {
        DIRTY_FRAME_CAPACITY
    };
    let mut buf = protocol::begin_request(id, &command, capacity);
    let args_start = buf.len();
    match term_json::encode(args, &mut buf, budget) {
        Ok(()) => {}
        Err(EncodeError::OverBudget) => return Ok(atoms::dirty().encode(env)),
        Err(e) => {
            return Ok((
                atoms::error(),
                (atoms::validation_error(), e.describe("args")),
            )
                .encode(env))
        }
    }
    let record = record.map(|(session, key, put)| {
        let record = if put {
            sessions::Record::Put {
                key,
                replay: sessions::Replay {
                    command: command.clone(),
                    args_json: buf[args_start..].to_vec(),
                },
            }
        } else {
            sessions::Record::Delete { key }
        };
        (session, record)
    });
    let max_frame = pool.pool.config().max_frame;
    let frame = match protocol::finish_request(buf, max_frame) {
        Ok(frame) => frame,
        Err(frame::FrameError::TooLarge { len, max }) => {
            return Ok((atoms::error(), (atoms::frame_too_large(), len, max)).encode(env))
        }
        Err(e) => {
            return Ok((atoms::error(), (atoms::validation_error(), e.to_string())).encode(env))
        }
    };
    let owned = SpareEnv::take();
    let saved_tag = owned.save(tag);
    let ticket = Ticket::new();
    let request = Request {
        id,
        command,
        frame,
        deadline,
        ticket: ticket.clone(),
        caller: Box::new(ProcessCaller {
            pid: env.pid(),
            env: owned,
            tag: saved_tag,
        }),
        record,
        route_slot: None,
    };
    let route = match &target {
        Target::Any => Route::AnyWorker,
        Target::Worker(i) => Route::Worker(*i),
        Target::Session(s) => Route::Session(s),
    };
    Ok(match pool.pool.submit(request, route) {
        Ok(placement) => (
            atoms::ok(),
            ResourceArc::new(TicketResource(ticket)),
            placement == Placement::IdleWorker,
        )
            .encode(env),
        Err(e) => {
            let reason = match e {
                SubmitError::Saturated => atoms::saturated(),
                SubmitError::Closed => atoms::closed(),
                SubmitError::Unavailable => atoms::unavailable(),
                SubmitError::NoSuchWorker => atoms::no_such_worker(),
            };
            (atoms::error(), reason).encode(env)
        }
    })
}

/// Encodes and enqueues a request; the reply arrives as `{tag, outcome}`. Returns
/// `{:ok, ticket, idle_worker?}` (whether a waiting worker took it), or `:dirty` when the
/// arguments are too large to encode here: call `submit_dirty/7` instead.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn submit<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    command: String,
    arguments: Term<'a>,
    timeout_ms: u64,
    target: Term<'a>,
    record: Term<'a>,
) -> NifResult<Term<'a>> {
    submit_with(
        env,
        &pool,
        tag,
        command,
        arguments,
        timeout_ms,
        target,
        record,
        Some(INLINE_ENCODE_BUDGET),
    )
}

#[rustler::nif(schedule = "DirtyCpu")]
#[allow(clippy::too_many_arguments)]
fn submit_dirty<'a>(
    env: Env<'a>,
    pool: ResourceArc<PoolResource>,
    tag: Term<'a>,
    command: String,
    arguments: Term<'a>,
    timeout_ms: u64,
    target: Term<'a>,
    record: Term<'a>,
) -> NifResult<Term<'a>> {
    submit_with(
        env, &pool, tag, command, arguments, timeout_ms, target, record, None,
    )
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
        return (
            atoms::error(),
            (atoms::validation_error(), e.describe("args")),
        )
            .encode(env);
    }
    pool.pool.record_global(sessions::Record::Put {
        key,
        replay: sessions::Replay { command, args_json },
    });
    atoms::ok().encode(env)
}

/// Forgets the state, pool-wide and of every session, recorded under keys starting with `prefix`.
#[rustler::nif]
fn forget(pool: ResourceArc<PoolResource>, prefix: String) -> rustler::Atom {
    pool.pool.forget(&prefix);
    atoms::ok()
}

/// Forgets a session; returns the worker index that held it, or nil.
#[rustler::nif]
fn end_session(env: Env, pool: ResourceArc<PoolResource>, session: String) -> Term {
    match pool.pool.end_session(&session) {
        Some(slot) => slot.encode(env),
        None => atoms::nil().encode(env),
    }
}

/// Forgets sessions idle for `ttl_ms`; returns `[{session, worker_index}]`.
#[rustler::nif]
fn expire_sessions(pool: ResourceArc<PoolResource>, ttl_ms: u64) -> Vec<(String, usize)> {
    pool.pool.expire_sessions(millis(ttl_ms))
}

#[rustler::nif]
fn list_sessions(env: Env, pool: ResourceArc<PoolResource>) -> NifResult<Term> {
    let sessions = pool
        .pool
        .sessions()
        .into_iter()
        .map(|s| {
            map_of(
                env,
                vec![
                    (atoms::id(), s.id.encode(env)),
                    (atoms::worker(), s.slot.encode(env)),
                    (atoms::age_ms(), (s.age.as_millis() as u64).encode(env)),
                    (atoms::idle_ms(), (s.idle.as_millis() as u64).encode(env)),
                    (atoms::requests(), s.requests.encode(env)),
                    (atoms::definitions(), s.definitions.encode(env)),
                ],
            )
        })
        .collect::<NifResult<Vec<Term>>>()?;
    Ok(sessions.encode(env))
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
    let pool = pool.pool.clone();
    let closer = std::thread::Builder::new()
        .name("dspex-np-close".into())
        .spawn(move || pool.close(millis(grace_ms)));
    if let Ok(closer) = closer {
        let _ = closer.join();
    }
    atoms::ok()
}

#[rustler::nif]
fn pool_stats(env: Env, pool: ResourceArc<PoolResource>) -> NifResult<Term> {
    encode_stats(env, &pool.pool.stats())
}

fn map_of<'a>(env: Env<'a>, pairs: Vec<(rustler::Atom, Term<'a>)>) -> NifResult<Term<'a>> {
    let (keys, values): (Vec<Term>, Vec<Term>) =
        pairs.into_iter().map(|(k, v)| (k.encode(env), v)).unzip();
    Term::map_from_term_arrays(env, &keys, &values)
}

fn encode_stats<'a>(env: Env<'a>, s: &PoolStats) -> NifResult<Term<'a>> {
    let workers = s
        .workers
        .iter()
        .map(|w| {
            let state = match w.state {
                SlotState::Starting => atoms::starting(),
                SlotState::Idle => atoms::idle(),
                SlotState::Busy => atoms::busy(),
                SlotState::Restarting => atoms::restarting(),
                SlotState::Stopped => atoms::stopped(),
                SlotState::Draining => atoms::draining(),
            };
            let os_pid = if w.os_pid > 0 {
                w.os_pid.encode(env)
            } else {
                atoms::nil().encode(env)
            };
            map_of(
                env,
                vec![
                    (atoms::id(), w.id.encode(env)),
                    (atoms::os_pid(), os_pid),
                    (atoms::state(), state.encode(env)),
                    (atoms::requests(), w.requests.encode(env)),
                    (atoms::restarts(), w.restarts.encode(env)),
                    (atoms::last_exit(), w.last_exit.as_deref().encode(env)),
                    (atoms::queue_length(), w.queue_length.encode(env)),
                    (atoms::cpu(), w.cpu.encode(env)),
                    (atoms::backoff_ms(), w.backoff_ms.encode(env)),
                    (atoms::in_flight(), w.in_flight.encode(env)),
                ],
            )
        })
        .collect::<NifResult<Vec<Term>>>()?;
    let counters = map_of(
        env,
        vec![
            (atoms::completed(), s.completed.encode(env)),
            (atoms::timed_out(), s.timed_out.encode(env)),
            (atoms::rejected(), s.rejected.encode(env)),
            (atoms::dropped(), s.dropped.encode(env)),
            (atoms::worker_exited(), s.worker_exited.encode(env)),
            (atoms::invalid_reply(), s.invalid_reply.encode(env)),
            (atoms::pool_closed(), s.pool_closed.encode(env)),
            (atoms::pool_unavailable(), s.pool_unavailable.encode(env)),
        ],
    )?;
    map_of(
        env,
        vec![
            (atoms::pool_size(), s.size.encode(env)),
            (atoms::queue_length(), s.queue_length.encode(env)),
            (atoms::available(), s.available.encode(env)),
            (atoms::closing(), s.closing.encode(env)),
            (atoms::in_flight(), s.in_flight.encode(env)),
            (atoms::counters(), counters),
            (atoms::workers(), workers.encode(env)),
        ],
    )
}

rustler::init!("Elixir.DSPex.NativePool.Nif");
