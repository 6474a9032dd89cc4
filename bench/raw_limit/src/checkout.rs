//! A queue of idle workers that client threads take from and give back to, `Fifo` (waiters are
//! served in arrival order) or `Barging` (whoever asks first gets it); see `sharing`.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

use crossbeam_channel::{bounded, Sender};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discipline {
    Fifo,
    Barging,
}

pub struct Checkout<T> {
    discipline: Discipline,
    state: Mutex<State<T>>,
    /// Barging only: signalled when an item goes back to idle.
    returned: Condvar,
}

struct State<T> {
    idle: Vec<T>,
    /// Fifo only: the clients waiting, each with its own slot.
    waiting: VecDeque<Sender<T>>,
}

impl<T> Checkout<T> {
    pub fn new(items: Vec<T>, discipline: Discipline) -> Self {
        Checkout {
            discipline,
            state: Mutex::new(State {
                idle: items,
                waiting: VecDeque::new(),
            }),
            returned: Condvar::new(),
        }
    }

    pub fn take(&self) -> T {
        let mut state = self.state.lock().expect("checkout lock");
        if let Some(item) = state.idle.pop() {
            return item;
        }
        match self.discipline {
            Discipline::Barging => loop {
                state = self.returned.wait(state).expect("checkout lock");
                if let Some(item) = state.idle.pop() {
                    return item;
                }
            },
            Discipline::Fifo => {
                let (tx, slot) = bounded(1);
                state.waiting.push_back(tx);
                drop(state);
                slot.recv()
                    .expect("a waiter is served before its sender is dropped")
            }
        }
    }

    pub fn give(&self, item: T) {
        let mut state = self.state.lock().expect("checkout lock");
        match state.waiting.pop_front() {
            Some(waiter) => waiter
                .send(item)
                .unwrap_or_else(|_| unreachable!("waiters block until served")),
            None => {
                state.idle.push(item);
                self.returned.notify_one();
            }
        }
    }

    /// Every idle item (for shutting down once no one takes any more).
    pub fn drain(&self) -> Vec<T> {
        std::mem::take(&mut self.state.lock().expect("checkout lock").idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn order_of_service(discipline: Discipline) -> Vec<u32> {
        let pool = Arc::new(Checkout::new(vec![0u32], discipline));
        let held = pool.take();
        let (order_tx, order_rx) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        for n in 1..=3u32 {
            let (pool, order_tx) = (pool.clone(), order_tx.clone());
            threads.push(std::thread::spawn(move || {
                let item = pool.take();
                order_tx.send(n).unwrap();
                pool.give(item);
            }));
            // Let each thread queue up before the next one starts.
            std::thread::sleep(Duration::from_millis(30));
        }
        pool.give(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(pool.drain().len(), 1);
        order_rx.try_iter().collect()
    }

    #[test]
    fn fifo_serves_waiters_in_arrival_order() {
        assert_eq!(order_of_service(Discipline::Fifo), vec![1, 2, 3]);
    }

    #[test]
    fn barging_serves_everyone() {
        let mut served = order_of_service(Discipline::Barging);
        served.sort();
        assert_eq!(served, vec![1, 2, 3]);
    }
}
