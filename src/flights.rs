//! Single flight: concurrent misses for one key share one load (the token
//! cache's store reads, the owner cache's lookups of mem0).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct Flights<K, T> {
    under_way: Mutex<HashMap<K, Arc<OnceCell<T>>>>,
}

impl<K: Hash + Eq, T: Clone> Default for Flights<K, T> {
    fn default() -> Self {
        Flights {
            under_way: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq, T: Clone> Flights<K, T> {
    /// `load`'s answer for `key`, shared with every caller that asks while
    /// it runs, and whether this caller loaded it. Before a flight starts,
    /// `cached` is asked under the map's lock: a flight that ended after
    /// the caller's miss stored its answer before it left the map. A caller
    /// dropped while loading hands the load over to one of those waiting.
    pub async fn join<Q>(
        &self,
        key: &Q,
        cached: impl FnOnce() -> Option<T>,
        load: impl Future<Output = T>,
    ) -> (T, bool)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let flight = {
            let mut under_way = self.lock();
            match under_way.get(key) {
                Some(flight) => flight.clone(),
                None => {
                    if let Some(answer) = cached() {
                        return (answer, false);
                    }
                    let flight = Arc::new(OnceCell::new());
                    under_way.insert(key.to_owned(), flight.clone());
                    flight
                }
            }
        };
        let mut loaded_here = false;
        let answer = flight
            .get_or_init(|| {
                loaded_here = true;
                load
            })
            .await
            .clone();
        let mut under_way = self.lock();
        if under_way.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            under_way.remove(key);
        }
        (answer, loaded_here)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<OnceCell<T>>>> {
        self.under_way.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no flight is under way.
    pub fn is_idle(&self) -> bool {
        self.lock().is_empty()
    }
}
