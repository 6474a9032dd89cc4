//! The load: `clients` threads, each sending echo requests back to back (a closed loop) through
//! the warm-up and then the measured window. A request counts if it completes inside the window,
//! whenever it started, which is what the Elixir harness counts too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use dspex_pool_core::protocol;

use crate::cpu;
use crate::sharing::Sharing;
use crate::workers::{other, MAX_FRAME};

/// The measured window, the same for every client.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

pub struct Outcome {
    /// Latency of every request that completed inside the window.
    pub latencies_ns: Vec<u64>,
    pub window: Duration,
    /// CPU time spent inside the window by this process and by the workers.
    pub client_cpu_us: u64,
    pub python_cpu_us: u64,
}

/// The echo arguments for a payload: `{"data":"xxx…"}`, the same as the Elixir side sends.
pub fn echo_args(payload: usize) -> Vec<u8> {
    let mut json = Vec::with_capacity(payload + 12);
    json.extend_from_slice(b"{\"data\":\"");
    json.resize(json.len() + payload, b'x');
    json.extend_from_slice(b"\"}");
    json
}

/// `python_pids` are the workers' processes, whose CPU time is sampled over the window.
pub fn run(
    sharing: &Sharing,
    python_pids: &[i32],
    clients: usize,
    args_json: &[u8],
    warmup: Duration,
    window: Duration,
) -> std::io::Result<Outcome> {
    let next_id = AtomicU64::new(1_000);
    let go = Barrier::new(clients + 1);
    let schedule = OnceLock::new();
    let per_client = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (go, schedule, next_id) = (&go, &schedule, &next_id);
                scope.spawn(move || {
                    go.wait();
                    let window = *schedule.get().expect("set before the barrier opens");
                    client(sharing, args_json, next_id, window)
                })
            })
            .collect();
        // Set before our own arrival at the barrier, so every client sees it once released.
        let now = Instant::now();
        let from = now + warmup;
        let _ = schedule.set(Window {
            from,
            until: from + window,
        });
        go.wait();
        let cpu = sample_cpu(from, from + window, python_pids);
        let results = handles
            .into_iter()
            .map(|h| h.join().expect("client thread panicked"))
            .collect::<Vec<_>>();
        (results, cpu)
    });
    let (per_client, (client_cpu_us, python_cpu_us)) = per_client;
    let mut latencies_ns = Vec::new();
    for result in per_client {
        latencies_ns.extend(result?);
    }
    Ok(Outcome {
        latencies_ns,
        window,
        client_cpu_us,
        python_cpu_us,
    })
}

/// CPU time of this process and of the workers between `from` and `until`.
fn sample_cpu(from: Instant, until: Instant, pids: &[i32]) -> (u64, u64) {
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let before = (cpu::cpu_us("self"), cpu::total_us(pids));
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    (
        cpu::cpu_us("self") - before.0,
        cpu::total_us(pids).saturating_sub(before.1),
    )
}

/// One client: round trips until the window closes; returns the latencies that count.
fn client(
    sharing: &Sharing,
    args_json: &[u8],
    next_id: &AtomicU64,
    window: Window,
) -> std::io::Result<Vec<u64>> {
    let mut latencies = Vec::new();
    loop {
        let started = Instant::now();
        if started >= window.until {
            return Ok(latencies);
        }
        round_trip(sharing, args_json, next_id.fetch_add(1, Ordering::Relaxed))?;
        let done = Instant::now();
        if done >= window.from && done < window.until {
            latencies.push((done - started).as_nanos() as u64);
        }
    }
}

/// Build the request frame, get it answered, check the reply: the least any pool must do per
/// call.
fn round_trip(sharing: &Sharing, args_json: &[u8], id: u64) -> std::io::Result<()> {
    let request = protocol::request(id, "echo", args_json, MAX_FRAME).map_err(other)?;
    sharing.call(request, |reply| match protocol::reply_head(reply) {
        Ok(head) if head.id == id && head.success && reply.len() > args_json.len() => Ok(()),
        Ok(_) => Err(other(format!(
            "unexpected reply to request {id}: {}",
            protocol::preview(reply)
        ))),
        Err(e) => Err(other(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_args_have_the_payload_length() {
        let json = echo_args(100);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["data"].as_str().unwrap().len(), 100);
    }
}
