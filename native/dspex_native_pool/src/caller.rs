//! The process waiting for a request: how its reply or failure reaches its mailbox as
//! `{tag, outcome}`.

use rustler::env::SavedTerm;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};

use dspex_pool_core::frame::LargeFrame;
use dspex_pool_core::protocol;
use dspex_pool_core::request::{Caller, Failure, FailureKind};

use crate::atoms;
use crate::fast_reply::SharedFrame;
use crate::spare_envs::SpareEnv;
use crate::term_from_json;

pub struct ProcessCaller {
    pub pid: LocalPid,
    pub env: SpareEnv,
    pub tag: SavedTerm,
    /// The tag, when it is an integer (a streaming call's): chunks are sent with it from an
    /// environment of their own, never touching the one that holds the reply's tag.
    pub stream_tag: Option<i64>,
}

impl Caller for ProcessCaller {
    fn is_alive(&self) -> bool {
        self.env.run(|env| env.is_process_alive(self.pid))
    }

    fn reply(&mut self, body: &[u8], id: u64, worker: usize) -> Result<bool, Failure> {
        self.send_reply(body, None, id, worker)
    }

    fn reply_large(&mut self, body: LargeFrame, id: u64, worker: usize) -> Result<bool, Failure> {
        match SharedFrame::new(body) {
            Ok(frame) => self.send_reply(frame.bytes(), Some(&frame), id, worker),
            Err(body) => self.send_reply(body.bytes(), None, id, worker),
        }
    }

    fn streams(&self) -> bool {
        self.stream_tag.is_some()
    }

    /// `{tag, {:chunk, value, worker, id}}`, for a streaming call (integer tag); others drop
    /// it.
    fn chunk(&mut self, body: &[u8], id: u64, worker: usize) {
        let Some(tag) = self.stream_tag else { return };
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&self.pid, |env| {
            let value = term_from_json::decode_value(env, body)
                .ok()
                .and_then(|frame| frame.map_get(atoms::chunk_key(env)).ok())
                .unwrap_or_else(|| atoms::nil().encode(env));
            (tag, (atoms::chunk(), value, worker, id)).encode(env)
        });
    }

    fn fail(&mut self, failure: Failure) {
        let tag = &self.tag;
        let _ = self
            .env
            .send_and_clear(&self.pid, |env| failure_message(env, tag, &failure));
    }
}

impl ProcessCaller {
    /// Decodes `body` straight into the message's environment (nothing is copied before it is
    /// sent, nor, out of a `shared` frame, its large string) and sends it.
    fn send_reply(
        &mut self,
        body: &[u8],
        shared: Option<&ResourceArc<SharedFrame>>,
        id: u64,
        worker: usize,
    ) -> Result<bool, Failure> {
        let tag = &self.tag;
        let mut answer = Ok(false);
        let _ = self.env.send_and_clear(&self.pid, |env| {
            match outcome(env, body, shared, id, worker) {
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
}

/// A reply as the caller receives it (`{:ok, result}` or `{:python_error, error, worker}`), and
/// whether the command succeeded. What a bad reply means is pool_core's to judge.
fn outcome<'a>(
    env: Env<'a>,
    body: &[u8],
    shared: Option<&ResourceArc<SharedFrame>>,
    id: u64,
    worker: usize,
) -> Result<(Term<'a>, bool), Failure> {
    let reply = term_from_json::decode_reply(env, body, shared).map_err(|e| {
        protocol::undecodable_reply(body, id, worker, &e, term_from_json::is_too_deep(&e))
    })?;
    protocol::check_reply_id(reply.id, id, worker)?;
    let outcome = if reply.success {
        (atoms::ok(), reply.payload).encode(env)
    } else {
        (atoms::python_error(), reply.payload, worker).encode(env)
    };
    Ok((outcome, reply.success))
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
    (
        tag.load(env),
        (
            atoms::pool_error(),
            kind,
            failure.message.as_str(),
            failure.worker,
        ),
    )
        .encode(env)
}
