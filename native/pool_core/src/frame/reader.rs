//! Reading frames: buffered, each within a deadline, with large frames read in place.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::{set_nonblocking, unread_bytes, wait_for, Body, FrameError, LargeFrame, HEADER_LEN};

/// Reads frames from a pipe, each within a deadline. A frame is lent out until the next read:
/// no allocation or copy per frame.
pub struct FrameReader {
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
    /// Frames too large for `buf` are read straight into this one, kept for the next.
    large_buf: Vec<u8>,
    /// The large frame in progress: (length, bytes filled). Kept here so that a read
    /// interrupted by its deadline can resume.
    large: Option<(usize, usize)>,
    /// Whether the frame returned last was a large one, still in `large_buf`.
    large_done: bool,
    /// Where the small frame returned last lies in `buf`: (start, length).
    last_small: (usize, usize),
    /// Read before waiting (see [`FrameReader::eager`]).
    eager: bool,
    /// The writer's pidfd (see [`FrameReader::watch_exit`]).
    exit_watch: Option<OwnedFd>,
    /// A waker's fd (see [`FrameReader::watch_waker`]).
    waker: Option<RawFd>,
}

const READ_CHUNK: usize = 64 * 1024;
/// A large-frame buffer above this size is given back instead of kept for the next frame.
const KEEP_LARGE: usize = 8 << 20;

impl FrameReader {
    pub fn new(file: File, max: usize) -> Self {
        FrameReader {
            file,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            max,
            large_buf: Vec::new(),
            large: None,
            large_done: false,
            last_small: (0, 0),
            eager: false,
            exit_watch: None,
            waker: None,
        }
    }

    /// Ends a wait for data with [`FrameError::Woken`] when `fd` (a [`crate::tools::Waker`]'s,
    /// which outlives this reader) becomes readable; the waker is drained. A frame being read
    /// is kept, and the next read resumes it.
    /// Returns the waker watched before.
    pub fn watch_waker(&mut self, fd: Option<RawFd>) -> Option<RawFd> {
        std::mem::replace(&mut self.waker, fd)
    }

    /// Ends a wait for data at once when the process behind `pidfd` exits, as if the pipe had
    /// reached end of file: a child that the writer forked may still hold the pipe open, so the
    /// end of file itself may never come. Data already in the pipe is read first.
    pub fn watch_exit(&mut self, pidfd: OwnedFd) {
        self.exit_watch = Some(pidfd);
    }

    /// Whether bytes the worker wrote are waiting, read or not: between requests, that is a
    /// reply nobody asked for.
    pub fn has_unread(&self) -> bool {
        self.has_buffered() || unread_bytes(&self.file).is_some_and(|n| n > 0)
    }

    /// Like [`FrameReader::has_unread`] for what this reader already read, without asking the
    /// pipe (no system call).
    pub fn has_buffered(&self) -> bool {
        self.end > self.start || self.large.is_some()
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<(), FrameError> {
        let watch = self.exit_watch.as_ref().map(|fd| fd.as_raw_fd());
        wait_for(&self.file, libc::POLLIN, deadline, watch, self.waker)
    }

    /// Makes the pipe non-blocking and tries each read before waiting for data. That saves a
    /// `poll` per frame where the answer is usually there already: a pinned worker's slot
    /// thread is preempted by its Python process as soon as it writes a request, and gets the
    /// CPU back once the reply has been written.
    /// If the pipe cannot be made non-blocking, the reader keeps waiting before each read.
    pub fn eager(&mut self) -> io::Result<()> {
        set_nonblocking(&self.file)?;
        self.eager = true;
        Ok(())
    }

    /// The frame [`FrameReader::read_frame`] returned last, for a caller that keeps it: a large
    /// one is taken out of the reader whole, with no copy (the next large frame is read into a
    /// spare buffer); a small one is lent, as `read_frame` lent it.
    pub fn last_frame(&mut self) -> Body<'_> {
        if std::mem::take(&mut self.large_done) {
            return Body::Owned(LargeFrame(std::mem::take(&mut self.large_buf)));
        }
        let (start, len) = self.last_small;
        Body::Lent(&self.buf[start..start + len])
    }

