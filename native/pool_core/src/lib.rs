//! The Python worker pool behind DSPex.NativePool, as plain Rust: it knows nothing of Erlang.
//! The NIF crate (`native/dspex_native_pool`) implements [`request::Caller`] and
//! [`pool::EventSink`] to connect it to BEAM processes.

pub mod affinity;
pub mod buffers;
pub(crate) mod direct;
pub mod fdpass;
pub mod frame;
pub mod lifecycle;
pub mod multiplex;
pub mod output;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod queue;
pub(crate) mod replies;
pub mod request;
pub(crate) mod serial;
pub mod sessions;
pub mod shared;
pub mod spares;
pub(crate) mod start;
pub mod template;
pub mod tools;
pub mod worker;

/// Held by tests that fork, and by tests that need a dropped lock file released at once: from
/// fork until exec a child holds a copy of every descriptor, and with it every `flock`.
#[cfg(test)]
pub(crate) fn no_concurrent_forks() -> std::sync::MutexGuard<'static, ()> {
    static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FORKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
