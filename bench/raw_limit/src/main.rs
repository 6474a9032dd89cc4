//! `raw_limit`: the ceiling for DSPex.NativePool's benchmarks. It runs the same Python bridge
//! (`priv/python/dspex_worker.py`, fds 3/4, same framing) with N workers and C client threads and
//! no BEAM at all, then prints one JSON object on stdout:
//!
//! ```text
//! {"impl":"raw","workers":2,"clients":16,"payload":100,"requests":…,"window_s":…,
//!  "throughput":…,"p50_us":…,"p99_us":…,"mean_us":…,"max_us":…,"startup_ms":…,
//!  "client_cpu_us_per_req":…,"python_cpu_us_per_req":…}
//! ```
//!
//! With `--bridge-alone true` it measures the second ceiling instead (see `alone`): the bridge
//! serving request frames already written, with no client, as
//! `{"impl":"bridge_alone","workers":…,"throughput":…,"per_worker":[…],…}`.
//!
//! Run from the repository root (the default script path is relative to it):
//! `target/release/raw_limit --workers 2 --clients 16 --payload 100`.

mod alone;
mod args;
mod checkout;
mod cpu;
mod dispatch;
mod load;
mod sharing;
mod stats;
mod workers;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raw_limit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &args::Args) -> std::io::Result<serde_json::Value> {
    if args.bridge_alone {
        return alone::run(args);
    }
    let (workers, pipes) = workers::Workers::start(args)?;
    let startup = workers.startup;
    // Pinning is all or none: whether each worker got a CPU of its own.
    let pinned = !pipes.is_empty() && pipes.iter().all(|worker| worker.cpu.is_some());
    let sharing = sharing::Sharing::new(pipes, args.handoff, args.clients);
    let outcome = load::run(
        &sharing,
        &workers.pids(),
        args.clients,
        &load::echo_args(args.payload),
        args.warmup,
        args.duration,
    );
    sharing.close();
    workers.stop();
    let mut outcome = outcome?;
    let summary = stats::summarize(&mut outcome.latencies_ns);
    let window_s = outcome.window.as_secs_f64();
    Ok(serde_json::json!({
        "impl": "raw",
        "workers": args.workers,
        "clients": args.clients,
        "handoff": args.handoff.name(),
        "pinned": pinned,
        "payload": args.payload,
        "requests": summary.count,
        "window_s": window_s,
        "throughput": summary.count as f64 / window_s,
        "p50_us": summary.p50_us,
        "p99_us": summary.p99_us,
        "mean_us": summary.mean_us,
        "max_us": summary.max_us,
        "startup_ms": startup.as_secs_f64() * 1000.0,
        "client_cpu_us_per_req": per_request(outcome.client_cpu_us, summary.count),
        "python_cpu_us_per_req": per_request(outcome.python_cpu_us, summary.count),
    }))
}

fn per_request(cpu_us: u64, count: usize) -> Option<f64> {
    (count > 0).then(|| cpu_us as f64 / count as f64)
}