    /// Reads the next frame's body. `deadline: None` waits forever.
    pub fn read_frame(&mut self, deadline: Option<Instant>) -> Result<&[u8], FrameError> {
        self.large_done = false;
        if self.large.is_some() {
            return self.read_large(deadline);
        }
        if self.large_buf.capacity() > KEEP_LARGE {
            self.large_buf = Vec::new();
        }
        self.fill(HEADER_LEN, deadline, true)?;
        let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("header slice");
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if HEADER_LEN + len > self.buf.len() {
            // Large: no growing, compacting or copying out of `buf`; the body is read in place.
            let buffered = self.end - self.start - HEADER_LEN;
            if self.large_buf.capacity() < len {
                // Empty once its last frame was taken (see `last_frame`), or too small: a
                // spare, if any, else a new one, with room for `len` either way.
                let small = std::mem::replace(&mut self.large_buf, crate::buffers::take(len));
                crate::buffers::give_back(small);
            }
            self.large_buf.clear();
            self.large_buf
                .extend_from_slice(&self.buf[self.start + HEADER_LEN..self.end]);
            self.start = 0;
            self.end = 0;
            self.large = Some((len, buffered));
            return self.read_large(deadline);
        }
        // The position only moves once the whole frame is here, so a timed-out read can resume.
        self.fill(HEADER_LEN + len, deadline, false)
            .map_err(|e| match e {
                FrameError::Truncated { got, .. } => FrameError::Truncated {
                    expected: len,
                    got: got - HEADER_LEN,
                },
                other => other,
            })?;
        let body_start = self.start + HEADER_LEN;
        self.start = body_start + len;
        self.last_small = (body_start, len);
        Ok(&self.buf[body_start..body_start + len])
    }

    fn read_large(&mut self, deadline: Option<Instant>) -> Result<&[u8], FrameError> {
        let (len, mut filled) = self.large.expect("a large frame in progress");
        while filled < len {
            match self.wait(deadline) {
                Ok(()) => {}
                Err(FrameError::Eof) => {
                    self.large = None;
                    return Err(FrameError::Truncated {
                        expected: len,
                        got: filled,
                    });
                }
                Err(e) => {
                    self.large = Some((len, filled));
                    return Err(e);
                }
            }
            match read_into_spare(&self.file, &mut self.large_buf, len) {
                Ok(0) => {
                    self.large = None;
                    return Err(FrameError::Truncated {
                        expected: len,
                        got: filled,
                    });
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.large = None;
                    return Err(FrameError::Io(e));
                }
            }
        }
        self.large = None;
        self.large_done = true;
        Ok(&self.large_buf[..len])
    }

    /// Makes at least `need` bytes available from `start`.
    fn fill(
        &mut self,
        need: usize,
        deadline: Option<Instant>,
        at_boundary: bool,
    ) -> Result<(), FrameError> {
        if self.end - self.start >= need {
            return Ok(());
        }
        // Compact; frames larger than the buffer never come here (see `read_large`).
        debug_assert!(need <= self.buf.len());
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let wait = |reader: &Self| match reader.wait(deadline) {
            Err(FrameError::Eof) if !(at_boundary && reader.end == 0) => {
                Err(FrameError::Truncated {
                    expected: need,
                    got: reader.end,
                })
            }
            other => other,
        };
        while self.end < need {
            if !self.eager {
                wait(self)?;
            }
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) if at_boundary && self.end == 0 => return Err(FrameError::Eof),
                Ok(0) => {
                    return Err(FrameError::Truncated {
                        expected: need,
                        got: self.end,
                    })
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(self)?,
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        Ok(())
    }
}

/// Reads from `file` onto the end of `buf`, never past `upto` bytes in all. The bytes go
/// straight into the vector's spare capacity: zeroing a megabyte first, only to read over it,
/// cost as much as checking the reply's UTF-8.
fn read_into_spare(file: &File, buf: &mut Vec<u8>, upto: usize) -> io::Result<usize> {
    let have = buf.len();
    let spare = &mut buf.spare_capacity_mut()[..upto - have];
    // SAFETY: `read` writes at most `spare.len()` bytes into memory the vector owns, and the
    // length grows by exactly the count it reports written.
    let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { buf.set_len(have + n as usize) };
    Ok(n as usize)
}
