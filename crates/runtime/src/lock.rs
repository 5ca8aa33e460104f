//! The reload lock (CONTRACT.md §7): one reload at a time, held for a whole
//! request, that truly excludes.
//!
//! [`ReloadLock`] is the abstraction; [`LocalLock`] the in-process implementation.
//! A cluster-wide implementation over a coordination service (an etcd lease, say)
//! fits the same shape: acquiring hands out a [`LockGuard`] carrying a *fencing
//! token* that grows with every acquisition, so a holder that stalled and lost its
//! lease can be told apart from the new holder; and the guard can say whether the
//! lock is still held ([`LockGuard::is_held`]), so a holder can notice it lost it.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why the lock was not acquired.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another reload holds the lock and did not release it within the wait.
    #[error("A reload is already in progress")]
    Conflict,
    /// The coordination service could not be reached (never for [`LocalLock`]).
    #[error("the reload lock is unavailable: {0}")]
    Unavailable(String),
}

/// A lock that admits one reload at a time.
pub trait ReloadLock: Send + Sync + fmt::Debug {
    /// Acquires the lock, waiting up to `wait` for the holder to release it
    /// (`Duration::ZERO` answers at once).
    fn acquire(&self, wait: Duration) -> Result<LockGuard, LockError>;
}

/// What an implementation hands out for one holding of the lock; released on drop.
pub trait Lease: Send + Sync + fmt::Debug {
    /// False once the lock was lost (a lease expired); the holder should stop.
    fn is_held(&self) -> bool;
}

/// Proof of holding the reload lock; releases it when dropped.
#[derive(Debug)]
pub struct LockGuard {
    token: u64,
    lease: Box<dyn Lease>,
}

impl LockGuard {
    pub fn new(token: u64, lease: Box<dyn Lease>) -> Self {
        LockGuard { token, lease }
    }

    /// The fencing token: strictly greater than every token handed out before.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }
}

/// The in-process reload lock.
#[derive(Debug, Clone, Default)]
pub struct LocalLock {
    inner: Arc<LocalInner>,
}

#[derive(Debug, Default)]
struct LocalInner {
    state: Mutex<LocalState>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct LocalState {
    held: bool,
    last_token: u64,
}

impl ReloadLock for LocalLock {
    fn acquire(&self, wait: Duration) -> Result<LockGuard, LockError> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.held {
            let deadline = Instant::now().checked_add(wait);
            while state.held {
                let now = Instant::now();
                let left = match deadline {
                    Some(deadline) if deadline > now => deadline - now,
                    Some(_) => return Err(LockError::Conflict),
                    None => Duration::from_secs(3600),
                };
                state = inner.released.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
        state.held = true;
        state.last_token += 1;
        let token = state.last_token;
        Ok(LockGuard::new(token, Box::new(LocalLease { inner: Arc::clone(inner) })))
    }
}

#[derive(Debug)]
struct LocalLease {
    inner: Arc<LocalInner>,
}

impl Lease for LocalLease {
    fn is_held(&self) -> bool {
        // In process, nothing can take the lock from its holder.
        true
    }
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        // Runs on unwind too: a panicking reload never leaves the lock held.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner).held = false;
        self.inner.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_held_lock_conflicts_at_once_and_tokens_grow() {
        let lock = LocalLock::default();
        let first = lock.acquire(Duration::ZERO).unwrap();
        let started = Instant::now();
        assert_eq!(lock.acquire(Duration::ZERO).unwrap_err(), LockError::Conflict);
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(lock.acquire(Duration::from_millis(30)).unwrap_err(), LockError::Conflict);
        assert!(started.elapsed() >= Duration::from_millis(30));
        let token = first.token();
        drop(first);
        let second = lock.acquire(Duration::ZERO).unwrap();
        assert!(second.token() > token);
        assert!(second.is_held());
    }

    #[test]
    fn waiters_get_the_lock_one_at_a_time() {
        let lock = LocalLock::default();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, inside, most) = (lock.clone(), Arc::clone(&inside), Arc::clone(&most));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _guard = lock.acquire(Duration::from_secs(10)).unwrap();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
    }

    #[test]
    fn a_panicking_holder_releases_the_lock() {
        let lock = LocalLock::default();
        let held = lock.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.acquire(Duration::ZERO).unwrap();
            panic!("a reload step blew up");
        })
        .join();
        assert!(lock.acquire(Duration::ZERO).is_ok());
    }
}
