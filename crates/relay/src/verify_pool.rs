//! The threads that check EVENTs (signature, id and the rest of `ingest::check`) for every
//! connection and for `import`, so the runtime's workers stay free for socket I/O and one
//! connection's burst is checked on every core instead of serially on its own task.
//!
//! A job's answer comes back through a future; callers keep their own order (a connection
//! takes its checked events in arrival order, the import in line order) and their own bound
//! on jobs in flight, so no client can queue unbounded work here.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// One thread per core: verification is pure CPU, so more threads only add switches.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads() {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let job = match receiver.lock() {
                        Ok(r) => r.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    let Ok(job) = job else { return };
                    // A panicking check drops its answer (the caller sees `None`); the thread
                    // goes on serving the others.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                })
                .expect("start a verification thread");
        }
        sender
    })
}

/// Runs `job` on the pool; the future resolves to its result, or `None` if it panicked.
/// The job starts at once, whether or not the future is polled.
pub fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Option<T>> + Send + 'static {
    let (reply, answer) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = reply.send(job());
    });
    // The pool's threads never stop; were the send to fail, the dropped job answers `None`.
    let _ = queue().send(job);
    async move { answer.await.ok() }
}

#[cfg(test)]
mod tests {
    use super::run;

    #[tokio::test]
    async fn jobs_answer_in_any_order_and_a_panic_answers_none() {
        let waits: Vec<_> = (0..64u64).map(|i| run(move || i * 2)).collect();
        for (i, w) in waits.into_iter().enumerate() {
            assert_eq!(w.await, Some(i as u64 * 2));
        }
        let boom = run(|| -> u8 { panic!("a check panicked") });
        assert_eq!(boom.await, None);
        // The pool still serves after a panic.
        assert_eq!(run(|| 7).await, Some(7));
    }
}
