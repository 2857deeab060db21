//! Memory claims: concurrent calls never race on the same bytes.
//!
//! The binding releases the GIL while kernels run, so two Python threads may call at once. Calls
//! on disjoint buffers run in parallel; a call that would write bytes another call is reading or
//! writing (or read bytes another call is writing) waits until that call is done. A call's claim
//! is taken and released as a whole, so waiting cannot deadlock. The common case (no other call in
//! flight) costs one uncontended lock.

use std::sync::{Condvar, Mutex};

struct Claim {
    id: u64,
    write: bool,
    /// Half-open byte ranges, sorted by start once another claim needs comparing.
    ranges: Vec<(usize, usize)>,
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
pub fn claim(ranges: Vec<(usize, usize)>, write: bool) -> ClaimGuard {
    let mut ranges: Vec<(usize, usize)> = ranges.into_iter().filter(|r| r.0 < r.1).collect();
    let mut sorted = false;
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let conflict = reg.active.iter().any(|c| {
            (c.write || write) && {
                if !sorted {
                    ranges.sort_unstable();
                    sorted = true;
                }
                intersect(&c.ranges, &ranges)
            }
        });
        if !conflict {
            break;
        }
        reg = RELEASED.wait(reg).unwrap_or_else(|e| e.into_inner());
    }
    if !sorted {
        ranges.sort_unstable();
    }
    let id = reg.next_id;
    reg.next_id += 1;
    reg.active.push(Claim { id, write, ranges });
    ClaimGuard { id }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.active.retain(|c| c.id != self.id);
        drop(reg);
        RELEASED.notify_all();
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
