//! The Python worker pool behind DSPex.NativePool, as plain Rust: it knows nothing of Erlang.
//! The NIF crate (`native/dspex_native_pool`) implements [`request::Caller`] and
//! [`pool::EventSink`] to connect it to BEAM processes.

pub mod affinity;
pub mod buffers;
pub mod frame;
pub mod output;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod queue;
pub mod request;
pub mod sessions;
pub mod worker;
