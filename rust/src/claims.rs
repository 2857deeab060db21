//! Memory claims: concurrent calls never race on the same bytes.
//!
//! The binding releases the GIL while kernels run, so two Python threads may call at once. Calls
//! on disjoint buffers run in parallel; a call that would write bytes another call is reading or
//! writing (or read bytes another call is writing) waits until that call is done. A call's claim
//! is taken and released as a whole, so waiting cannot deadlock. The common case (no other call in
//! flight) costs one uncontended lock.
//!
//! Across `fork()` ([`crate::pool`] registers the handlers): the forking thread holds the
//! registry's lock while the process forks, so the child never inherits it locked by a thread
//! that does not exist there, and the child starts with no claims (the calls that held them run
//! on threads the child does not have; the forking thread itself holds none while Python runs).

use std::cell::Cell;
use std::sync::{Condvar, Mutex, MutexGuard};

struct Claim {
    id: u64,
    write: bool,
    /// Half-open, non-empty byte ranges; sorted by start only once another claim needs comparing
    /// (an uncontended call never sorts).
    ranges: Vec<(usize, usize)>,
    sorted: bool,
    /// The smallest start and the largest end: claims whose spans are apart never compare ranges.
    span: (usize, usize),
}

impl Claim {
    fn sort(&mut self) {
        if !self.sorted {
            self.ranges.sort_unstable();
            self.sorted = true;
        }
    }
}

struct Registry {
    next_id: u64,
    active: Vec<Claim>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    active: Vec::new(),
});
static RELEASED: Condvar = Condvar::new();

thread_local! {
    /// The range list of this thread's last released claim, reused so that a call on 100,000
    /// tensors does not allocate (and page-fault in) a fresh list each time.
    static SPARE: Cell<Vec<(usize, usize)>> = const { Cell::new(Vec::new()) };
}

thread_local! {
    /// The registry's lock, held by the forking thread from the prepare handler to the parent's
    /// or the child's handler.
    static HELD_FOR_FORK: Cell<Option<MutexGuard<'static, Registry>>> = const { Cell::new(None) };
}

fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Before a fork, in the forking thread: take the registry's lock (held briefly by others, and
/// never while they wait for anything).
pub(crate) fn fork_prepare() {
    HELD_FOR_FORK.set(Some(lock()));
}

/// After a fork, in the parent: release it.
pub(crate) fn fork_parent() {
    drop(HELD_FOR_FORK.take());
}

/// After a fork, in the child: forget every claim (their threads are gone; their lists are
/// leaked rather than freed in the handler) and release the lock.
pub(crate) fn fork_child() {
    if let Some(mut reg) = HELD_FOR_FORK.take() {
        std::mem::forget(std::mem::take(&mut reg.active));
    }
}

/// Held while a call works on its buffers; dropping it releases the claim.
#[must_use]
pub struct ClaimGuard {
    id: u64,
}

/// Do two sorted range lists intersect?
fn intersect(a: &[(usize, usize)], b: &[(usize, usize)]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        if x.0 < y.1 && y.0 < x.1 {
            return true;
        }
        if x.1 <= y.1 { i += 1 } else { j += 1 }
    }
    false
}

/// Claim `ranges` (byte ranges; empty ones ignored) for reading or writing, waiting while a
/// conflicting claim is active.
pub fn claim(ranges: impl IntoIterator<Item = (usize, usize)>, write: bool) -> ClaimGuard {
    crate::pool::watch_forks();
    let mut list = SPARE.take();
    list.clear();
    list.extend(ranges.into_iter().filter(|r| r.0 < r.1));
    let span = list
        .iter()
        .fold((usize::MAX, 0), |(lo, hi), r| (lo.min(r.0), hi.max(r.1)));
    let mut mine = Claim {
        id: 0,
        write,
        ranges: list,
        sorted: false,
        span,
    };
    let mut reg = lock();
    loop {
        let mut conflict = false;
        for c in reg.active.iter_mut() {
            if (c.write || write) && c.span.0 < mine.span.1 && mine.span.0 < c.span.1 {
                c.sort();
                mine.sort();
                if intersect(&c.ranges, &mine.ranges) {
                    conflict = true;
                    break;
                }
            }
        }
        if !conflict {
            break;
        }
        reg = RELEASED.wait(reg).unwrap_or_else(|e| e.into_inner());
    }
    mine.id = reg.next_id;
    reg.next_id += 1;
    let id = mine.id;
    reg.active.push(mine);
    ClaimGuard { id }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut reg = lock();
        let mut spare = None;
        if let Some(k) = reg.active.iter().position(|c| c.id == self.id) {
            spare = Some(reg.active.swap_remove(k).ranges);
        }
        drop(reg);
        RELEASED.notify_all();
        if let Some(v) = spare {
            SPARE.set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn intersect_sorted_lists() {
        assert!(intersect(&[(0, 10)], &[(5, 6)]));
        assert!(!intersect(&[(0, 10), (20, 30)], &[(10, 20), (30, 40)]));
        assert!(intersect(&[(0, 1), (50, 60)], &[(10, 20), (55, 56)]));
    }

    #[test]
    fn writers_on_shared_bytes_are_serialized_and_disjoint_run_together() {
        let inside = Arc::new(AtomicUsize::new(0));
        let max_seen = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (inside, max_seen) = (inside.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _g = claim(vec![(1000, 2000)], true);
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(max_seen.load(Ordering::SeqCst), 1);
        // readers share; disjoint writers do not wait on each other
        let a = claim(vec![(0, 100)], false);
        let b = claim(vec![(0, 100)], false);
        let c = claim(vec![(100, 200)], true);
        drop((a, b, c));
    }
}
