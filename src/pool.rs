//! A fixed set of worker threads fed by one bounded channel.
//!
//! The channel is the back-pressure policy: `submit` never waits, it hands the job back when the
//! queue is full. Each worker owns its state (its directory connections) for its whole life.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub struct Pool<J: Send + 'static> {
    // Declared before `workers`: dropping the pool closes the channel first, so the joins in
    // `Drop` find every worker leaving its loop.
    sender: Option<Sender<J>>,
    receiver: Receiver<J>,
    workers: Vec<JoinHandle<()>>,
    capacity: usize,
    /// Workers running a job now.
    busy: Arc<AtomicUsize>,
    /// The longest the queue has been since the pool started.
    peak: AtomicUsize,
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `threads` workers. Each builds its state with `make_state` and runs `handle` for
    /// every job. A panic in `handle` is caught: the job is dropped (its own `Drop` must answer
    /// for it), the worker's state is rebuilt, and the worker goes on.
    pub fn start<S, M, H>(
        threads: usize,
        capacity: usize,
        make_state: M,
        handle: H,
    ) -> io::Result<Pool<J>>
    where
        M: Fn() -> S + Send + Clone + 'static,
        H: Fn(&mut S, J) + Send + Clone + 'static,
    {
        let (sender, receiver) = bounded(capacity);
        // If a spawn fails part-way, dropping this partial pool closes the channel and joins
        // the workers already started.
        let mut pool = Pool {
            sender: Some(sender),
            receiver: receiver.clone(),
            workers: Vec::with_capacity(threads),
            capacity,
            busy: Arc::default(),
            peak: AtomicUsize::new(0),
        };
        for index in 0..threads {
            let rx = receiver.clone();
            let make_state = make_state.clone();
            let handle = handle.clone();
            let busy = Arc::clone(&pool.busy);
            let worker = thread::Builder::new()
                .name(format!("valkeyauth-{index}"))
                .spawn(move || work(rx, &busy, make_state, handle))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Queues a job without waiting; gives it back when the queue is full or closed.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let Some(sender) = &self.sender else {
            return Err(job);
        };
        sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })?;
        self.peak.fetch_max(self.receiver.len(), Relaxed);
        Ok(())
    }

    pub fn busy(&self) -> usize {
        self.busy.load(Relaxed)
    }

    pub fn queue_peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    pub fn is_full(&self) -> bool {
        self.receiver.is_full()
    }

    pub fn queued(&self) -> usize {
        self.receiver.len()
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Stops taking jobs. Workers finish what is queued, then leave; nothing waits for them here.
    pub fn close(&mut self) {
        self.sender = None;
    }

    /// True once every worker has left, so that dropping the pool joins without waiting.
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }
}

impl<J: Send + 'static> Drop for Pool<J> {
    fn drop(&mut self) {
        self.close();
        for worker in self.workers.drain(..) {
            // A worker catches every panic of a job, so an Err here means the panic hit the
            // loop itself; there is nothing left to clean up for it.
            let _ = worker.join();
        }
    }
}

fn work<J, S, M, H>(jobs: Receiver<J>, busy: &AtomicUsize, make_state: M, handle: H)
where
    M: Fn() -> S,
    H: Fn(&mut S, J),
{
    let mut state = make_state();
    for job in jobs {
        busy.fetch_add(1, Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| handle(&mut state, job)));
        busy.fetch_sub(1, Relaxed);
        if result.is_err() {
            log::warn!(
                "valkeyauth: a worker recovered from an internal error; its connections are reset"
            );
            state = make_state();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    #[test]
    fn a_panicking_job_does_not_stop_the_worker() {
        let (done_tx, done_rx) = unbounded::<u32>();
        let pool = Pool::start(
            1,
            8,
            || 0u32,
            move |handled: &mut u32, job: u32| {
                if job == 0 {
                    panic!("job 0 fails");
                }
                *handled += 1;
                done_tx.send(*handled).unwrap();
            },
        )
        .unwrap();
        pool.submit(0).unwrap();
        pool.submit(1).unwrap();
        pool.submit(2).unwrap();
        // State was rebuilt after the panic, then counted two jobs.
        assert_eq!(done_rx.recv().unwrap(), 1);
        assert_eq!(done_rx.recv().unwrap(), 2);
    }

    #[test]
    fn a_full_queue_hands_the_job_back() {
        let (gate_tx, gate_rx) = bounded::<()>(0);
        let pool = Pool::start(
            1,
            1,
            || (),
            move |_: &mut (), _job: u32| {
                let _ = gate_rx.recv();
            },
        )
        .unwrap();
        pool.submit(1).unwrap(); // taken by the worker, which waits at the gate
        while pool.queued() != 0 {
            thread::yield_now();
        }
        pool.submit(2).unwrap(); // fills the queue
        assert!(pool.is_full());
        assert_eq!(pool.submit(3), Err(3));
        gate_tx.send(()).unwrap();
        gate_tx.send(()).unwrap();
        drop(pool);
    }

    #[test]
    fn drop_joins_every_worker() {
        let (tx, rx) = unbounded::<()>();
        let pool = Pool::start(
            4,
            4,
            || (),
            move |_: &mut (), _: ()| {
                tx.send(()).unwrap();
            },
        )
        .unwrap();
        for _ in 0..4 {
            pool.submit(()).unwrap();
        }
        drop(pool);
        // Every queued job ran before the workers left.
        assert_eq!(rx.try_iter().count(), 4);
    }
}
