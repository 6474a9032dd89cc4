//! Workers forked from a template running the real bridge: exit statuses, zombies, and a
//! pool stopped while its template still imports.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crossbeam_channel::unbounded;
use dspex_pool_core::pool::{Event, Pool, PoolConfig};

use support::*;

/// The real bridge as its template: workers forked from it.
fn forked(size: usize) -> PoolConfig {
    let bridge = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../priv/python/dspex_worker.py"
    );
    let mut config = config(size);
    config.spawn.args = vec![bridge.into(), "--pool".into(), "forked".into()];
    config.template = Some(vec!["--template".into()]);
    config
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(") ")?.1;
    after_name.split(' ').nth(1)?.parse().ok()
}

#[test]
fn forked_workers_report_real_exit_statuses_and_leave_no_zombie() {
    let (pool, events) = start(forked(2));
    let pids: Vec<i32> = pool.stats().workers.iter().map(|w| w.os_pid).collect();
    let template = parent_of(pids[0]).unwrap();
    assert_eq!(
        parent_of(pids[1]),
        Some(template),
        "one template for the pool"
    );
    assert_ne!(template, std::process::id() as i32);
    assert!(matches!(call(&pool, "echo", json!({"a": 1})), Outcome::Reply(v) if v["a"] == 1));

    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let reason = loop {
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::WorkerExited { os_pid, reason, .. } if os_pid == pids[0] => break reason,
            _ => {}
        }
    };
    assert!(reason.contains("killed by signal 9 (SIGKILL)"), "{reason}");
    // Released once its status was taken: the template reaps it.
    let gone_by = Instant::now() + Duration::from_secs(2);
    while parent_of(pids[0]).is_some() {
        assert!(
            Instant::now() < gone_by,
            "the killed worker is still a zombie"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    pool.close(Duration::from_secs(1));
    for pid in pids.iter().chain([&template]) {
        assert_eq!(parent_of(*pid), None, "{pid} outlived its pool");
    }
}

#[test]
fn a_pool_stopped_while_its_template_imports_does_not_wait_for_the_imports() {
    let dir = std::env::temp_dir().join(format!("dspex_slow_preload_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slow_preload.py"), "import time\ntime.sleep(60)\n").unwrap();
    let mut config = forked(2);
    config.startup_timeout = Duration::from_secs(60);
    config.spawn.env = vec![("PYTHONPATH".into(), dir.clone().into_os_string())];
    config.template = Some(vec![
        "--template".into(),
        "--preload".into(),
        "slow_preload".into(),
    ]);
    let (tx, _events) = unbounded();
    let pool = Pool::start(config, Arc::new(Events(tx))).unwrap();
    // The template is importing once one of its children's command lines says so.
    let importing_by = Instant::now() + Duration::from_secs(10);
    while !template_running() {
        assert!(Instant::now() < importing_by, "no template started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    pool.close(Duration::from_secs(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close waited {:?} for the template's imports",
        started.elapsed()
    );
    assert!(!template_running(), "the template outlived its pool");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether a child of this process is a template preloading `slow_preload`.
fn template_running() -> bool {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            return false;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        parent_of(pid) == Some(me)
            && String::from_utf8_lossy(&cmdline).contains("slow_preload")
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    })
}
