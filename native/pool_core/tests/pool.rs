//! The pool against real Python processes speaking the protocol, without the VM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use dspex_pool_core::pool::{
    next_request_id, Event, EventSink, Placement, Pool, PoolConfig, Route, SlotState, SubmitError,
};
use dspex_pool_core::process::SpawnSpec;
use dspex_pool_core::protocol;
use dspex_pool_core::request::{Caller, Cancelled, Failure, FailureKind, Request, Ticket};
use serde_json::json;

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
const WORKER: &str = concat!(
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
    res = {"worker_id": wid} if cmd == "ping" else args
    body = json.dumps({"id": req["id"], "success": True, "result": res}).encode()
    os.write(out, len(body).to_bytes(4, "big") + body)
"#
);

#[derive(Debug)]
enum Outcome {
    Reply(serde_json::Value),
    Failed(Failure),
}

struct TestCaller(Sender<Outcome>);

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

struct Events(Sender<Event>);
impl EventSink for Events {
    fn event(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

fn config(size: usize) -> PoolConfig {
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

fn start(config: PoolConfig) -> (Pool, Receiver<Event>) {
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
fn request(
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
        deadline: Instant::now() + timeout,
        ticket: ticket.clone(),
        caller: Box::new(TestCaller(tx)),
        record: None,
        route_slot: None,
    };
    (request, ticket, rx)
}

fn submit(
    pool: &Pool,
    command: &str,
    args: serde_json::Value,
    timeout: Duration,
) -> (Arc<Ticket>, Receiver<Outcome>) {
    let (request, ticket, rx) = request(command, args, timeout);
    pool.submit(request, Route::AnyWorker).unwrap();
    (ticket, rx)
}

fn call(pool: &Pool, command: &str, args: serde_json::Value) -> Outcome {
    let (_, rx) = submit(pool, command, args, Duration::from_secs(10));
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

#[test]
fn echo_round_trip_and_stats() {
    let (pool, _events) = start(config(2));
    for i in 0..50 {
        match call(&pool, "echo", serde_json::json!({"i": i})) {
            Outcome::Reply(v) => assert_eq!(v["i"], i),
            other => panic!("{other:?}"),
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.completed, 50);
    assert_eq!(stats.workers.iter().map(|w| w.requests).sum::<u64>(), 50);
    // A slot is marked idle just after it hands over its reply: the caller can look first.
    let started = Instant::now();
    while !pool
        .stats()
        .workers
        .iter()
        .all(|w| w.os_pid > 0 && w.state == SlotState::Idle)
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never all idle");
        std::thread::yield_now();
    }
    pool.close(Duration::from_secs(1));
    assert!(pool
        .stats()
        .workers
        .iter()
        .all(|w| w.state == SlotState::Stopped));
}

#[test]
fn submit_says_whether_a_waiting_worker_took_the_request() {
    let (pool, _events) = start(config(1));
    // A worker is listed idle before its reply is sent, so after a call it is waiting.
    assert!(matches!(call(&pool, "echo", json!({})), Outcome::Reply(_)));
    let wait = Duration::from_secs(10);
    let (slow, _, slow_rx) = request("sleep", json!({"s": 0.2}), wait);
    assert_eq!(
        pool.submit(slow, Route::AnyWorker),
        Ok(Placement::IdleWorker)
    );
    let (behind, _, behind_rx) = request("echo", json!({}), wait);
    assert_eq!(pool.submit(behind, Route::AnyWorker), Ok(Placement::Queued));
    let (also_behind, _, also_rx) = request("echo", json!({}), wait);
    assert_eq!(
        pool.submit(also_behind, Route::Worker(0)),
        Ok(Placement::Queued)
    );
    for rx in [slow_rx, behind_rx, also_rx] {
        assert!(matches!(rx.recv_timeout(wait).unwrap(), Outcome::Reply(_)));
    }
    let (targeted, _, targeted_rx) = request("echo", json!({}), wait);
    assert_eq!(
        pool.submit(targeted, Route::Worker(0)),
        Ok(Placement::IdleWorker)
    );
    assert!(matches!(
        targeted_rx.recv_timeout(wait).unwrap(),
        Outcome::Reply(_)
    ));
}

#[test]
fn crash_is_reported_and_worker_replaced() {
    let (pool, events) = start(config(1));
    match call(&pool, "crash", serde_json::json!({})) {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::WorkerExited);
            assert!(f.message.contains("exited with status 3"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
    loop {
        if let Event::WorkerReady { restart: true, .. } =
            events.recv_timeout(Duration::from_secs(10)).unwrap()
        {
            break;
        }
    }
    assert!(matches!(
        call(&pool, "echo", serde_json::json!({"a": 1})),
        Outcome::Reply(_)
    ));
    pool.close(Duration::from_secs(1));
}

#[test]
fn bad_replies_fail_the_request() {
    let (pool, _events) = start(config(1));
    for (cmd, kind) in [
        ("garbage", FailureKind::InvalidReply),
        ("wrong_id", FailureKind::WrongReplyId),
    ] {
        match call(&pool, cmd, serde_json::json!({})) {
            Outcome::Failed(f) => assert_eq!(f.kind, kind, "{cmd}: {}", f.message),
            other => panic!("{cmd}: {other:?}"),
        }
    }
    // Replaced, and serving again.
    assert!(matches!(
        call(&pool, "echo", serde_json::json!({})),
        Outcome::Reply(_)
    ));
    pool.close(Duration::from_secs(1));
}

#[test]
fn deadline_kills_hung_worker_and_drops_late_reply() {
    let (pool, _events) = start(config(1));
    let (ticket, rx) = submit(
        &pool,
        "sleep",
        serde_json::json!({"s": 30}),
        Duration::from_millis(200),
    );
    // The caller's side of a timeout: cancel at the deadline.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    // Whichever side notices first, the request is cancelled and never answered.
    assert!(matches!(
        ticket.cancel(),
        Cancelled::WhileRunning | Cancelled::AlreadyCancelled
    ));
    assert!(matches!(
        call(&pool, "echo", serde_json::json!({"x": 1})),
        Outcome::Reply(_)
    ));
    assert!(rx.try_recv().is_err(), "no late reply");
    assert_eq!(pool.stats().timed_out, 1);
    pool.close(Duration::from_secs(1));
}

#[test]
fn full_queue_rejects_and_close_fails_queued() {
    let mut cfg = config(1);
    cfg.max_queue = 2;
    let (pool, _events) = start(cfg);
    let (_t, busy) = submit(
        &pool,
        "sleep",
        serde_json::json!({"s": 30}),
        Duration::from_secs(60),
    );
    // Wait until the worker has taken it, so the queue is empty.
    while pool.stats().workers[0].state != SlotState::Busy {
        std::thread::yield_now();
    }
    let queued: Vec<_> = (0..2)
        .map(|_| {
            submit(
                &pool,
                "echo",
                serde_json::json!({}),
                Duration::from_secs(60),
            )
            .1
        })
        .collect();
    let (extra, _, _) = request("echo", serde_json::json!({}), Duration::from_secs(1));
    assert_eq!(
        pool.submit(extra, Route::AnyWorker).err(),
        Some(SubmitError::Saturated)
    );
    pool.close(Duration::from_millis(100));
    for rx in queued.iter().chain(std::iter::once(&busy)) {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::PoolClosed, "{}", f.message),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn broken_start_reports_stderr_then_pool_becomes_unavailable() {
    let mut cfg = config(1);
    cfg.spawn.args = vec![
        "-c".into(),
        "import sys; sys.stderr.write('boom: no module\\n'); sys.exit(2)".into(),
    ];
    let (tx, events) = unbounded();
    let pool = Pool::start(cfg, Arc::new(Events(tx))).unwrap();
    let mut failures = 0;
    while failures < 3 {
        if let Event::WorkerStartFailed { reason, .. } =
            events.recv_timeout(Duration::from_secs(10)).unwrap()
        {
            assert!(reason.contains("boom: no module"), "{reason}");
            assert!(reason.contains("exited with status 2"), "{reason}");
            failures += 1;
        }
    }
    assert!(!pool.stats().available);
    let (refused, _, _) = request("echo", serde_json::json!({}), Duration::from_secs(1));
    assert_eq!(
        pool.submit(refused, Route::AnyWorker).err(),
        Some(SubmitError::Unavailable)
    );
    pool.close(Duration::ZERO);
}

#[test]
fn missing_executable_is_a_clear_start_failure() {
    let mut cfg = config(1);
    cfg.spawn.program = "/no/such/python".into();
    let (tx, events) = unbounded();
    let pool = Pool::start(cfg, Arc::new(Events(tx))).unwrap();
    loop {
        if let Event::WorkerStartFailed { reason, .. } =
            events.recv_timeout(Duration::from_secs(10)).unwrap()
        {
            assert!(reason.contains("/no/such/python"), "{reason}");
            assert!(reason.contains("No such file"), "{reason}");
            break;
        }
    }
    pool.close(Duration::ZERO);
}

/// A worker that runs each request on a thread of its own and answers `__cancel__` with a
/// `Cancelled` error for that id, as the bridge's concurrent loop does.
const THREADED_WORKER: &str = concat!(
    worker_prelude!(),
    r#"
lock, cancelled = threading.Lock(), {}
def send(obj):
    body = json.dumps(obj).encode()
    with lock: os.write(out, len(body).to_bytes(4, "big") + body)
def run(rid, cmd, args):
    if cmd == "sleep":
        end = time.monotonic() + args["s"]
        while time.monotonic() < end and not cancelled.get(rid): time.sleep(0.005)
        if cancelled.get(rid):
            return send({"id": rid, "success": False, "error": {"type": "Cancelled", "message": ""}})
    send({"id": rid, "success": True, "result": {"worker_id": wid} if cmd == "ping" else args})
while True:
    req = json.loads(read(int.from_bytes(read(4), "big")))
    if req["command"] == "__cancel__":
        cancelled[req["id"]] = True; continue
    threading.Thread(target=run, args=(req["id"], req["command"], req["args"])).start()
"#
);

fn multiplexed(size: usize, concurrency: usize) -> PoolConfig {
    let mut config = config(size);
    config.spawn.args = vec!["-c".into(), THREADED_WORKER.into()];
    config.concurrency = concurrency;
    config
}

#[test]
fn a_multiplexed_worker_runs_requests_side_by_side_and_answers_in_any_order() {
    let (pool, _events) = start(multiplexed(1, 4));
    // Longest first: they come back in the other order.
    let pending: Vec<_> = (0..4)
        .map(|i| {
            let s = 0.3 - 0.05 * i as f64;
            submit(
                &pool,
                "sleep",
                json!({"s": s, "i": i}),
                Duration::from_secs(10),
            )
            .1
        })
        .collect();
    let started = Instant::now();
    while pool.stats().in_flight < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never 4 in flight"
        );
        std::thread::yield_now();
    }
    for (i, rx) in pending.iter().enumerate() {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Outcome::Reply(v) => assert_eq!(v["i"], i),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pool.stats().in_flight, 0);
    assert_eq!(pool.stats().workers[0].requests, 4);
}

#[test]
fn a_cancelled_multiplexed_request_is_stopped_in_its_worker_which_stays() {
    let (pool, _events) = start(multiplexed(1, 2));
    let pid = pool.stats().workers[0].os_pid;
    let (ticket, rx) = submit(&pool, "sleep", json!({"s": 30}), Duration::from_secs(60));
    // Counted in flight when its place is reserved, a moment before it starts; counted among
    // the worker's requests once started.
    let started = Instant::now();
    while pool.stats().workers[0].requests < 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "never started");
        std::thread::yield_now();
    }
    assert_eq!(ticket.cancel(), Cancelled::WhileRunning);
    let started = Instant::now();
    while pool.stats().in_flight > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the cancel never ended it"
        );
        std::thread::yield_now();
    }
    // No reply reaches a caller that gave up, and the worker serves the next one.
    assert!(rx.try_recv().is_err());
    assert!(matches!(
        call(&pool, "echo", json!({"x": 1})),
        Outcome::Reply(_)
    ));
    assert_eq!(pool.stats().workers[0].os_pid, pid);
}

#[test]
fn requests_beyond_a_multiplexed_workers_room_wait_and_start_as_replies_free_it() {
    let (pool, _events) = start(multiplexed(1, 2));
    let pending: Vec<_> = (0..6)
        .map(|i| {
            submit(
                &pool,
                "sleep",
                json!({"s": 0.1, "i": i}),
                Duration::from_secs(10),
            )
            .1
        })
        .collect();
    let mut most_in_flight = 0;
    let mut answered = vec![false; pending.len()];
    let started = Instant::now();
    while answered.iter().any(|done| !done) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not all answered"
        );
        most_in_flight = most_in_flight.max(pool.stats().in_flight);
        for (i, rx) in pending.iter().enumerate() {
            if let Ok(outcome) = rx.try_recv() {
                assert!(
                    matches!(outcome, Outcome::Reply(ref v) if v["i"] == i),
                    "{outcome:?}"
                );
                answered[i] = true;
            }
        }
        std::thread::yield_now();
    }
    assert!(
        most_in_flight <= 2,
        "{most_in_flight} in flight on room for 2"
    );
    assert_eq!(pool.stats().workers[0].requests, 6);
    assert_eq!(pool.stats().queue_length, 0);
}

