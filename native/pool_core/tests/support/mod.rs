//! What the pool's integration tests share: tiny Python workers speaking the protocol, a
//! caller and an event sink that hand everything to the test over channels, and the calls.
// Each test file is a crate of its own and uses only some of these.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use dspex_pool_core::pool::{next_request_id, Event, EventSink, Pool, PoolConfig, Route};
use dspex_pool_core::process::SpawnSpec;
use dspex_pool_core::protocol;
use dspex_pool_core::request::{Caller, Failure, FailureKind, Request, Ticket};

/// What both test workers start with: their id, the protocol fds, and reading whole frames.
macro_rules! worker_prelude {
    () => {
        r#"
import json, os, sys, threading, time
wid = sys.argv[sys.argv.index("--worker-id") + 1]
inp, out = os.fdopen(3, "rb", 0), 4
def read(n):
    b = b""
    while len(b) < n:
        c = inp.read(n - len(b))
        if not c: os._exit(0)
        b += c
    return b
"#
    };
}

/// A tiny worker: enough protocol to test the pool without the real bridge.
pub const WORKER: &str = concat!(
    worker_prelude!(),
    r#"
while True:
    req = json.loads(read(int.from_bytes(read(4), "big")))
    cmd, args = req["command"], req["args"]
    if cmd == "sleep": time.sleep(args["s"])
    if cmd == "crash": os._exit(3)
    if cmd == "garbage":
        os.write(out, b"\x00\x00\x00\x05hello"); continue
    if cmd == "wrong_id": req["id"] += 1
    if cmd == "stream":
        # Chunks until told to stop (if it obeys), then its reply.
        import select
        i = 0
        while True:
            chunk = json.dumps({"id": req["id"], "chunk": i}, separators=(",", ":")).encode()
            os.write(out, len(chunk).to_bytes(4, "big") + chunk)
            i += 1
            time.sleep(0.01)
            if args["obey"] and select.select([inp], [], [], 0)[0]:
                if json.loads(read(int.from_bytes(read(4), "big")))["command"] == "__cancel__":
                    break
        args = {"stopped_after": i}
    res = {"worker_id": wid} if cmd == "ping" else args
    body = json.dumps({"id": req["id"], "success": True, "result": res}).encode()
    os.write(out, len(body).to_bytes(4, "big") + body)
"#
);

#[derive(Debug)]
pub enum Outcome {
    Reply(serde_json::Value),
    Failed(Failure),
}

pub struct TestCaller(pub Sender<Outcome>);

impl Caller for TestCaller {
    fn is_alive(&self) -> bool {
        true
    }
    fn reply(&mut self, body: &[u8], id: u64, _worker: usize) -> Result<bool, Failure> {
        let failure = match protocol::reply_value(body) {
            Ok((got, result)) if got == id => {
                let success = result.is_ok();
                let _ = self.0.send(Outcome::Reply(result.unwrap()));
                return Ok(success);
            }
            Ok((got, _)) => Failure {
                kind: FailureKind::WrongReplyId,
                message: format!("id {got}, expected {id}"),
                worker: None,
            },
            Err(message) => Failure {
                kind: FailureKind::InvalidReply,
                message,
                worker: None,
            },
        };
        self.fail(failure.clone());
        Err(failure)
    }
    fn fail(&mut self, failure: Failure) {
        let _ = self.0.send(Outcome::Failed(failure));
    }
}

/// A caller whose call streams its reply (chunks are dropped, as a caller that gave up would).
pub struct StreamCaller(pub TestCaller);

impl Caller for StreamCaller {
    fn is_alive(&self) -> bool {
        true
    }
    fn reply(&mut self, body: &[u8], id: u64, worker: usize) -> Result<bool, Failure> {
        self.0.reply(body, id, worker)
    }
    fn fail(&mut self, failure: Failure) {
        self.0.fail(failure)
    }
    fn streams(&self) -> bool {
        true
    }
}

pub struct Events(pub Sender<Event>);
impl EventSink for Events {
    fn event(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

pub fn config(size: usize) -> PoolConfig {
    PoolConfig {
        size,
        spawn: SpawnSpec {
            program: "python3".into(),
            args: vec!["-c".into(), WORKER.into()],
            ..Default::default()
        },
        max_frame: 1 << 20,
        max_queue: 100,
        startup_timeout: Duration::from_secs(10),
        health_interval: Duration::from_secs(30),
        health_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(200),
        max_requests: None,
        kill_on_timeout: true,
        pin_cpus: false,
        concurrency: 1,
        cancel_grace: Duration::from_secs(2),
        template: None,
    }
}

pub fn start(config: PoolConfig) -> (Pool, Receiver<Event>) {
    let (tx, rx) = unbounded();
    let size = config.size;
    let pool = Pool::start(config, Arc::new(Events(tx))).unwrap();
    let mut ready = 0;
    while ready < size {
        match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::WorkerReady { .. } => ready += 1,
            Event::WorkerStartFailed { reason, .. } => panic!("start failed: {reason}"),
            _ => {}
        }
    }
    (pool, rx)
}

/// A request whose outcome arrives on the returned receiver.
pub fn request(
    command: &str,
    args: serde_json::Value,
    timeout: Duration,
) -> (Request, Arc<Ticket>, Receiver<Outcome>) {
    let (tx, rx) = unbounded();
    let id = next_request_id();
    let ticket = Ticket::new();
    let request = Request {
        id,
        command: command.into(),
        frame: protocol::request(id, command, args.to_string().as_bytes(), 1 << 20).unwrap(),
        splices: None,
        deadline: Instant::now() + timeout,
        ticket: ticket.clone(),
        caller: Box::new(TestCaller(tx)),
        record: None,
        route_slot: None,
    };
    (request, ticket, rx)
}

pub fn submit(
    pool: &Pool,
    command: &str,
    args: serde_json::Value,
    timeout: Duration,
) -> (Arc<Ticket>, Receiver<Outcome>) {
    let (request, ticket, rx) = request(command, args, timeout);
    pool.submit(request, Route::AnyWorker).unwrap();
    (ticket, rx)
}

pub fn call(pool: &Pool, command: &str, args: serde_json::Value) -> Outcome {
    let (_, rx) = submit(pool, command, args, Duration::from_secs(10));
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}
