//! Work that follows a swap but need not delay it. A node has three workers:
//!
//! - the writer: serialising a fresh build into the compile cache and writing
//!   builds to disk;
//! - the tier-up worker, at a lower priority: recompiling builds with the
//!   optimising compiler once their module has been quiet (`reload/module.rs`);
//! - the pieces worker, at a lower priority: compiling the pieces a build
//!   compiled wide left for the next edit (`Engines::compile_later`).
//!
//! Each runs its jobs in order, a job not before the time it was given;
//! dropping a [`Background`] (the node going away) runs what is queued — but
//! for jobs given a time, which are dropped: a tier-up is no use to a node
//! going away — and then stops, so a node that stops cleanly loses no write. A node killed mid-queue
//! loses at most the cache entries and build files of its last moments, which
//! are caches: the build itself was served, and is compiled (or fetched) again
//! when next needed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

type Job = (Option<Instant>, Box<dyn FnOnce() + Send>);

pub(crate) struct Background {
    stopping: Arc<AtomicBool>,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}

impl Background {
    /// A worker thread named `name`, at `nice` (Linux niceness: 0 is normal,
    /// higher yields the cores to other work).
    pub(crate) fn start(name: &str, nice: i32) -> std::io::Result<Background> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            if nice != 0 {
                lower_priority(nice);
            }
            for (not_before, job) in queue {
                if let Some(at) = not_before {
                    loop {
                        let left = at.saturating_duration_since(Instant::now());
                        if stop.load(Ordering::Acquire) || left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                    if stop.load(Ordering::Acquire) {
                        continue;
                    }
                }
                job();
            }
        })?;
        Ok(Background { stopping, jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)) })
    }

    /// Runs `job` after every job queued before it. When the thread is gone (it
    /// never is while the node lives), runs it here.
    pub(crate) fn run(&self, job: impl FnOnce() + Send + 'static) {
        self.send(None, Box::new(job));
    }

    /// As [`Background::run`], not before `at`. Jobs should be given times in
    /// the order they are queued: a later job waits for an earlier one.
    pub(crate) fn run_at(&self, at: Instant, job: impl FnOnce() + Send + 'static) {
        self.send(Some(at), Box::new(job));
    }

    fn send(&self, at: Option<Instant>, job: Box<dyn FnOnce() + Send>) {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        match jobs.as_ref() {
            Some(sender) => {
                if let Err(mpsc::SendError((_, job))) = sender.send((at, job)) {
                    job();
                }
            }
            None => job(),
        }
    }

    /// Waits until every job queued so far has run.
    pub(crate) fn flush(&self) {
        let (done, wait) = mpsc::channel();
        self.run(move || {
            let _ = done.send(());
        });
        let _ = wait.recv();
    }

    /// Runs every queued job but those given a time, then stops the thread.
    ///
    /// Called on the worker itself — a job held the last reference to the
    /// node, so the node (and this) is dropped there — it cannot wait for
    /// itself: the worker finishes the queue after that job and ends alone.
    pub(crate) fn finish(&self) {
        self.stopping.store(true, Ordering::Release);
        drop(self.jobs.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Lowers the calling thread's scheduling priority (a failure is harmless).
fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers; on Linux, PRIO_PROCESS
    // with a thread id changes that thread only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_dropping_its_own_background_ends_without_waiting_for_itself() {
        // As when a job upgrades a weak node and holds its last reference.
        let background = Arc::new(Background::start("test", 0).unwrap());
        let (done, ended) = mpsc::channel();
        let holder = Arc::new(Mutex::new(Some(Arc::clone(&background))));
        let held = Arc::clone(&holder);
        background.run(move || {
            let last = held.lock().unwrap().take();
            drop(last); // the last reference: drops the Background here
            let _ = done.send(());
        });
        drop(background);
        ended.recv_timeout(std::time::Duration::from_secs(5)).expect("the job ended");
    }

    #[test]
    fn finishing_drops_timed_jobs_at_once() {
        let background = Background::start("test", 0).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        background
            .run_at(Instant::now() + std::time::Duration::from_secs(30), move || flag.store(true, Ordering::SeqCst));
        let started = Instant::now();
        background.finish();
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "finish does not wait for a timed job");
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn jobs_run_in_order_and_finish_runs_what_is_queued() {
        let background = Background::start("test", 0).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let seen = Arc::clone(&seen);
            background.run(move || seen.lock().unwrap().push(i));
        }
        background.flush();
        assert_eq!(seen.lock().unwrap().len(), 100, "flush waits for every job queued before it");
        background.finish();
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
        let seen2 = Arc::clone(&seen);
        background.run(move || seen2.lock().unwrap().push(100));
        assert_eq!(seen.lock().unwrap().last(), Some(&100), "after finish, jobs run in place");
    }
}