/// The real bridge as its template: workers forked from it.
fn forked(size: usize) -> PoolConfig {
    let bridge = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../priv/python/dspex_worker.py"
    );
    let mut config = config(size);
    config.spawn.args = vec![bridge.into(), "--pool".into(), "forked".into()];
    config.template = Some(vec!["--template".into()]);
    config
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(") ")?.1;
    after_name.split(' ').nth(1)?.parse().ok()
}

#[test]
fn forked_workers_report_real_exit_statuses_and_leave_no_zombie() {
    let (pool, events) = start(forked(2));
    let pids: Vec<i32> = pool.stats().workers.iter().map(|w| w.os_pid).collect();
    let template = parent_of(pids[0]).unwrap();
    assert_eq!(
        parent_of(pids[1]),
        Some(template),
        "one template for the pool"
    );
    assert_ne!(template, std::process::id() as i32);
    assert!(matches!(call(&pool, "echo", json!({"a": 1})), Outcome::Reply(v) if v["a"] == 1));

    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let reason = loop {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::WorkerExited { os_pid, reason, .. } if os_pid == pids[0] => break reason,
            _ => {}
        }
    };
    assert!(reason.contains("killed by signal 9 (SIGKILL)"), "{reason}");
    // Released once its status was taken: the template reaps it.
    let gone_by = Instant::now() + Duration::from_secs(2);
    while parent_of(pids[0]).is_some() {
        assert!(
            Instant::now() < gone_by,
            "the killed worker is still a zombie"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    pool.close(Duration::from_secs(1));
    for pid in pids.iter().chain([&template]) {
        assert_eq!(parent_of(*pid), None, "{pid} outlived its pool");
    }
}

#[test]
fn a_pool_stopped_while_its_template_imports_does_not_wait_for_the_imports() {
    let dir = std::env::temp_dir().join(format!("dspex_slow_preload_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slow_preload.py"), "import time\ntime.sleep(60)\n").unwrap();
    let mut config = forked(2);
    config.startup_timeout = Duration::from_secs(60);
    config.spawn.env = vec![("PYTHONPATH".into(), dir.clone().into_os_string())];
    config.template = Some(vec![
        "--template".into(),
        "--preload".into(),
        "slow_preload".into(),
    ]);
    let (tx, _events) = unbounded();
    let pool = Pool::start(config, Arc::new(Events(tx))).unwrap();
    // The template is importing once one of its children's command lines says so.
    let importing_by = Instant::now() + Duration::from_secs(10);
    while !template_running() {
        assert!(Instant::now() < importing_by, "no template started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    pool.close(Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close waited {:?} for the template's imports",
        started.elapsed()
    );
    assert!(!template_running(), "the template outlived its pool");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether a child of this process is a template preloading `slow_preload`.
fn template_running() -> bool {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            return false;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        parent_of(pid) == Some(me)
            && String::from_utf8_lossy(&cmdline).contains("slow_preload")
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    })
}
