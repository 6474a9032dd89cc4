pub mod frame;
pub mod output;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod request;
pub mod worker;
