//! Spare buffers for large frames, requests and replies alike.
//!
//! A frame over the allocator's mmap threshold is mapped, faulted in page by page and unmapped
//! again (a TLB shootdown on every core) for each request; with 1 MB arguments that cost more
//! than encoding them. A few such buffers are kept and handed out again, so a steady stream of
//! large requests writes into memory that is already mapped. They are bounded by their bytes in
//! all, so at most 32 MiB sits idle in them after a burst of large frames.

use parking_lot::Mutex;

/// Below this, the allocator serves buffers from memory it keeps anyway.
const SMALLEST_KEPT: usize = 64 << 10;
/// Above this, holding on to a buffer between requests costs more memory than it saves time.
const LARGEST_KEPT: usize = 16 << 20;
/// At most this many bytes are kept in all. A bound by count (4 buffers) was too few for a
/// pool whose callers keep their replies' frames until they collect garbage (see the NIF's
/// `SharedFrame`): they come back in bursts, the surplus was unmapped, and a tenth of the
/// buffers of a 1 MB echo (2 workers, 16 callers) were then mapped and faulted in afresh.
const KEPT_BYTES: usize = 32 << 20;

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

struct FrameBuffers(Mutex<Kept>);

/// The spare buffers, the most recently given back last, and their capacity in all.
struct Kept {
    list: Vec<Vec<u8>>,
    bytes: usize,
}

impl FrameBuffers {
    const fn new() -> Self {
        FrameBuffers(Mutex::new(Kept {
            list: Vec::new(),
            bytes: 0,
        }))
    }

    fn take(&self, capacity: usize) -> Vec<u8> {
        if capacity >= SMALLEST_KEPT {
            let spare = {
                let mut kept = self.0.lock();
                let spare = kept.list.pop();
                kept.bytes -= spare.as_ref().map_or(0, Vec::capacity);
                spare
            };
            if let Some(mut buf) = spare {
                buf.reserve(capacity);
                return buf;
            }
        }
        Vec::with_capacity(capacity)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let size = buf.capacity();
        if !(SMALLEST_KEPT..=LARGEST_KEPT).contains(&size) {
            return;
        }
        let mut kept = self.0.lock();
        if kept.bytes + size <= KEPT_BYTES {
            buf.clear();
            kept.bytes += size;
            kept.list.push(buf);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().list.len()
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
        assert_eq!(spares.len(), 0, "and only once");
    }

    #[test]
    fn small_oversized_and_surplus_buffers_are_dropped() {
        let spares = FrameBuffers::new();
        spares.give_back(Vec::with_capacity(100));
        spares.give_back(Vec::with_capacity(LARGEST_KEPT + 1));
        assert_eq!(spares.len(), 0);

        let fit = KEPT_BYTES / SMALLEST_KEPT;
        for _ in 0..fit + 2 {
            spares.give_back(Vec::with_capacity(SMALLEST_KEPT));
        }
        assert_eq!(spares.len(), fit, "no more than their bytes' bound");
        assert!(
            spares.take(10).capacity() < SMALLEST_KEPT,
            "small requests never take one"
        );
        assert_eq!(spares.len(), fit);
    }
}
