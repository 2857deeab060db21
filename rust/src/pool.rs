//! The worker threads of [`crate::multi::run`]: which rayon pool a parallel call runs on.
//!
//! - A call made on a rayon worker thread (inside some pool's `install`, as the tests'
//!   `with_threads` does) runs on that pool.
//! - Any other call runs on fastclip's own pool, built on first use with rayon's defaults
//!   (`RAYON_NUM_THREADS`, else one thread per core). rayon's global pool is never touched, so
//!   a process or memory limit that stops threads from starting cannot make rayon panic: if the
//!   pool cannot be built, every call runs on the calling thread (same results, bitwise).
//! - After `fork()` the child has only the forking thread: the parent's pool threads do not
//!   exist there, and a job sent to them would wait forever. A `pthread_atfork` child handler
//!   counts forks; a pool built before the latest fork is abandoned (never touched again, never
//!   freed) and the child builds its own on first use. The same handlers keep the claim
//!   registry consistent across a fork ([`crate::claims`]).

use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// How many times this process's ancestry forked since the library was first used (bumped in
/// the child by the atfork handler).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The pool of one fork generation; `pool` is `None` where threads could not start.
struct Entry {
    forks: u64,
    pool: Option<ThreadPool>,
}

/// The current generation's entry (a leaked box), or null before the first parallel call.
static POOL: AtomicPtr<Entry> = AtomicPtr::new(std::ptr::null_mut());

/// Where a parallel call runs.
pub enum Workers {
    /// On the rayon pool the calling thread belongs to.
    Current,
    /// On fastclip's pool.
    Pool(&'static ThreadPool),
    /// On the calling thread alone.
    Caller,
}

/// Where a parallel call made now runs.
pub fn workers() -> Workers {
    if rayon::current_thread_index().is_some() {
        Workers::Current
    } else {
        match own_pool() {
            Some(p) => Workers::Pool(p),
            None => Workers::Caller,
        }
    }
}

/// How many threads a parallel call made now would use.
pub fn threads() -> usize {
    match workers() {
        // inside a worker, rayon reads that worker's pool (no global pool is built)
        Workers::Current => rayon::current_num_threads(),
        Workers::Pool(p) => p.current_num_threads(),
        Workers::Caller => 1,
    }
}

/// Build a pool from `builder`, or `None` if its threads cannot start.
fn build(builder: ThreadPoolBuilder) -> Option<ThreadPool> {
    builder
        .thread_name(|i| format!("fastclip-{i}"))
        .build()
        .ok()
}

/// fastclip's pool for this fork generation, built on first use.
fn own_pool() -> Option<&'static ThreadPool> {
    watch_forks();
    loop {
        let forks = FORKS.load(Ordering::Acquire);
        let current = POOL.load(Ordering::Acquire);
        // SAFETY: a published entry is a leaked box, never freed.
        if let Some(e) = unsafe { current.as_ref() }
            && e.forks == forks
        {
            return e.pool.as_ref();
        }
        let fresh = Box::into_raw(Box::new(Entry {
            forks,
            pool: build(ThreadPoolBuilder::new()),
        }));
        match POOL.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // The entry replaced (a parent's, in a forked child) is abandoned on purpose: its
            // threads do not exist here, so it is neither used nor dropped.
            // SAFETY: `fresh` is now published and never freed.
            Ok(_) => return unsafe { (*fresh).pool.as_ref() },
            // Another thread published first: ours was never shared, drop it and use theirs.
            // SAFETY: `fresh` came from Box::into_raw above and was not published.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

/// Register the fork handlers (once per process; a fork before the first use has nothing to
/// repair).
pub(crate) fn watch_forks() {
    static ONCE: Once = Once::new();
    #[cfg(unix)]
    ONCE.call_once(atfork::register);
    #[cfg(not(unix))]
    ONCE.call_once(|| {});
}

#[cfg(unix)]
mod atfork {
    use std::ffi::c_int;

    // In the C library every Rust program on unix links (glibc, musl, libSystem): no new
    // dependency.
    unsafe extern "C" {
        pub fn pthread_atfork(
            prepare: Option<unsafe extern "C" fn()>,
            parent: Option<unsafe extern "C" fn()>,
            child: Option<unsafe extern "C" fn()>,
        ) -> c_int;
    }

    pub fn register() {
        // SAFETY: the handlers are plain functions that never unwind; they only lock, unlock
        // and reset fastclip's own claim registry and bump an atomic. A failure to register
        // (ENOMEM) leaves fork as unsupported as it was.
        unsafe {
            pthread_atfork(Some(prepare), Some(parent), Some(child));
        }
    }

    /// In the forking thread, before the fork: hold the claim registry's lock, so that the
    /// child never inherits it locked by a thread that does not exist there.
    pub unsafe extern "C" fn prepare() {
        crate::claims::fork_prepare();
    }

    /// In the parent, after the fork: release it.
    pub unsafe extern "C" fn parent() {
        crate::claims::fork_parent();
    }

    /// In the child: a new generation (a fresh pool on first use), and no claims of threads
    /// that are gone.
    pub unsafe extern "C" fn child() {
        super::FORKS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        crate::claims::fork_child();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_that_cannot_start_are_an_error_not_a_panic() {
        // what `build` relies on: rayon reports a failed spawn (then every call runs on the
        // calling thread)
        let failing = ThreadPoolBuilder::new()
            .num_threads(2)
            .spawn_handler(|_| Err(std::io::Error::other("no threads here")))
            .build();
        assert!(failing.is_err());
        assert!(build(ThreadPoolBuilder::new().num_threads(2)).is_some());
    }

    #[test]
    fn inside_a_pool_that_pool_is_used() {
        let p = ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        assert_eq!(p.install(threads), 3);
        assert!(matches!(p.install(workers), Workers::Current));
        assert!(!matches!(workers(), Workers::Current));
    }
}
