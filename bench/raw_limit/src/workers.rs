//! The Python workers, spawned and framed exactly as the NIF does it (the pool's own `process`,
//! `frame` and `protocol` code). How client threads share them is `sharing`'s business.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use dspex_pool_core::affinity;
use dspex_pool_core::frame::{self, FrameReader};
use dspex_pool_core::process::{self, ProcessHandle, SpawnSpec};
use dspex_pool_core::protocol;

use crate::args::Args;

/// The pool's default frame cap (64 MiB).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A request that takes longer than this is a failure, not a slow sample.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// One worker's protocol pipes: the parent's ends of fd 3 and fd 4.
pub struct Worker {
    pub requests: File,
    pub replies: FrameReader,
    /// The CPU the worker is pinned to, where the thread talking to it belongs too.
    pub cpu: Option<usize>,
}

impl Worker {
    /// Writes one request frame and reads its reply, as a slot thread of the pool does.
    /// The reply is lent until the next round trip, as the pool's own reader does.
    pub fn round_trip(&mut self, request: &[u8], deadline: Instant) -> io::Result<&[u8]> {
        frame::write_frame(&mut self.requests, request, Some(deadline)).map_err(other)?;
        self.replies.read_frame(Some(deadline)).map_err(other)
    }
}

/// The worker processes; their pipes are handed out by [`Workers::start`].
pub struct Workers {
    processes: Vec<ProcessHandle>,
    /// From the first spawn until every worker answered its init ping.
    pub startup: Duration,
}

impl Workers {
    /// Spawns `args.workers` bridges at once, then waits for each one's init ping. With
    /// `--pin-cpus true` each worker gets a CPU of its own under the pool's rule (one each, or
    /// none), so raw and the pool run on the same placement: the same CPUs, too, which the
    /// benchmark's idle pool still holds, so they are not claimed here.
    pub fn start(args: &Args) -> io::Result<(Workers, Vec<Worker>)> {
        let cpus = args
            .pin_cpus
            .then(|| affinity::unclaimed_cpus(args.workers))
            .flatten();
        let started = Instant::now();
        let mut processes = Vec::with_capacity(args.workers);
        let mut pipes = Vec::with_capacity(args.workers);
        for index in 0..args.workers {
            let proc = process::spawn(&spec(args, index))?;
            let cpu = cpus.as_ref().map(|c| c[index]);
            if let Some(cpu) = cpu {
                // Right after the spawn, before the interpreter has started any thread.
                affinity::pin(proc.handle.pid(), cpu)?;
            }
            forward_output(proc.stdout);
            forward_output(proc.stderr);
            frame::set_nonblocking(&proc.requests)?;
            processes.push(proc.handle);
            pipes.push(Worker {
                requests: proc.requests,
                replies: FrameReader::new(proc.replies, MAX_FRAME),
                cpu,
            });
        }
        for (index, worker) in pipes.iter_mut().enumerate() {
            init_ping(worker, index)?;
        }
        let workers = Workers {
            processes,
            startup: started.elapsed(),
        };
        Ok((workers, pipes))
    }

    pub fn pids(&self) -> Vec<i32> {
        self.processes.iter().map(ProcessHandle::pid).collect()
    }

    /// Reaps the processes; their pipes must be closed first (a bridge exits on EOF).
    pub fn stop(self) {
        for process in self.processes {
            process.terminate(EXIT_GRACE);
        }
    }
}

/// The command line and environment the Elixir pool gives its workers.
pub fn spec(args: &Args, index: usize) -> SpawnSpec {
    let env = [
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("OMP_NUM_THREADS", "1"),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
    ];
    SpawnSpec {
        program: OsString::from(&args.python),
        args: [
            args.script.as_str(),
            "--pool",
            "raw_limit",
            "--worker-id",
            &index.to_string(),
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        env: env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect(),
        clear_env: false,
        cwd: None,
    }
}

/// Copies a worker's stdout or stderr to ours, so a full pipe can never stall it.
fn forward_output(mut stream: File) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut stream, &mut io::stderr());
    });
}

fn init_ping(worker: &mut Worker, index: usize) -> io::Result<()> {
    let deadline = Some(Instant::now() + STARTUP_TIMEOUT);
    let id = index as u64 + 1;
    let args = format!("{{\"worker_id\":\"{index}\"}}");
    let request = protocol::request(id, "ping", args.as_bytes(), MAX_FRAME).map_err(other)?;
    frame::write_frame(&mut worker.requests, &request, deadline).map_err(other)?;
    let body = worker.replies.read_frame(deadline).map_err(other)?;
    match protocol::reply_head(body) {
        Ok(head) if head.id == id && head.success => Ok(()),
        Ok(_) => Err(io::Error::other(format!(
            "worker {index} failed its init ping: {}",
            protocol::preview(body)
        ))),
        Err(e) => Err(io::Error::other(e)),
    }
}

pub fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}
