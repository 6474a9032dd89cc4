//! One CPU for each worker, shared by its Python process and the thread that talks to it.
//!
//! A request is a ping-pong over two pipes between a slot's thread and its Python process. When
//! the two share a CPU, each hand-off is a local wake-up with warm caches; when the OS places
//! them apart, or keeps moving them, each is a wake-up across CPUs, which on a small VM costs
//! more than the work (2 cores, 100 B echo: 2 workers and 16 callers went from about 49k to 68k
//! requests/s, 1 worker and 1 caller from 32k to 55k).
//!
//! Pinning is only done when every worker of a pool can have a CPU that no other pinned worker
//! holds, in this VM or any other process using this library on the machine, so two busy
//! workers are never stuck on one CPU while another idles. A CPU is held by an advisory lock
//! (`flock`) on a file named after it in the temporary directory: the kernel drops it when the
//! holder closes it or dies, so a killed VM leaves no CPU held. (A process forked meanwhile holds
//! a copy until it execs, so a CPU freed while another pool spawns a worker is free a moment
//! later.) Without free CPUs for the whole pool, or without the lock files, nothing is pinned
//! and the OS places everything.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// CPUs held for one pool's workers; they are free again when this is dropped.
#[derive(Debug)]
pub struct CpuClaim {
    cpus: Vec<usize>,
    /// Each holds the lock of the CPU at the same position.
    _locks: Vec<File>,
}

impl CpuClaim {
    /// One CPU for each of `workers`, if the process may run on that many that nobody else
    /// holds; `None` otherwise.
    pub fn claim(workers: usize) -> Option<CpuClaim> {
        let allowed = allowed_cpus().ok()?;
        claim_in(&std::env::temp_dir(), workers, &allowed)
    }

    /// The CPU of worker `index`.
    pub fn cpu(&self, index: usize) -> usize {
        self.cpus[index]
    }
}

/// The first `workers` CPUs this process may run on, or `None` if there are fewer; nothing is
/// claimed. For a program that knows it has the machine to itself (`raw_limit`, which must run
/// on the same CPUs as the pool it is compared with while that pool sits idle).
pub fn unclaimed_cpus(workers: usize) -> Option<Vec<usize>> {
    let allowed = allowed_cpus().ok()?;
    (workers > 0 && workers <= allowed.len()).then(|| allowed[..workers].to_vec())
}

/// Locks `workers` of the `allowed` CPUs, lowest first, with lock files in `dir`.
fn claim_in(dir: &Path, workers: usize, allowed: &[usize]) -> Option<CpuClaim> {
    if workers == 0 {
        return None;
    }
    let mut cpus = Vec::with_capacity(workers);
    let mut locks = Vec::with_capacity(workers);
    for &cpu in allowed {
        if let Some(lock) = lock_cpu(&lock_path(dir, cpu)) {
            cpus.push(cpu);
            locks.push(lock);
            if cpus.len() == workers {
                return Some(CpuClaim {
                    cpus,
                    _locks: locks,
                });
            }
        }
    }
    None // the locks taken so far are released as they drop
}

fn lock_path(dir: &Path, cpu: usize) -> PathBuf {
    dir.join(format!("dspex_native_pool.cpu{cpu}.lock"))
}

/// The open lock file if this CPU was free. Opened close-on-exec (as std opens every file), so
/// no worker inherits it; read-only if another user created it, which `flock` allows.
fn lock_cpu(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .or_else(|_| File::open(path))
        .ok()?;
    // SAFETY: a valid descriptor owned by `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

/// The CPUs this process may run on (its main thread's mask: a thread of the VM may be pinned).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: getpid cannot fail.
    cpus_of(unsafe { libc::getpid() })
}

/// Whether the calling thread is running on `cpu` at this moment.
pub fn runs_on(cpu: usize) -> bool {
    // SAFETY: sched_getcpu takes nothing and only reads the calling thread's CPU.
    usize::try_from(unsafe { libc::sched_getcpu() }).is_ok_and(|here| here == cpu)
}

/// Pins the calling thread, and so every process it spawns from now on, to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin(0, cpu)
}

/// Pins process (or thread) `pid` to `cpu`.
pub fn pin(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    pin_to(pid, &[cpu])
}

/// Lets process (or thread) `pid` run on `cpus` only.
pub fn pin_to(pid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks each cpu against the set's size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let rc = unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs `pid` (a process or a thread; 0 is the calling thread) may run on.
pub fn cpus_of(pid: libc::pid_t) -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; the kernel fills at most size_of::<cpu_set_t>() bytes.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(pid, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_gets_free_cpus_or_none() {
        let _forks = crate::no_concurrent_forks();
        let dir = std::env::temp_dir().join(format!("dspex_affinity_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cpus = |claim: &CpuClaim| {
            (0..claim.cpus.len())
                .map(|i| claim.cpu(i))
                .collect::<Vec<_>>()
        };

        let first = claim_in(&dir, 2, &[0, 1, 2, 3]).unwrap();
        assert_eq!(cpus(&first), [0, 1]);
        let second = claim_in(&dir, 2, &[0, 1, 2, 3]).unwrap();
        assert_eq!(cpus(&second), [2, 3], "never a CPU another pool holds");
        assert!(
            claim_in(&dir, 1, &[0, 1, 2, 3]).is_none(),
            "all held: no pinning"
        );
        drop(first);
        let third = claim_in(&dir, 1, &[0, 1, 2, 3]).unwrap();
        assert_eq!(cpus(&third), [0], "freed when the holder drops");
        assert!(
            claim_in(&dir, 5, &[4, 5, 6, 7]).is_none(),
            "more workers than CPUs"
        );
        assert!(
            claim_in(&dir, 2, &[1, 4]).is_some(),
            "a failed claim keeps none of its CPUs"
        );
        assert!(claim_in(&dir, 0, &[8]).is_none());
        drop((second, third));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pinned_thread_and_its_children_stay_on_their_cpu() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().unwrap();
        let (thread_cpus, child_cpus) = std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            let child = {
                let _forks = crate::no_concurrent_forks();
                std::process::Command::new("sleep")
                    .arg("5")
                    .spawn()
                    .unwrap()
            };
            let child_cpus = cpus_of(child.id() as libc::pid_t).unwrap();
            let mut child = child;
            child.kill().unwrap();
            child.wait().unwrap();
            (cpus_of(0).unwrap(), child_cpus)
        })
        .join()
        .unwrap();
        assert_eq!(thread_cpus, vec![cpu]);
        assert_eq!(child_cpus, vec![cpu]);
        assert_eq!(
            allowed_cpus().unwrap(),
            allowed,
            "the process's own mask is untouched"
        );
    }
}
