use super::*;
use std::io::{Read, Write};

/// `spawn`, serialized with the tests that watch lock files (see `no_concurrent_forks`).
fn spawn(spec: &SpawnSpec) -> io::Result<WorkerProcess> {
    let _forks = crate::no_concurrent_forks();
    super::spawn(spec)
}

fn sh(script: &str) -> SpawnSpec {
    SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

#[test]
fn protocol_fds_are_3_and_4() {
    let mut p = spawn(&sh("cat <&3 >&4")).unwrap();
    p.requests.write_all(b"hello").unwrap();
    drop(p.requests);
    let mut out = String::new();
    p.replies.read_to_string(&mut out).unwrap();
    assert_eq!(out, "hello");
    assert_eq!(p.handle.reap(), ExitStatus::Exited(0));
}

#[test]
fn child_inherits_no_other_descriptors() {
    // A descriptor of ours without close-on-exec must not reach the child.
    let leaked = unsafe { libc::dup(0) };
    let flags = unsafe { libc::fcntl(leaked, libc::F_GETFD) };
    unsafe { libc::fcntl(leaked, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
    let mut p = spawn(&sh("exec ls /proc/self/fd")).unwrap();
    let mut out = String::new();
    p.stdout.read_to_string(&mut out).unwrap();
    unsafe { libc::close(leaked) };
    let mut fds: Vec<i32> = out.lines().map(|l| l.parse().unwrap()).collect();
    fds.sort();
    // 0-4 are ours; 5 is the directory `ls` itself opened to list them.
    assert_eq!(
        fds,
        vec![0, 1, 2, 3, 4, 5],
        "the child saw descriptors {fds:?}"
    );
    p.handle.reap();
}

#[test]
fn exit_status_and_signal_are_reported() {
    let p = spawn(&sh("exit 3")).unwrap();
    assert_eq!(p.handle.reap(), ExitStatus::Exited(3));
    let p = spawn(&sh("exec sleep 30")).unwrap();
    p.handle.kill();
    assert_eq!(p.handle.reap(), ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(
        ExitStatus::Signaled(9).to_string(),
        "killed by signal 9 (SIGKILL)"
    );
}

#[test]
fn terminate_escalates_to_kill() {
    let p = spawn(&sh("trap '' TERM; while :; do sleep 1; done")).unwrap();
    let stopped = p.handle.terminate(Duration::from_millis(100));
    assert_eq!(stopped.status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(stopped.by, Stop::Killed);
    assert!(stopped.to_string().contains("ignored SIGTERM"), "{stopped}");
    // Signalling after reaping is a no-op, not a stray kill.
    p.handle.kill();
}

#[test]
fn terminate_says_which_step_ended_the_process() {
    let p = spawn(&sh("exec cat <&3")).unwrap();
    drop(p.requests);
    let stopped = p.handle.terminate(Duration::from_secs(5));
    assert_eq!(
        (stopped.by, stopped.status),
        (Stop::OnItsOwn, ExitStatus::Exited(0))
    );
    let p = spawn(&sh("exec sleep 30")).unwrap();
    let stopped = p.handle.terminate(Duration::from_millis(50));
    assert_eq!(stopped.by, Stop::Terminated);
    assert_eq!(stopped.status, ExitStatus::Signaled(libc::SIGTERM));
    assert!(
        stopped.to_string().starts_with("sent SIGTERM by the pool"),
        "{stopped}"
    );
}

#[test]
fn sigchld_is_default_in_child() {
    let mut p = spawn(&sh("grep SigIgn /proc/self/status >&4")).unwrap();
    let mut out = String::new();
    p.replies.read_to_string(&mut out).unwrap();
    let mask = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        mask & (1 << (libc::SIGCHLD - 1)),
        0,
        "SIGCHLD ignored: {out}"
    );
    p.handle.reap();
}

#[test]
fn missing_program_is_an_error() {
    let spec = SpawnSpec {
        program: "/nonexistent/python".into(),
        ..Default::default()
    };
    assert!(spawn(&spec).is_err());
}
