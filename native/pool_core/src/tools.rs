//! Python calling back into the application: a running request's worker writes a tool-call
//! frame, `{"id":N,"tool_call":{...}}`, which the pool hands to the outside (an
//! [`crate::pool::Event::ToolCall`]); the answer comes back through [`crate::pool::Pool::send_to_worker`]
//! as a tool-result frame for the same request, written by the worker's own thread.
//!
//! A worker serving one request at a time waits in a read of its reply pipe; the slot's
//! [`Waker`] (an eventfd) wakes that wait, so the thread can write the answer and go on
//! reading.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::frame;

/// Frames for a slot's worker, with the request they belong to.
pub struct Outbox {
    pub(crate) tx: Sender<(u64, Vec<u8>)>,
    pub(crate) rx: Receiver<(u64, Vec<u8>)>,
    pub(crate) waker: Option<Waker>,
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        let (tx, rx) = unbounded();
        Outbox {
            tx,
            rx,
            waker: Waker::new().ok(),
        }
    }

    pub(crate) fn push(&self, id: u64, frame: Vec<u8>) {
        let _ = self.tx.send((id, frame));
        if let Some(waker) = &self.waker {
            waker.notify();
        }
    }

    /// Frames left by requests that ended: dropped.
    pub(crate) fn clear(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// An eventfd another thread can make readable to end a wait in `poll`.
pub struct Waker(OwnedFd);

impl Waker {
    fn new() -> io::Result<Waker> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn notify(&self) {
        let one: u64 = 1;
        // A full counter (never, in practice) already wakes the reader.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Empties the counter, so that the next wait waits.
    pub(crate) fn drain(fd: RawFd) {
        let mut count: u64 = 0;
        let _ = unsafe { libc::read(fd, (&mut count as *mut u64).cast(), 8) };
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Whether a frame from a worker is a tool call rather than a reply: the bridge writes
/// `{"id":N,"tool_call":` and nothing else starts so.
pub fn is_tool_call(body: &[u8]) -> bool {
    second_key_is(body, b",\"tool_call\":")
}

/// Whether a frame from a worker is a chunk of a streaming reply, `{"id":N,"chunk":...}`.
pub fn is_chunk(body: &[u8]) -> bool {
    second_key_is(body, b",\"chunk\":")
}

fn second_key_is(body: &[u8], key: &[u8]) -> bool {
    let Some(rest) = body.strip_prefix(b"{\"id\":") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(key)
}

/// A small frame for a running request's worker: a streaming request's credit
/// (`{"id":N,"credit":n}`: n more chunks may be sent) or a cancel.
pub fn control_frame(id: u64, credit: Option<u64>) -> Vec<u8> {
    let text = match credit {
        Some(n) => format!("{{\"id\":{id},\"credit\":{n}}}"),
        None => format!(
            "{{\"id\":{id},\"command\":\"{}\",\"args\":{{}}}}",
            crate::multiplex::CANCEL_COMMAND
        ),
    };
    let mut framed = Vec::with_capacity(text.len() + frame::HEADER_LEN);
    framed.extend_from_slice(&(text.len() as u32).to_be_bytes());
    framed.extend_from_slice(text.as_bytes());
    framed
}

/// The frame answering tool call `call` of request `id`: `Ok(json)` is the tool's result as
/// JSON text, `Err(message)` its failure. Over `max_frame`, the answer is that failure.
pub fn tool_result_frame(
    id: u64,
    call: u64,
    result: Result<&[u8], &str>,
    max_frame: usize,
) -> Vec<u8> {
    let body = |result: Result<&[u8], &str>| -> Vec<u8> {
        let mut out = format!("{{\"id\":{id},\"tool_result\":{{\"call\":{call},").into_bytes();
        match result {
            Ok(json) => {
                out.extend_from_slice(b"\"ok\":true,\"value\":");
                out.extend_from_slice(json);
            }
            Err(message) => {
                out.extend_from_slice(b"\"ok\":false,\"error\":");
                out.extend_from_slice(
                    serde_json::to_string(message)
                        .unwrap_or_else(|_| "\"?\"".into())
                        .as_bytes(),
                );
            }
        }
        out.extend_from_slice(b"}}");
        out
    };
    let mut text = body(result);
    if text.len() > max_frame {
        let why = format!(
            "the tool's result is {} bytes, over the {max_frame}-byte frame cap (max_frame)",
            text.len()
        );
        text = body(Err(&why));
    }
    let mut framed = Vec::with_capacity(text.len() + frame::HEADER_LEN);
    framed.extend_from_slice(&(text.len() as u32).to_be_bytes());
    framed.extend_from_slice(&text);
    framed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_are_told_from_replies_by_their_second_key() {
        assert!(is_tool_call(br#"{"id":12,"tool_call":{"call":1}}"#));
        assert!(!is_tool_call(br#"{"id":12,"success":true,"result":1}"#));
        assert!(!is_tool_call(br#"{"id":,"tool_call":{}}"#));
        assert!(!is_tool_call(br#"{"success":true,"id":1,"tool_call":{}}"#));
    }

    #[test]
    fn a_result_frame_carries_the_value_or_the_error() {
        let ok = tool_result_frame(7, 2, Ok(br#"{"a":1}"#), 1024);
        assert_eq!(
            &ok[4..],
            br#"{"id":7,"tool_result":{"call":2,"ok":true,"value":{"a":1}}}"#
        );
        let len = u32::from_be_bytes(ok[..4].try_into().unwrap()) as usize;
        assert_eq!(len, ok.len() - 4);
        let err = tool_result_frame(7, 2, Err("no \"such\" tool"), 1024);
        assert!(err.ends_with(br#""ok":false,"error":"no \"such\" tool"}}"#));
        let big = tool_result_frame(7, 2, Ok(&vec![b'1'; 2000]), 200);
        assert!(
            big.windows(9).any(|w| w == b"frame cap"),
            "{:?}",
            String::from_utf8_lossy(&big)
        );
    }

    #[test]
    fn a_waker_makes_its_fd_readable_until_drained() {
        let outbox = Outbox::new();
        let fd = outbox.waker.as_ref().unwrap().raw_fd();
        let readable = || {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            (unsafe { libc::poll(&mut pfd, 1, 0) }) == 1
        };
        assert!(!readable());
        outbox.push(1, vec![1]);
        assert!(readable());
        Waker::drain(fd);
        assert!(!readable());
        assert_eq!(outbox.rx.try_recv().unwrap(), (1, vec![1]));
    }
}
