//! Starting a worker process: its pipes, the descriptors it gets, and what it is set up with
//! between fork and exec.
//!
//! The child gets its protocol on fd 3 (requests, read end) and fd 4 (replies, write end), so
//! nothing it prints on stdout can corrupt a frame. stdout and stderr are separate pipes that the
//! pool turns into log lines. Every descriptor of ours is close-on-exec, and the child marks all
//! inherited descriptors above 4 close-on-exec before it execs, so it sees none of the VM's.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::ProcessHandle;

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

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

/// The worker's four pipes, with the ends it gets and the ends the pool keeps.
pub struct WorkerPipes {
    /// The worker's fds 3 (requests, read end) and 4 (replies, write end).
    pub protocol: [OwnedFd; 2],
    /// The write ends of its stdout and stderr.
    pub output: [OwnedFd; 2],
    requests: OwnedFd,
    replies: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl WorkerPipes {
    pub fn new() -> io::Result<WorkerPipes> {
        let (req_read, req_write) = pipe()?;
        let (rep_read, rep_write) = pipe()?;
        let (out_read, out_write) = pipe()?;
        let (err_read, err_write) = pipe()?;
        Ok(WorkerPipes {
            protocol: [req_read, rep_write],
            output: [out_write, err_write],
            requests: req_write,
            replies: rep_read,
            stdout: out_read,
            stderr: err_read,
        })
    }

    /// The ends the worker gets, in the order of its fds 3, 4, 1 and 2.
    pub fn child_fds(&self) -> [RawFd; 4] {
        [
            self.protocol[0].as_raw_fd(),
            self.protocol[1].as_raw_fd(),
            self.output[0].as_raw_fd(),
            self.output[1].as_raw_fd(),
        ]
    }

    /// The pool's ends, once the worker's have been handed over (and closed here).
    pub fn into_worker(self, handle: ProcessHandle) -> WorkerProcess {
        WorkerProcess {
            handle,
            requests: File::from(self.requests),
            replies: File::from(self.replies),
            stdout: File::from(self.stdout),
            stderr: File::from(self.stderr),
        }
    }
}

/// Spawns the worker. The calling thread must outlive the child: the child gets SIGKILL when the
/// spawning thread exits (PR_SET_PDEATHSIG), which is what ends workers when the VM is killed.
pub fn spawn(spec: &SpawnSpec) -> io::Result<WorkerProcess> {
    let (req_read, req_write) = pipe()?;
    let (rep_read, rep_write) = pipe()?;
    let spawned = spawn_with_fds(spec, req_read.as_raw_fd(), rep_write.as_raw_fd())?;
    drop(req_read);
    drop(rep_write);
    Ok(WorkerProcess {
        handle: spawned.handle,
        requests: File::from(req_write),
        replies: File::from(rep_read),
        stdout: spawned.stdout,
        stderr: spawned.stderr,
    })
}

/// A spawned process and its output pipes.
pub struct Spawned {
    pub handle: ProcessHandle,
    pub stdout: File,
    pub stderr: File,
}

/// Spawns `spec` with `fd3` and `fd4` as its fds 3 and 4 (the caller keeps and closes its own
/// copies), stdin on /dev/null, stdout and stderr piped, every other descriptor closed on exec.
pub fn spawn_with_fds(spec: &SpawnSpec, req_fd: RawFd, rep_fd: RawFd) -> io::Result<Spawned> {
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
    let pid = child.id() as i32;
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let err = io::Error::last_os_error();
        let _ = child.kill();
        return Err(err);
    }
    // SAFETY: pidfd_open returned a new descriptor, owned by nothing else.
    let handle = ProcessHandle::child(pid, unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
    let stdout = File::from(OwnedFd::from(child.stdout.take().expect("piped stdout")));
    let stderr = File::from(OwnedFd::from(child.stderr.take().expect("piped stderr")));
    Ok(Spawned {
        handle,
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
