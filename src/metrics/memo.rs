//! Per-thread memo of metric children whose labels are all `&'static str`.
//! A `with_label_values` call hashes every label value and takes a lock; the
//! few label sets a request touches are the same on almost every request, so
//! each thread keeps the children it resolved, keyed by addresses.
//!
//! The key is the vector's address and each label's address and length: the
//! same text at two addresses is two entries for one child, which is harmless.
//! The memo is bounded; past the bound lookups go to the vector directly.

use std::cell::RefCell;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

/// Most labels a memoised vector has.
const MAX_LABELS: usize = 3;
/// Most children a thread keeps per child type.
const MAX_ENTRIES: usize = 64;

type Key = (usize, [(usize, usize); MAX_LABELS]);

fn key<V>(vec: &'static V, labels: &[&'static str]) -> Option<Key> {
    if labels.len() > MAX_LABELS {
        return None;
    }
    let mut parts = [(0, 0); MAX_LABELS];
    for (part, label) in parts.iter_mut().zip(labels) {
        *part = (label.as_ptr() as usize, label.len());
    }
    Some((std::ptr::from_ref(vec) as usize, parts))
}

thread_local! {
    static COUNTERS: RefCell<Vec<(Key, IntCounter)>> = const { RefCell::new(Vec::new()) };
    static HISTOGRAMS: RefCell<Vec<(Key, Histogram)>> = const { RefCell::new(Vec::new()) };
}

fn child<C: Clone>(
    memo: &RefCell<Vec<(Key, C)>>,
    key: Option<Key>,
    resolve: impl FnOnce() -> C,
) -> C {
    let Some(key) = key else {
        return resolve();
    };
    let mut memo = memo.borrow_mut();
    if let Some((_, c)) = memo.iter().find(|(k, _)| *k == key) {
        return c.clone();
    }
    let c = resolve();
    if memo.len() < MAX_ENTRIES {
        memo.push((key, c.clone()));
    }
    c
}

/// Adds one to the counter of `vec` with these labels.
pub fn inc(vec: &'static IntCounterVec, labels: &[&'static str]) {
    COUNTERS
        .with(|memo| child(memo, key(vec, labels), || vec.with_label_values(labels)))
        .inc();
}

/// Records `value` in the histogram of `vec` with these labels.
pub fn observe(vec: &'static HistogramVec, labels: &[&'static str], value: f64) {
    HISTOGRAMS
        .with(|memo| child(memo, key(vec, labels), || vec.with_label_values(labels)))
        .observe(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, Opts};
    use std::sync::LazyLock;

    static COUNTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
        IntCounterVec::new(Opts::new("memo_test_total", "test"), &["a", "b"]).unwrap()
    });
    static TIMED: LazyLock<HistogramVec> = LazyLock::new(|| {
        HistogramVec::new(HistogramOpts::new("memo_test_seconds", "test"), &["a"]).unwrap()
    });

    #[test]
    fn counts_land_on_the_labelled_child_whatever_the_label_address() {
        let dynamic = String::from("x");
        let leaked: &'static str = Box::leak(dynamic.into_boxed_str());
        for _ in 0..3 {
            inc(&COUNTED, &["x", "y"]);
        }
        // The same text at another address: another memo entry, the same child.
        inc(&COUNTED, &[leaked, "y"]);
        inc(&COUNTED, &["x", "z"]);
        assert_eq!(COUNTED.with_label_values(&["x", "y"]).get(), 4);
        assert_eq!(COUNTED.with_label_values(&["x", "z"]).get(), 1);
    }

    #[test]
    fn past_the_bound_counts_still_land() {
        let labels: Vec<&'static str> = (0..MAX_ENTRIES + 8)
            .map(|i| &*Box::leak(format!("l{i}").into_boxed_str()))
            .collect();
        for l in &labels {
            observe(&TIMED, &[l], 0.5);
            observe(&TIMED, &[l], 0.5);
        }
        for l in &labels {
            assert_eq!(TIMED.with_label_values(&[l]).get_sample_count(), 2, "{l}");
        }
        HISTOGRAMS.with(|memo| assert_eq!(memo.borrow().len(), MAX_ENTRIES));
    }
}
