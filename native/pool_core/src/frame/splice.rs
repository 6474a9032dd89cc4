//! Request frames with large pieces that are not in the frame's buffer: a caller's 1 MB string
//! stays where its VM holds it and is written to the pipe from there, so it is never copied
//! into the frame (that copy was a fifth of the VM's CPU samples in a 1 MB echo).

use std::fs::File;
use std::io::IoSlice;
use std::time::Instant;

use super::{write_slices, FrameError, HEADER_LEN};

/// Pieces of a frame held elsewhere, each with its place in the frame's own bytes.
pub trait Splices: Send {
    /// The pieces in order: each goes just before the byte at its offset in the frame's buffer
    /// (the buffer's length for one at the end).
    fn pieces(&self) -> Vec<(usize, &[u8])>;

    /// Their bytes in all.
    fn len(&self) -> usize {
        self.pieces().iter().map(|(_, bytes)| bytes.len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fills in the header of a buffer made by [`super::frame_buffer`] whose frame also holds
/// `spliced` bytes of pieces; fails if the body is over `max`.
pub fn seal_spliced(buf: &mut [u8], spliced: usize, max: usize) -> Result<(), FrameError> {
    let len = buf.len() - HEADER_LEN + spliced;
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Writes a sealed frame whose buffer is `frame` and whose pieces are `splices`, whole, as
/// [`super::write_frame`] does: waiting for room no later than `deadline`.
pub fn write_spliced(
    out: &mut File,
    frame: &[u8],
    splices: &dyn Splices,
    deadline: Option<Instant>,
) -> Result<(), FrameError> {
    let pieces = splices.pieces();
    let mut slices = Vec::with_capacity(2 * pieces.len() + 1);
    let mut from = 0;
    for (at, bytes) in pieces {
        slices.push(IoSlice::new(&frame[from..at]));
        slices.push(IoSlice::new(bytes));
        from = at;
    }
    slices.push(IoSlice::new(&frame[from..]));
    // `write_slices` takes no empty slice (there is one between two pieces side by side).
    slices.retain(|slice| !slice.is_empty());
    write_slices(out, &mut slices, deadline)
}
