//! A once-per-window slot kept in one atomic: the first caller in each window
//! claims it. Cached tokens keep such slots (last-used writes, sampled audit
//! of successes), so neither needs a per-token table of its own.

use std::sync::atomic::{AtomicI64, Ordering};

/// Claims the once-per-`window` slot kept in `at` (seconds): true for
/// exactly one caller per window (for every caller when the window is 0).
pub fn claim(at: &AtomicI64, now: i64, window: i64) -> bool {
    if window <= 0 {
        at.store(now, Ordering::Relaxed);
        return true;
    }
    let last = at.load(Ordering::Relaxed);
    (last == 0 || now - last >= window)
        && at
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}
