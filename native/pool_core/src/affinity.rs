//! One CPU for each worker, shared by its Python process and the thread that talks to it.
//!
//! A request is a ping-pong over two pipes between a slot's thread and its Python process. When
//! the two share a CPU, each hand-off is a local wake-up with warm caches; when the OS places
//! them apart, or keeps moving them, each is a wake-up across CPUs, which on a small VM costs
//! more than the work (2 cores, 100 B echo: 2 workers and 16 callers went from about 49k to 68k
//! requests/s, 1 worker and 1 caller from 32k to 55k).
//!
//! Pinning is only done when every worker of a pool can have a CPU that no other pinned worker
//! of the VM holds, so two busy workers are never stuck on one CPU while another idles.
//! Otherwise nothing is pinned and the OS places everything, as before.

use std::io;
use std::mem::size_of;

use parking_lot::Mutex;

/// CPUs held by pinned workers, across every pool of the VM.
static CLAIMED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// CPUs reserved for one pool's workers; they are free again when this is dropped.
#[derive(Debug)]
pub struct CpuClaim {
    cpus: Vec<usize>,
}

impl CpuClaim {
    /// One CPU for each of `workers`, if the process may run on that many that no other pool
    /// holds; `None` otherwise.
    pub fn claim(workers: usize) -> Option<CpuClaim> {
        let allowed = allowed_cpus().ok()?;
        let mut claimed = CLAIMED.lock();
        let cpus = pick(workers, &allowed, &claimed)?;
        claimed.extend_from_slice(&cpus);
        Some(CpuClaim { cpus })
    }

    /// The CPU of worker `index`.
    pub fn cpu(&self, index: usize) -> usize {
        self.cpus[index]
    }
}

impl Drop for CpuClaim {
    fn drop(&mut self) {
        CLAIMED.lock().retain(|cpu| !self.cpus.contains(cpu));
    }
}

/// `workers` CPUs from `allowed` that are not `claimed`, or `None` if there are too few.
fn pick(workers: usize, allowed: &[usize], claimed: &[usize]) -> Option<Vec<usize>> {
    let free: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|cpu| !claimed.contains(cpu))
        .take(workers)
        .collect();
    (workers > 0 && free.len() == workers).then_some(free)
}

/// The CPUs this process may run on (its main thread's mask: a thread of the VM may be pinned).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: getpid cannot fail.
    cpus_of(unsafe { libc::getpid() })
}

/// Pins the calling thread, and so every process it spawns from now on, to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin(0, cpu)
}

/// Pins process (or thread) `pid` to `cpu`.
pub fn pin(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks `cpu` against the set's size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
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
        assert_eq!(pick(2, &[0, 1, 2, 3], &[]), Some(vec![0, 1]));
        assert_eq!(pick(2, &[0, 1, 2, 3], &[0, 2]), Some(vec![1, 3]));
        assert_eq!(pick(2, &[0, 1], &[1]), None, "never two workers on one CPU");
        assert_eq!(
            pick(3, &[0, 1], &[]),
            None,
            "more workers than CPUs: no pinning"
        );
        assert_eq!(pick(0, &[0, 1], &[]), None);
    }

    #[test]
    fn a_pinned_thread_and_its_children_stay_on_their_cpu() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().unwrap();
        let (thread_cpus, child_cpus) = std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            let child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .unwrap();
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
