//! A worker's stdout and stderr, read line by line on threads of their own.
//!
//! Each line goes to the pool's event sink (Logger, on the Elixir side); the last lines of stderr
//! are kept so that a crash or a failed start can quote them. A worker that prints without pause
//! is throttled rather than allowed to flood the VM.
//!
//! A reader ends shortly after its worker exits, even when a process the worker started (one
//! that escaped its process group with `setsid`, say) still holds the pipe open: it watches the
//! worker's pidfd, and once the worker is gone it reads only what comes within [`DRAIN_AFTER_EXIT`].

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use parking_lot::Mutex;

use crate::pool::{Event, EventSink, Stream};

/// The slot number the lines of a pool's template (see [`crate::template`]) carry.
pub const TEMPLATE: usize = usize::MAX;

const TAIL_LINES: usize = 20;
const MAX_LINE: usize = 8 * 1024;
const LINES_PER_SECOND: u32 = 1000;
/// How long a reader keeps reading after its worker exited.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// The last lines a worker wrote to stderr.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut lines = self.0.lock();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
    }

    pub fn text(&self) -> String {
        self.0.lock().iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// The reader threads of one worker incarnation.
pub struct Output {
    pub tail: Tail,
    finished: [Receiver<()>; 2],
}

impl Output {
    /// `exit_watch` gives each reader the worker's pidfd (see the module doc); without one, a
    /// reader ends at end of file only.
    pub fn start(
        stdout: File,
        stderr: File,
        exit_watch: impl Fn() -> Option<OwnedFd>,
        slot: usize,
        events: Arc<dyn EventSink>,
    ) -> Output {
        let tail = Tail::default();
        let stdout = Source::new(stdout, exit_watch());
        let stderr = Source::new(stderr, exit_watch());
        let out_done = spawn_reader(stdout, Stream::Stdout, slot, events.clone(), None);
        let err_done = spawn_reader(stderr, Stream::Stderr, slot, events, Some(tail.clone()));
        Output {
            tail,
            finished: [out_done, err_done],
        }
    }

    /// Disconnects when the worker has exited (or closed its stderr on purpose): lets an idle
    /// worker's death be noticed at once.
    pub fn stderr_closed(&self) -> &Receiver<()> {
        &self.finished[1]
    }

    /// Waits (at most `limit`) for both streams to reach end of file, so that the tail holds
    /// everything the worker wrote before it died.
    pub fn drain(&self, limit: Duration) {
        let until = Instant::now() + limit;
        for done in &self.finished {
            let _ = done.recv_deadline(until);
        }
    }
}

/// One output pipe of a worker, read until end of file or until [`DRAIN_AFTER_EXIT`] after the
/// worker's exit, whichever comes first.
struct Source {
    file: File,
    exit_watch: Option<OwnedFd>,
    /// Set once the worker has exited: reading stops then.
    drain_until: Option<Instant>,
}

impl Source {
    fn new(file: File, exit_watch: Option<OwnedFd>) -> Source {
        Source {
            file,
            exit_watch,
            drain_until: None,
        }
    }

    /// Waits for data; `false` when reading should stop (the worker is gone and the drain over).
    fn wait(&mut self) -> bool {
        loop {
            let timeout_ms = match self.drain_until {
                None => -1,
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    left.as_millis().max(1) as i32
                }
            };
            let watch = match (&self.exit_watch, self.drain_until) {
                (Some(fd), None) => fd.as_raw_fd(),
                _ => -1,
            };
            let mut pfds = [
                libc::pollfd {
                    fd: self.file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: watch,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            if pfds[0].revents != 0 {
                return true;
            }
            if pfds[1].revents != 0 {
                self.drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exit_watch.is_some() && !self.wait() {
            return Ok(0);
        }
        self.file.read(buf)
    }
}

fn spawn_reader(
    file: Source,
    stream: Stream,
    slot: usize,
    events: Arc<dyn EventSink>,
    tail: Option<Tail>,
) -> Receiver<()> {
    let (done_tx, done_rx) = bounded::<()>(0);
    let name = format!("dspex-np-{}-{slot}", stream.as_str());
    // If no thread can be made, the closure (and `done_tx` with it) is dropped: the stream
    // counts as closed, and the worker, which could not be watched, is replaced.
    let _ = std::thread::Builder::new().name(name).spawn(move || {
        let _done = done_tx; // dropped at end of file: wakes `drain` and `stderr_closed`
        read_lines(file, stream, slot, &*events, tail.as_ref());
    });
    done_rx
}

fn read_lines(
    file: Source,
    stream: Stream,
    slot: usize,
    events: &dyn EventSink,
    tail: Option<&Tail>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, file);
    let mut raw = Vec::with_capacity(256);
    let mut window = Instant::now();
    let mut in_window = 0u32;
    let mut dropped = 0u64;
    loop {
        raw.clear();
        match read_line_capped(&mut reader, &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            raw.pop();
        }
        let line = String::from_utf8_lossy(&raw);
        if let Some(tail) = tail {
            tail.push(&line);
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 {
                let note = format!("({dropped} lines of output dropped: the worker printed over {LINES_PER_SECOND} lines/s)");
                events.event(Event::Log {
                    slot,
                    stream,
                    line: note,
                });
                dropped = 0;
            }
            window = Instant::now();
            in_window = 0;
        }
        in_window += 1;
        if in_window > LINES_PER_SECOND {
            dropped += 1;
            continue;
        }
        events.event(Event::Log {
            slot,
            stream,
            line: line.into_owned(),
        });
    }
}

/// Reads one line, keeping at most `MAX_LINE` bytes of it (the rest is skipped).
fn read_line_capped(reader: &mut BufReader<Source>, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, found) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = MAX_LINE.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        reader.consume(used);
        total += used;
        if found {
            return Ok(total);
        }
    }
}
