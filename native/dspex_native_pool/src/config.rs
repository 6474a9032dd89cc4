//! The pool's configuration as Elixir sends it (`Options.nif_config/1`), and its translation
//! into pool_core's `PoolConfig`.

use std::ffi::OsString;
use std::time::Duration;

use rustler::NifMap;

use dspex_pool_core::pool::PoolConfig;
use dspex_pool_core::process::SpawnSpec;

#[derive(NifMap)]
pub struct ConfigMap {
    size: usize,
    python: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    max_frame: usize,
    max_queue: usize,
    startup_timeout: u64,
    health_interval: u64,
    health_timeout: u64,
    max_backoff: u64,
    max_requests: Option<u64>,
    kill_on_timeout: bool,
    pin_cpus: bool,
    concurrency: usize,
    cancel_grace: u64,
    /// Extra arguments of the template workers are forked from; nil spawns each worker.
    template: Option<Vec<String>>,
}

impl From<ConfigMap> for PoolConfig {
    fn from(c: ConfigMap) -> PoolConfig {
        PoolConfig {
            size: c.size,
            spawn: SpawnSpec {
                program: OsString::from(c.python),
                args: c.args.into_iter().map(OsString::from).collect(),
                env: c
                    .env
                    .into_iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                    .collect(),
                // The Elixir side sends the whole environment (see `Options.worker_env`).
                clear_env: true,
                cwd: c.cwd.map(OsString::from),
            },
            max_frame: c.max_frame,
            max_queue: c.max_queue,
            startup_timeout: Duration::from_millis(c.startup_timeout),
            health_interval: Duration::from_millis(c.health_interval),
            health_timeout: Duration::from_millis(c.health_timeout),
            max_backoff: Duration::from_millis(c.max_backoff),
            max_requests: c.max_requests,
            kill_on_timeout: c.kill_on_timeout,
            pin_cpus: c.pin_cpus,
            concurrency: c.concurrency,
            cancel_grace: Duration::from_millis(c.cancel_grace),
            template: c
                .template
                .map(|args| args.into_iter().map(OsString::from).collect()),
        }
    }
}
