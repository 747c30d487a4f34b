//! Precise response delays for the mock's configured latency.
//!
//! tokio's timer wheel ticks in milliseconds and its driver parks in whole milliseconds, so a
//! 50 ms `sleep` answers after ~51.8 ms (wrk, 256 connections); a benchmark of the client would
//! then measure the timer. One thread holds the deadlines in a heap and waits on a condition
//! variable, whose timeouts the kernel keeps to tens of microseconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

struct Due {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
    closed: bool,
}

/// The delay thread; it ends when this is dropped (pending delays then end at once).
pub(crate) struct Delays {
    queue: Arc<(Mutex<Queue>, Condvar)>,
}

impl Delays {
    pub(crate) fn start() -> Self {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let worker = queue.clone();
        std::thread::Builder::new()
            .name("mock-delays".into())
            .spawn(move || run(&worker))
            .expect("cannot start the mock's delay thread");
        Delays { queue }
    }

    /// Resolves at `at` (within tens of microseconds).
    pub(crate) async fn until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        {
            let (lock, ready) = &*self.queue;
            let mut q = lock.lock().unwrap();
            if q.closed {
                return;
            }
            q.seq += 1;
            let seq = q.seq;
            let earliest = q.heap.peek().is_none_or(|Reverse(d)| at < d.at);
            q.heap.push(Reverse(Due { at, seq, wake }));
            if earliest {
                ready.notify_one();
            }
        }
        let _ = woken.await;
    }
}

impl Drop for Delays {
    fn drop(&mut self) {
        let (lock, ready) = &*self.queue;
        lock.lock().unwrap().closed = true;
        ready.notify_one();
    }
}

fn run(queue: &(Mutex<Queue>, Condvar)) {
    let (lock, ready) = queue;
    let mut q = lock.lock().unwrap();
    loop {
        if q.closed {
            return; // dropping the heap wakes every waiter
        }
        let now = Instant::now();
        while q.heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(due) = q.heap.pop().unwrap();
            let _ = due.wake.send(());
        }
        q = match q.heap.peek() {
            Some(Reverse(next)) => {
                let wait = next.at - now;
                ready.wait_timeout(q, wait).unwrap().0
            }
            None => ready.wait(q).unwrap(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime_and_delays() -> (tokio::runtime::Runtime, Arc<Delays>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        (rt, Arc::new(Delays::start()))
    }

    #[test]
    fn delays_end_on_time_and_in_order() {
        let (rt, delays) = runtime_and_delays();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for ms in [30u64, 10, 20, 10] {
            let d = delays.clone();
            tasks.push(rt.spawn(async move {
                d.until(start + Duration::from_millis(ms)).await;
                (ms, start.elapsed())
            }));
        }
        for task in tasks {
            let (ms, took) = rt.block_on(task).unwrap();
            let want = Duration::from_millis(ms);
            assert!(took >= want, "{ms} ms delay ended early: {took:?}");
            assert!(
                took < want + Duration::from_millis(5),
                "{ms} ms delay ended late: {took:?}"
            );
        }
    }

    #[test]
    fn an_abandoned_delay_does_not_hold_up_the_others() {
        let (rt, delays) = runtime_and_delays();
        let d = delays.clone();
        let abandoned =
            rt.spawn(async move { d.until(Instant::now() + Duration::from_millis(5)).await });
        abandoned.abort(); // a client that hung up
        let start = Instant::now();
        let d = delays.clone();
        rt.block_on(async move { d.until(start + Duration::from_millis(15)).await });
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(15) && took < Duration::from_millis(20),
            "{took:?}"
        );
    }
}
