//! One value handed from one thread to another, once: how `Pool::new` hands the dispatcher
//! thread its dispatcher, and how that thread tells `Pool::new` that the workers are up.
//!
//! A mutex and a condvar, not a channel. A channel's receiver yields its CPU (`sched_yield`) a
//! few times before it sleeps, and on a busy machine a yield hands the CPU to the busy process
//! until the next scheduler tick, 4 ms here (issue 9, W8d); a condvar's wait sleeps at once,
//! and its wake-up may preempt.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// The giving side: [`give`](Give::give) the value, or drop it to say that none will come.
pub(crate) struct Give<T>(Arc<Slot<T>>);

/// The taking side: [`take`](Take::take) waits for the value.
pub(crate) struct Take<T>(Arc<Slot<T>>);

struct Slot<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

enum State<T> {
    Waiting,
    Given(T),
    /// The giver was dropped without giving, or the value was taken.
    Over,
}

/// A giver and its taker.
pub(crate) fn pair<T>() -> (Give<T>, Take<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        changed: Condvar::new(),
    });
    (Give(Arc::clone(&slot)), Take(slot))
}

impl<T> Give<T> {
    pub(crate) fn give(self, value: T) {
        self.0.set(State::Given(value));
    }
}

impl<T> Drop for Give<T> {
    /// A giver dropped unused (a thread that ended or unwound first) ends the wait: the taker
    /// must not wait forever. After [`give`](Give::give) this changes nothing.
    fn drop(&mut self) {
        self.0.set(State::Over);
    }
}

impl<T> Slot<T> {
    fn set(&self, to: State<T>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Waiting = *state {
            *state = to;
            self.changed.notify_one();
        }
    }
}

impl<T> Take<T> {
    /// The value, once given; `None` if the giver was dropped without giving it.
    pub(crate) fn take(self) -> Option<T> {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match std::mem::replace(&mut *state, State::Over) {
                State::Given(value) => return Some(value),
                State::Over => return None,
                State::Waiting => {
                    *state = State::Waiting;
                    state = self
                        .0
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    /// Waits (bounded) for what a thread's `take` returned.
    fn taken_by_a_thread<T: Send + 'static>(take: Take<T>) -> mpsc::Receiver<Option<T>> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(take.take()));
        rx
    }

    #[test]
    fn a_value_given_later_reaches_the_waiting_taker() {
        let (give, take) = pair();
        let taken = taken_by_a_thread(take);
        thread::sleep(Duration::from_millis(20));
        give.give(7);
        let got = taken
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait did not end");
        assert_eq!(got, Some(7));
    }

    #[test]
    fn a_value_given_first_is_there_for_the_taker() {
        let (give, take) = pair();
        give.give("up");
        assert_eq!(take.take(), Some("up"));
    }

    /// A thread that ends before it gives must still end the wait.
    #[test]
    fn a_giver_dropped_unused_ends_the_wait_with_none() {
        let (give, take) = pair::<u8>();
        let taken = taken_by_a_thread(take);
        thread::sleep(Duration::from_millis(20));
        drop(give);
        let got = taken
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait did not end");
        assert_eq!(got, None);
    }

    #[test]
    fn a_giver_that_unwinds_ends_the_wait() {
        let (give, take) = pair::<u8>();
        let taken = taken_by_a_thread(take);
        let giver = thread::spawn(move || {
            let _give = give;
            panic!("the giving thread unwinds");
        });
        assert!(giver.join().is_err());
        let got = taken
            .recv_timeout(Duration::from_secs(10))
            .expect("the wait did not end");
        assert_eq!(got, None);
    }
}
