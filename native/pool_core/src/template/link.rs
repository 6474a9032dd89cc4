//! The pool's end of a template's socket: the thread that reads the template's messages,
//! routing fork replies to the waiting start and exit reports to the workers' handles, which
//! take their exit status from here (see [`crate::process::Reaper`]).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};

use crate::fdpass;
use crate::process::{ExitStatus, Reaper};

/// How long the pool waits for a template's report of a worker's exit once the worker's pidfd
/// says it has exited.
const EXIT_REPORT: Duration = Duration::from_secs(2);

/// The pool's end of the template's socket, shared with the workers' handles.
pub(super) struct Link {
    pub(super) control: OwnedFd,
    exits: Mutex<HashMap<i32, ExitStatus>>,
    exited: Condvar,
    alive: AtomicBool,
}

pub(super) enum Reply {
    Ready {
        unfit: Option<String>,
    },
    NotReady(String),
    Forked {
        id: String,
        pid: i32,
        pidfd: OwnedFd,
    },
    ForkFailed(String),
}

impl Link {
    pub(super) fn new(control: OwnedFd) -> Link {
        Link {
            control,
            exits: Mutex::new(HashMap::new()),
            exited: Condvar::new(),
            alive: AtomicBool::new(true),
        }
    }

    /// The reader thread: routes the template's messages until its socket closes.
    pub(super) fn read_messages(&self, replies: Sender<Reply>) {
        loop {
            let (data, mut fds) = match fdpass::recv(&self.control) {
                Ok((data, fds)) if !data.is_empty() => (data, fds),
                _ => break,
            };
            let message: Value = match serde_json::from_slice(&data) {
                Ok(message) => message,
                Err(_) => break, // not our template's words: treat it as gone
            };
            let reply = if let Some(pid) = message["exited"].as_i64() {
                self.record_exit(pid as i32, &message);
                continue;
            } else if let Some(ready) = message["ready"].as_bool() {
                match ready {
                    true => Reply::Ready {
                        unfit: message["unfit"].as_str().map(String::from),
                    },
                    false => Reply::NotReady(text(&message["error"])),
                }
            } else if let (Some(id), Some(pid), Some(pidfd)) = (
                message["forked"].as_str(),
                message["pid"].as_i64(),
                fds.pop(),
            ) {
                Reply::Forked {
                    id: id.to_owned(),
                    pid: pid as i32,
                    pidfd,
                }
            } else {
                Reply::ForkFailed(text(&message["error"]))
            };
            if replies.send(reply).is_err() {
                break;
            }
        }
        self.alive.store(false, Ordering::Release);
        let _exits = self.exits.lock();
        self.exited.notify_all();
    }

    fn record_exit(&self, pid: i32, message: &Value) {
        let status = match (message["code"].as_i64(), message["signal"].as_i64()) {
            (Some(code), _) => ExitStatus::Exited(code as i32),
            (None, Some(signal)) => ExitStatus::Signaled(signal as i32),
            _ => ExitStatus::Unknown,
        };
        self.exits.lock().insert(pid, status);
        self.exited.notify_all();
    }
}

impl Reaper for Link {
    fn exit_status(&self, pid: i32) -> ExitStatus {
        let until = Instant::now() + EXIT_REPORT;
        let mut exits = self.exits.lock();
        loop {
            if let Some(status) = exits.remove(&pid) {
                return status;
            }
            if !self.alive() || self.exited.wait_until(&mut exits, until).timed_out() {
                return ExitStatus::Unknown;
            }
        }
    }

    fn release(&self, pid: i32) {
        if self.alive() {
            let message = json!({ "release": pid }).to_string();
            let _ = fdpass::send(&self.control, message.as_bytes(), &[]);
        }
    }

    fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), String::from)
}
