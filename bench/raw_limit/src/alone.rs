//! The second ceiling: the bridge alone, with every request frame already written. Each worker
//! reads its requests from a file (so it never waits for a client) and writes its replies to a
//! pipe that a thread of ours only counts; its rate, from its first reply to its last, is what
//! the Python side can serve with no client at all. Workers run side by side, pinned as the
//! pool pins them, and the ceiling is the sum of their rates.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use dspex_pool_core::affinity;
use dspex_pool_core::process::{self, pipe};
use dspex_pool_core::protocol;

use crate::args::Args;
use crate::load::echo_args;
use crate::workers::{other, spec, MAX_FRAME};

/// Requests per worker: enough for a second or more at the bridge's rate.
const REQUESTS: usize = 200_000;

/// Runs the workers on their pre-written requests; returns the summed rate (requests/s).
pub fn run(args: &Args) -> io::Result<serde_json::Value> {
    let cpus = args
        .pin_cpus
        .then(|| affinity::unclaimed_cpus(args.workers))
        .flatten();
    let body = echo_args(args.payload);
    let requests = requests_file(&body)?;
    let mut running = Vec::new();
    for index in 0..args.workers {
        let input = File::open(requests.path())?;
        let (replies, reply_end) = pipe()?;
        let spawned =
            process::spawn_with_fds(&spec(args, index), input.as_raw_fd(), reply_end.as_raw_fd())?;
        drop((input, reply_end));
        if let Some(cpus) = &cpus {
            affinity::pin(spawned.handle.pid(), cpus[index])?;
        }
        let counter = std::thread::spawn(move || count_replies(File::from(replies)));
        running.push((spawned, counter));
    }
    let mut rates = Vec::new();
    for (spawned, counter) in running {
        let rate = counter
            .join()
            .map_err(|_| other("a counting thread panicked"))??;
        spawned.handle.terminate(Duration::from_secs(2));
        rates.push(rate);
    }
    drop(requests);
    Ok(serde_json::json!({
        "impl": "bridge_alone",
        "workers": args.workers,
        "payload": args.payload,
        "pinned": cpus.is_some(),
        "requests_per_worker": REQUESTS,
        "throughput": rates.iter().sum::<f64>(),
        "per_worker": rates,
    }))
}

/// From the first reply to the last: the rate once the interpreter is up. The replies are only
/// counted (walking their length prefixes over large reads), so that this thread takes as
/// little as possible of the CPU the workers share it with; the last one is checked whole.
fn count_replies(mut replies: File) -> io::Result<f64> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut pending, mut frames, mut need) = (Vec::new(), 0usize, None::<usize>);
    let mut first = None;
    loop {
        let n = replies.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        loop {
            let len = match need {
                Some(len) => len,
                None if pending.len() - at >= 4 => {
                    let head: [u8; 4] = pending[at..at + 4].try_into().unwrap();
                    at += 4;
                    *need.insert(u32::from_be_bytes(head) as usize)
                }
                None => break,
            };
            if pending.len() - at < len {
                break;
            }
            if frames + 1 == REQUESTS {
                let body = &pending[at..at + len];
                if !protocol::reply_head(body).map_err(other)?.success {
                    return Err(other(format!(
                        "a request failed: {}",
                        protocol::preview(body)
                    )));
                }
            }
            at += len;
            frames += 1;
            need = None;
        }
        pending.drain(..at);
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    if frames != REQUESTS {
        return Err(other(format!("{frames} replies to {REQUESTS} requests")));
    }
    Ok((REQUESTS - 1) as f64 / elapsed.as_secs_f64())
}

/// A temporary file of `REQUESTS` echo frames, removed when dropped.
struct RequestsFile(std::path::PathBuf);

impl RequestsFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for RequestsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn requests_file(body: &[u8]) -> io::Result<RequestsFile> {
    let path = std::env::temp_dir().join(format!("raw_limit_frames_{}", std::process::id()));
    let file = RequestsFile(path);
    let mut out = io::BufWriter::new(File::create(file.path())?);
    for id in 1..=REQUESTS as u64 {
        let frame = protocol::request(id, "echo", body, MAX_FRAME).map_err(other)?;
        out.write_all(&frame)?;
    }
    out.flush()?;
    Ok(file)
}
