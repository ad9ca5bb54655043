//! Property test of the cache against a model of the store and its change
//! feed: whatever the interleaving of reads in flight, changes, missed-change
//! invalidations and store outages, the cache never answers with a token
//! version the store no longer holds once the change was reported, nor
//! calls a token absent that the store holds.

use proptest::prelude::*;

use super::*;

const KEYS: u8 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// The store changes the token (a new version, or deleted) and the change
    /// feed reports it.
    Change { key: u8, delete: bool },
    /// A read starts: the epoch, then the store's answer at that moment (the
    /// oldest answer a read can carry).
    Start { key: u8 },
    /// A read in flight ends and caches its answer.
    Finish { read: usize },
    /// Changes may have been missed.
    InvalidateAll,
    /// A request asks the cache.
    Ask { key: u8 },
    /// The store is down: the request falls back on the stale copy.
    Outage { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..KEYS, any::<bool>()).prop_map(|(key, delete)| Op::Change { key, delete }),
        3 => (0..KEYS).prop_map(|key| Op::Start { key }),
        3 => any::<usize>().prop_map(|read| Op::Finish { read }),
        1 => Just(Op::InvalidateAll),
        3 => (0..KEYS).prop_map(|key| Op::Ask { key }),
        1 => (0..KEYS).prop_map(|key| Op::Outage { key }),
    ]
}

fn id(lookup: &Lookup) -> Option<i64> {
    match lookup {
        Lookup::Known(token) => Some(token.record.id),
        Lookup::Unknown => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn answers_are_never_older_than_the_last_reported_change(
        ops in proptest::collection::vec(op(), 1..60),
        capacity in 1u64..6,
    ) {
        let cache = TokenCache::new(
            capacity,
            Duration::from_secs(300),
            Duration::from_secs(300),
            Duration::from_secs(300),
        );
        // The store: each key's current version (None: no such token).
        let mut store: [Option<i64>; KEYS as usize] = [Some(1); KEYS as usize];
        let mut next = 2;
        let mut reads: Vec<(TokenHash, Option<i64>, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Change { key, delete } => {
                    store[usize::from(key)] = (!delete).then_some(next);
                    next += 1;
                    cache.invalidate(&[key; 32]);
                }
                Op::Start { key } => {
                    let started = cache.epoch();
                    reads.push(([key; 32], store[usize::from(key)], started));
                }
                Op::Finish { read } if !reads.is_empty() => {
                    let (key, found, started) = reads.remove(read % reads.len());
                    let answer = cache.loaded(key, found.map(test_record), started);
                    prop_assert_eq!(id(&answer), found, "a read returns what it read");
                }
                Op::Finish { .. } => {}
                Op::InvalidateAll => cache.invalidate_fresh(),
                Op::Ask { key } => {
                    if let Some(answer) = cache.cached(&[key; 32]) {
                        prop_assert_eq!(id(&answer), store[usize::from(key)]);
                    }
                }
                Op::Outage { key } => {
                    if let Some(answer) = cache.stale_entry(&[key; 32]) {
                        prop_assert_eq!(id(&answer), store[usize::from(key)]);
                    }
                }
            }
            prop_assert!(cache.known.len() <= capacity as usize);
            prop_assert!(cache.unknown.len() <= capacity as usize);
        }
    }
}
