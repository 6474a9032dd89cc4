//! Spawning and owning one worker OS process.
//!
//! The child gets its protocol on fd 3 (requests, read end) and fd 4 (replies, write end), so
//! nothing it prints on stdout can corrupt a frame. stdout and stderr are separate pipes that the
//! pool turns into log lines. Every descriptor of ours is close-on-exec, and the child marks all
//! inherited descriptors above 4 close-on-exec before it execs, so it sees none of the VM's.
//!
//! The process is signalled through a pidfd, which names this process and no other even after its
//! PID is reused, and reaped through the same pidfd.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use parking_lot::Mutex;

/// What to run: the executable, its arguments and environment.
#[derive(Clone, Debug, Default)]
pub struct SpawnSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Added to this OS process's environment, or, with `clear_env`, the whole environment.
    pub env: Vec<(OsString, OsString)>,
    pub clear_env: bool,
    pub cwd: Option<OsString>,
}

/// A running worker process and the parent's ends of its pipes.
pub struct WorkerProcess {
    pub handle: ProcessHandle,
    /// Write end of the request pipe (child's fd 3).
    pub requests: File,
    /// Read end of the reply pipe (child's fd 4).
    pub replies: File,
    pub stdout: File,
    pub stderr: File,
}

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

/// Owner of a child process: signals go through its pidfd, and it is reaped exactly once.
pub struct ProcessHandle {
    pid: i32,
    pidfd: OwnedFd,
    /// Set once reaped: the process group id may be reused after that, so no more group kills.
    reaped: Mutex<Option<ExitStatus>>,
}

const P_PIDFD: libc::idtype_t = 3;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

impl ProcessHandle {
    pub fn pid(&self) -> i32 {
        self.pid
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
            libc::kill(-self.pid, signal);
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
        let status = unsafe {
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
        };
        *reaped = Some(status);
        status
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

/// Pipe capacity asked for (Linux's default unprivileged maximum): large payloads then cross in
/// a few writes instead of a wake-up every 64 KiB.
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// A pipe whose both ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Best effort: a smaller pipe only costs speed.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Spawns the worker. The calling thread must outlive the child: the child gets SIGKILL when the
/// spawning thread exits (PR_SET_PDEATHSIG), which is what ends workers when the VM is killed.
pub fn spawn(spec: &SpawnSpec) -> io::Result<WorkerProcess> {
    let (req_read, req_write) = pipe()?;
    let (rep_read, rep_write) = pipe()?;
    let req_fd = req_read.as_raw_fd();
    let rep_fd = rep_write.as_raw_fd();
    let parent_pid = unsafe { libc::getpid() };

    let mut command = Command::new(&spec.program);
    if spec.clear_env {
        command.env_clear();
    }
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    // Only async-signal-safe calls below: this runs between fork and exec.
    unsafe {
        command.pre_exec(move || child_setup(req_fd, rep_fd, parent_pid));
    }
    let mut child = command.spawn()?;
    drop(req_read);
    drop(rep_write);

    let pid = child.id() as i32;
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let err = io::Error::last_os_error();
        let _ = child.kill();
        return Err(err);
    }
    let handle = ProcessHandle {
        pid,
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) },
        reaped: Mutex::new(None),
    };
    let stdout = File::from(OwnedFd::from(child.stdout.take().expect("piped stdout")));
    let stderr = File::from(OwnedFd::from(child.stderr.take().expect("piped stderr")));
    Ok(WorkerProcess {
        handle,
        requests: File::from(req_write),
        replies: File::from(rep_read),
        stdout,
        stderr,
    })
}

fn child_setup(req_fd: RawFd, rep_fd: RawFd, parent_pid: i32) -> io::Result<()> {
    unsafe {
        // Move both ends above the target numbers first, so dup2 cannot clobber one with the other.
        let req_high = libc::fcntl(req_fd, libc::F_DUPFD_CLOEXEC, 10);
        let rep_high = libc::fcntl(rep_fd, libc::F_DUPFD_CLOEXEC, 10);
        if req_high < 0 || rep_high < 0 {
            return Err(io::Error::last_os_error());
        }
        // dup2 clears close-on-exec on the new descriptors: these two are meant to survive exec.
        if libc::dup2(req_high, 3) < 0 || libc::dup2(rep_high, 4) < 0 {
            return Err(io::Error::last_os_error());
        }
        // Everything else the VM left open becomes close-on-exec.
        if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(64, 65536) as i32;
            for fd in 5..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        // The VM ignores SIGCHLD (and others); a child inheriting that would see subprocess
        // exit codes vanish. Give the child default dispositions.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Own process group, so a kill also reaches what the worker spawned.
        libc::setpgid(0, 0);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before PDEATHSIG was armed.
        if libc::getppid() != parent_pid {
            libc::_exit(1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
