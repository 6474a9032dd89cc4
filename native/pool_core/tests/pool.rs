//! The pool against real Python processes speaking the protocol, without the VM: one request
//! at a time per worker (`concurrency: 1`), faults, queues and start failures.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use dspex_pool_core::pool::{Event, Placement, Pool, PoolConfig, Route, SlotState, SubmitError};
use dspex_pool_core::request::{Cancelled, FailureKind};
use serde_json::json;

use support::*;

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

/// A caller polls for a reply one round trip away, but not from the CPU its worker is pinned
/// to, where the poll would take turns with the worker: submit says which it is.
#[test]
fn submit_says_when_the_waiting_worker_is_pinned_to_the_callers_cpu() {
    let (pool, _events) = start(PoolConfig {
        pin_cpus: true,
        ..config(1)
    });
    assert!(matches!(call(&pool, "echo", json!({})), Outcome::Reply(_)));
    let pinned = pool.stats().workers[0].cpu;
    let allowed = dspex_pool_core::affinity::allowed_cpus().unwrap();
    assert!(
        pinned.is_some(),
        "the worker was not pinned: is another pool of this machine holding CPU {}?",
        allowed[0]
    );
    // A thread of its own, so that no other test runs pinned.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                for &cpu in &allowed {
                    dspex_pool_core::affinity::pin_current_thread(cpu).unwrap();
                    let wait = Duration::from_secs(10);
                    let (echo, _, rx) = request("echo", json!({}), wait);
                    let expected = if pinned == Some(cpu) {
                        Placement::IdleWorkerOnThisCpu
                    } else {
                        Placement::IdleWorker
                    };
                    assert_eq!(
                        pool.submit(echo, Route::AnyWorker),
                        Ok(expected),
                        "CPU {cpu}"
                    );
                    assert!(matches!(rx.recv_timeout(wait).unwrap(), Outcome::Reply(_)));
                    // Listed idle before its reply is sent: waiting again by now.
                }
            })
            .join()
            .unwrap();
    });
    pool.close(Duration::from_secs(1));
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

/// A streaming request for the test worker's `stream` command, which obeys a cancel or not.
fn stream_request(
    obey: bool,
    timeout: Duration,
) -> (dspex_pool_core::request::Request, Receiver<Outcome>) {
    let (mut request, _ticket, rx) = request("stream", json!({ "obey": obey }), timeout);
    let (tx, own_rx) = unbounded();
    request.caller = Box::new(StreamCaller(TestCaller(tx)));
    drop(rx);
    (request, own_rx)
}

#[test]
fn a_stream_past_its_deadline_is_told_to_stop_and_keeps_its_worker() {
    let mut config = config(1);
    config.cancel_grace = Duration::from_secs(5);
    let (pool, _events) = start(config);
    let os_pid = pool.stats().workers[0].os_pid;
    let (stream, stream_rx) = stream_request(true, Duration::from_millis(200));
    pool.submit(stream, Route::AnyWorker).unwrap();
    // Queued behind the stream, so answered only once the stream has stopped.
    match call(&pool, "echo", json!({"after": 1})) {
        Outcome::Reply(v) => assert_eq!(v["after"], 1),
        other => panic!("{other:?}"),
    }
    let stats = pool.stats();
    assert_eq!(stats.workers[0].os_pid, os_pid);
    assert_eq!(stats.workers[0].restarts, 0);
    assert_eq!(stats.timed_out, 1);
    // Its late reply went to nobody: the caller answers a timeout itself.
    assert!(stream_rx.try_recv().is_err());
    pool.close(Duration::from_secs(1));
}

#[test]
fn a_stream_that_does_not_stop_within_the_grace_has_its_worker_replaced() {
    let mut config = config(1);
    config.cancel_grace = Duration::from_millis(300);
    let (pool, events) = start(config);
    let (stream, _stream_rx) = stream_request(false, Duration::from_millis(200));
    pool.submit(stream, Route::AnyWorker).unwrap();
    let reason = loop {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::WorkerExited { reason, .. } => break reason,
            _ => continue,
        }
    };
    assert!(
        reason.contains("300 ms after the caller's deadline, though told to stop"),
        "{reason}"
    );
    assert!(matches!(call(&pool, "echo", json!({})), Outcome::Reply(_)));
    pool.close(Duration::from_secs(1));
}
