//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! Reads wait on `poll` with a deadline, so a worker that never answers cannot hold its thread
//! past the caller's deadline. The reader buffers what one `read` brings, so a reply written in
//! one piece costs one `poll` and one `read`.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

mod reader;
mod splice;

pub use reader::FrameReader;
pub use splice::{seal_spliced, write_spliced, Splices};

/// A large frame's bytes, owned by whoever keeps them (a reply's caller may share them rather
/// than copy them out); dropped, the buffer goes back to [`crate::buffers`] for the next large
/// frame, so a steady stream of large replies reads into memory that is already mapped.
pub struct LargeFrame(Vec<u8>);

impl LargeFrame {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Gives the buffer's capacity beyond the frame (a spare from a larger one) back to the
    /// allocator.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl Drop for LargeFrame {
    fn drop(&mut self) {
        crate::buffers::give_back(std::mem::take(&mut self.0));
    }
}

/// A frame's body as [`FrameReader::last_frame`] gives it: lent from the reader's buffer, or,
/// for a large frame, the buffer itself.
pub enum Body<'a> {
    Lent(&'a [u8]),
    Owned(LargeFrame),
}

impl std::ops::Deref for Body<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Body::Lent(bytes) => bytes,
            Body::Owned(frame) => frame.bytes(),
        }
    }
}

pub const HEADER_LEN: usize = 4;

#[derive(Debug)]
pub enum FrameError {
    /// The stream ended cleanly between frames.
    Eof,
    /// The stream ended inside a frame.
    Truncated {
        expected: usize,
        got: usize,
    },
    /// The header announced more than the cap allows.
    TooLarge {
        len: usize,
        max: usize,
    },
    /// The deadline passed before the frame was complete.
    Timeout,
    /// The reader's waker was nudged (see [`crate::tools::Waker`]); the read can resume.
    Woken,
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Eof => write!(f, "stream closed"),
            FrameError::Truncated { expected, got } => {
                write!(
                    f,
                    "stream closed inside a frame ({got} of {expected} bytes)"
                )
            }
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte cap")
            }
            FrameError::Timeout => write!(f, "deadline passed"),
            FrameError::Woken => write!(f, "woken"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A buffer that starts with room for the header, so a body can be encoded in place and sent
/// with one write.
pub fn frame_buffer(capacity: usize) -> Vec<u8> {
    let mut buf = crate::buffers::take(capacity + HEADER_LEN);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf
}

/// Fills in the header of a buffer made by [`frame_buffer`]; fails if the body is over `max`.
pub fn seal(buf: &mut [u8], max: usize) -> Result<(), FrameError> {
    seal_spliced(buf, 0, max)
}

/// Writes a sealed frame whole, waiting for room in the pipe no later than `deadline`.
/// The pipe must be non-blocking (see [`set_nonblocking`]): a worker that stops reading cannot
/// hold the writer past the deadline.
pub fn write_frame(
    out: &mut File,
    frame: &[u8],
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    write_slices(out, &mut [IoSlice::new(frame)], deadline)
}

/// Writes `slices` whole and in order, as [`write_frame`] writes its one: a write may take
/// part of them, and the rest follows once the pipe has room. None may be empty: a write of
/// only empty slices writes nothing, which would read as a closed pipe.
fn write_slices(
    out: &mut File,
    mut slices: &mut [IoSlice],
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_for(out, libc::POLLOUT, deadline, None, None)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Writes a request's frame: [`write_frame`], or [`write_spliced`] if it has pieces elsewhere.
pub fn write_request(
    out: &mut File,
    frame: &[u8],
    splices: Option<&dyn Splices>,
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    match splices {
        Some(splices) => write_spliced(out, frame, splices, deadline),
        None => write_frame(out, frame, deadline),
    }
}

/// Bytes written to a pipe and not yet read from it (Linux answers FIONREAD on either end).
/// Tells whether a worker that died had read its request at all.
pub fn unread_bytes(file: &File) -> Option<usize> {
    let mut n: libc::c_int = 0;
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FIONREAD, &mut n) };
    (rc == 0).then_some(n as usize)
}

pub fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `file` is ready for `events`, or the process behind the pidfd `exit_watch`
/// has exited with nothing left to read (`Eof`), or the deadline passes.
fn wait_for(
    file: &File,
    events: i16,
    deadline: Option<Instant>,
    exit_watch: Option<RawFd>,
    waker: Option<RawFd>,
) -> Result<(), FrameError> {
    // Unused entries have fd -1, which poll ignores.
    let mut pfds = [
        libc::pollfd {
            fd: file.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: exit_watch.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let count = 3;
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(FrameError::Timeout);
                }
                // Round up so we never wake just before the deadline and spin.
                ((d - now).as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
            }
        };
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), count, timeout_ms) };
        if n > 0 {
            if pfds[0].revents != 0 {
                return Ok(());
            }
            if pfds[2].revents != 0 {
                crate::tools::Waker::drain(pfds[2].fd);
                return Err(FrameError::Woken);
            }
            return Err(FrameError::Eof);
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(FrameError::Io(err));
            }
        }
        // n == 0: timed out; loop re-checks the deadline.
    }
}

#[cfg(test)]
mod tests;
