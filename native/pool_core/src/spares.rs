//! A short list of things kept for reuse, such as large frame buffers or the caller-side
//! environments of requests. Taking one and handing it back cost a lock each; beyond the list's
//! bound, what is handed back is simply dropped.

use parking_lot::Mutex;

pub struct Spares<T> {
    list: Mutex<Vec<T>>,
    max: usize,
}

impl<T> Spares<T> {
    /// An empty list that keeps at most `max`.
    pub const fn new(max: usize) -> Self {
        Spares {
            list: Mutex::new(Vec::new()),
            max,
        }
    }

    /// The most recently handed back, if any.
    pub fn take(&self) -> Option<T> {
        self.list.lock().pop()
    }

    /// Keeps `item` for a later [`Spares::take`] if there is room.
    pub fn give_back(&self, item: T) {
        let mut list = self.list.lock();
        if list.len() < self.max {
            list.push(item);
        }
    }

    pub fn len(&self) -> usize {
        self.list.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_its_bound_and_hands_back_the_latest() {
        let spares = Spares::new(2);
        assert_eq!(spares.take(), None::<u32>);
        for item in 1..=3 {
            spares.give_back(item);
        }
        assert_eq!(spares.len(), 2, "the third was dropped");
        assert_eq!(spares.take(), Some(2));
        assert_eq!(spares.take(), Some(1));
        assert!(spares.is_empty());
    }
}
