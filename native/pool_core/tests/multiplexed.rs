//! Multiplexed workers (`concurrency` above 1) against a real Python process: requests side
//! by side, answered in any order, cancelled in the worker, waiting for room.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use dspex_pool_core::pool::PoolConfig;
use dspex_pool_core::request::Cancelled;
use serde_json::json;

use support::*;

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
