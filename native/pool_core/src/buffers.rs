//! Spare buffers for large request frames.
//!
//! A frame over the allocator's mmap threshold is mapped, faulted in page by page and unmapped
//! again (a TLB shootdown on every core) for each request; with 1 MB arguments that cost more
//! than encoding them. A few such buffers are kept and handed out again, so a steady stream of
//! large requests writes into memory that is already mapped.

use crate::spares::Spares;

/// Below this, the allocator serves buffers from memory it keeps anyway.
const SMALLEST_KEPT: usize = 64 << 10;
/// Above this, holding on to a buffer between requests costs more memory than it saves time.
const LARGEST_KEPT: usize = 16 << 20;
/// At most this many are kept: enough for the large requests in flight on a small pool.
const KEPT: usize = 4;

static SPARE: FrameBuffers = FrameBuffers::new();

/// An empty buffer with room for at least `capacity` bytes: a spare one if the request is large
/// and one is available.
pub fn take(capacity: usize) -> Vec<u8> {
    SPARE.take(capacity)
}

/// Keeps `buf` for a later [`take`] if it is large but not too large, and there is room.
pub fn give_back(buf: Vec<u8>) {
    SPARE.give_back(buf)
}

struct FrameBuffers(Spares<Vec<u8>>);

impl FrameBuffers {
    const fn new() -> Self {
        FrameBuffers(Spares::new(KEPT))
    }

    fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity >= SMALLEST_KEPT {
            if let Some(mut buf) = self.0.take() {
                buf.reserve(capacity);
                return buf;
            }
        }
        Vec::with_capacity(capacity)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if (SMALLEST_KEPT..=LARGEST_KEPT).contains(&buf.capacity()) {
            buf.clear();
            self.0.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_empty() {
        let spares = FrameBuffers::new();
        let mut big = spares.take(1 << 20);
        big.extend_from_slice(b"stale");
        let memory = big.as_ptr();
        spares.give_back(big);

        let again = spares.take(1 << 19);
        assert_eq!(again.as_ptr(), memory, "the spare is handed out again");
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        assert!(spares.0.is_empty(), "and only once");
    }

    #[test]
    fn small_oversized_and_surplus_buffers_are_dropped() {
        let spares = FrameBuffers::new();
        spares.give_back(Vec::with_capacity(100));
        spares.give_back(Vec::with_capacity(LARGEST_KEPT + 1));
        assert!(spares.0.is_empty());

        for _ in 0..KEPT + 2 {
            spares.give_back(Vec::with_capacity(SMALLEST_KEPT));
        }
        assert_eq!(spares.0.len(), KEPT);
        assert!(
            spares.take(10).capacity() < SMALLEST_KEPT,
            "small requests never take one"
        );
        assert_eq!(spares.0.len(), KEPT);
    }
}
