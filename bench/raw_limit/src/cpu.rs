//! CPU time of a process from /proc/<pid>/stat, so a result can say where the CPU went: into the
//! client (this process) or into the Python workers. The Elixir harness reads the same fields.

/// User plus system CPU time of `pid` ("self" for this process), in microseconds; 0 if unknown.
pub fn cpu_us(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (ticks(11) + ticks(12)) * 1_000_000 / hz
}

pub fn total_us(pids: &[i32]) -> u64 {
    pids.iter().map(|pid| cpu_us(&pid.to_string())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_cpu_time() {
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 30 {}
        assert!(cpu_us("self") > 0);
        assert_eq!(cpu_us("999999999"), 0);
    }
}
