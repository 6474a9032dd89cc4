//! A queue bounded by a count, without allocating its capacity up front.
//!
//! A crossbeam `bounded(n)` channel allocates all `n` slots at once: with the default limit of
//! 10,000 requests on the shared queue and on every worker's own queue, that was megabytes per
//! pool. Here the channel is unbounded and the bound is a counter.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{unbounded, Receiver, Sender};

pub struct Queue<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
    len: AtomicUsize,
    cap: usize,
}

impl<T> Queue<T> {
    pub fn new(cap: usize) -> Self {
        let (tx, rx) = unbounded();
        Queue {
            tx,
            rx,
            len: AtomicUsize::new(0),
            cap,
        }
    }

    /// Adds an item, or gives it back if the queue is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        // The receiver lives as long as the queue, so sending cannot fail.
        self.tx.send(item).map_err(|e| e.into_inner())
    }

    /// For `select!`; whoever receives through it must call [`Queue::taken`].
    pub fn receiver(&self) -> &Receiver<T> {
        &self.rx
    }

    pub fn taken(&self) {
        self.len.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn try_pop(&self) -> Option<T> {
        let item = self.rx.try_recv().ok()?;
        self.taken();
        Some(item)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count() {
        let q = Queue::new(2);
        assert!(q.push(1).is_ok());
        assert!(q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop(), Some(1));
        assert!(q.push(3).is_ok());
        let got = q.receiver().recv().unwrap();
        q.taken();
        assert_eq!(got, 2);
        assert_eq!(q.try_pop(), Some(3));
        assert!(q.is_empty());
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn concurrent_pushes_never_exceed_the_bound() {
        let q = std::sync::Arc::new(Queue::new(100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|i| q.push(t * 1000 + i).is_ok()).count()
                })
            })
            .collect();
        let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(accepted, 100);
        assert_eq!(q.len(), 100);
    }
}
