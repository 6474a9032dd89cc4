//! Owning one worker OS process (started by [`spawn`], or forked from a template).
//!
//! The process is signalled through a pidfd, which names this process and no other even after its
//! PID is reused, and reaped through the same pidfd.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    /// The status was lost (SIGCHLD ignored by the VM, so the kernel reaped the child).
    Unknown,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signaled(sig) => {
                write!(f, "killed by signal {sig} ({})", signal_name(*sig))
            }
            ExitStatus::Unknown => write!(f, "exited (status unknown)"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// Owner of a worker process: signals go through its pidfd, and it is reaped exactly once.
pub struct ProcessHandle {
    pid: i32,
    pidfd: OwnedFd,
    /// Set once reaped: the process group id may be reused after that, so no more group kills.
    reaped: Mutex<Option<ExitStatus>>,
    /// Who reaps it: this process, or the template it was forked from.
    parent: Parent,
}

enum Parent {
    Us,
    Template(Arc<dyn Reaper>),
}

/// The parent of a process forked from a template (see [`crate::template`]): it keeps the
/// process unreaped after it exits, so its PID and group id stay its own, until released.
pub trait Reaper: Send + Sync {
    /// How `pid`, which has exited, ended; `Unknown` if the parent cannot tell any more.
    fn exit_status(&self, pid: i32) -> ExitStatus;
    /// Lets the parent reap `pid`, whose status has been taken.
    fn release(&self, pid: i32);
    /// `false` once the parent is gone: its children were reaped by someone else.
    fn alive(&self) -> bool;
}

const P_PIDFD: libc::idtype_t = 3;

impl ProcessHandle {
    /// A child of this process, which reaps it.
    pub(crate) fn child(pid: i32, pidfd: OwnedFd) -> ProcessHandle {
        ProcessHandle {
            pid,
            pidfd,
            reaped: Mutex::new(None),
            parent: Parent::Us,
        }
    }

    /// A process this one did not spawn (forked by `parent`), named by a pidfd its parent
    /// opened before anything could reap it.
    pub fn forked(pid: i32, pidfd: OwnedFd, parent: Arc<dyn Reaper>) -> ProcessHandle {
        ProcessHandle {
            pid,
            pidfd,
            reaped: Mutex::new(None),
            parent: Parent::Template(parent),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the group id is still this process's: its parent keeps it unreaped.
    fn group_is_ours(&self) -> bool {
        match &self.parent {
            Parent::Us => true,
            Parent::Template(parent) => parent.alive(),
        }
    }

    /// Sends `signal` to the process and its process group (grandchildren it spawned).
    pub fn signal(&self, signal: i32) {
        let reaped = self.reaped.lock();
        if reaped.is_some() {
            return;
        }
        // Safe against PID reuse: the pidfd names this process, and the group id cannot be
        // reused while its leader is unreaped, which the lock guarantees.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            if self.group_is_ours() {
                libc::kill(-self.pid, signal);
            }
        }
    }

    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// A descriptor of its own that becomes readable when the process exits, for a thread that
    /// must notice the exit while waiting on something else (see `FrameReader::watch_exit`).
    pub fn exit_watch(&self) -> io::Result<OwnedFd> {
        self.pidfd.try_clone()
    }

    /// Waits up to `timeout` (forever if `None`) for the process to exit; `true` if it has.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        loop {
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n >= 0 {
                return n > 0;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return true;
            }
        }
    }

    /// Reaps the process (blocking until it exits) and returns how it ended.
    pub fn reap(&self) -> ExitStatus {
        let mut reaped = self.reaped.lock();
        if let Some(status) = *reaped {
            return status;
        }
        // Wait without holding the lock, so `signal` stays usable meanwhile; an exited but
        // unreaped child is a zombie, whose PID and group id cannot be reused.
        drop(reaped);
        self.wait_exit(None);
        reaped = self.reaped.lock();
        if let Some(status) = *reaped {
            return status;
        }
        // The leader has exited but is not reaped yet, so its group id is still its own:
        // whatever it left in its group (a forked child, a subprocess) goes with it, however
        // it ended, rather than outlive it and the pool. Children that left the group (a
        // session of their own) are theirs.
        if self.group_is_ours() {
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
        }
        let status = match &self.parent {
            Parent::Us => self.wait_status(),
            Parent::Template(parent) => {
                let status = parent.exit_status(self.pid);
                parent.release(self.pid);
                status
            }
        };
        *reaped = Some(status);
        status
    }

    fn wait_status(&self) -> ExitStatus {
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            );
            if rc != 0 {
                ExitStatus::Unknown
            } else {
                let code = info.si_status();
                match info.si_code {
                    libc::CLD_EXITED => ExitStatus::Exited(code),
                    libc::CLD_KILLED | libc::CLD_DUMPED => ExitStatus::Signaled(code),
                    _ => ExitStatus::Unknown,
                }
            }
        }
    }

    /// Ends the process by [`STOP_SEQUENCE`], each step given `grace` (the caller closes the
    /// pipes first, so a healthy worker exits on end of file), and reaps it.
    pub fn terminate(&self, grace: Duration) -> Stopped {
        for (step, signal) in STOP_SEQUENCE {
            if let Some(signal) = signal {
                self.signal(signal);
            }
            let last = step == Stop::Killed;
            if last || self.wait_exit(Some(grace)) {
                return Stopped {
                    status: self.reap(),
                    by: step,
                    grace,
                };
            }
        }
        unreachable!("the last step of STOP_SEQUENCE waits for the exit")
    }
}

/// Which step of [`STOP_SEQUENCE`] ended a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// It exited by itself once its request pipe closed.
    OnItsOwn,
    /// It needed SIGTERM.
    Terminated,
    /// It ignored SIGTERM and was killed.
    Killed,
}

/// How the pool stops a worker: wait for it to leave by itself, then SIGTERM, then SIGKILL.
pub const STOP_SEQUENCE: [(Stop, Option<i32>); 3] = [
    (Stop::OnItsOwn, None),
    (Stop::Terminated, Some(libc::SIGTERM)),
    (Stop::Killed, Some(libc::SIGKILL)),
];

/// The end of a process the pool stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    pub status: ExitStatus,
    pub by: Stop,
    pub grace: Duration,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.grace.as_millis();
        match self.by {
            Stop::OnItsOwn => write!(f, "{}", self.status),
            Stop::Terminated => write!(
                f,
                "sent SIGTERM by the pool after {ms} ms, then {}",
                self.status
            ),
            Stop::Killed => write!(
                f,
                "killed by the pool with SIGKILL: it ignored SIGTERM for {ms} ms"
            ),
        }
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        // Never leave a child behind, whatever path dropped us.
        if self.reaped.lock().is_none() {
            self.kill();
            self.reap();
        }
    }
}

#[cfg(test)]
mod tests;

mod spawn;
pub use spawn::{pipe, spawn, spawn_with_fds, SpawnSpec, Spawned, WorkerPipes, WorkerProcess};
