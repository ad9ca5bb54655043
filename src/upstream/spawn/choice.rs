//! Which children to stop: to make room, or because they are idle.

/// One child as the stop policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Requests in flight plus streams open.
    pub busy: usize,
    /// Milliseconds since the supervisor started, at the last lease's end.
    pub last_used: u64,
    /// Accepting connections (neither starting nor on its way out).
    pub running: bool,
}

impl Usage {
    fn stoppable(&self) -> bool {
        self.running && self.busy == 0
    }
}

/// The child to stop to make room: the least recently used of those with no
/// request and no stream; none when all are busy.
pub fn least_recently_used<K>(children: impl Iterator<Item = (K, Usage)>) -> Option<K> {
    children
        .filter(|(_, usage)| usage.stoppable())
        .min_by_key(|(_, usage)| usage.last_used)
        .map(|(key, _)| key)
}

/// Children unused for `idle_ms` at `now`.
pub fn idle<K>(children: impl Iterator<Item = (K, Usage)>, now: u64, idle_ms: u64) -> Vec<K> {
    children
        .filter(|(_, usage)| usage.stoppable() && now.saturating_sub(usage.last_used) >= idle_ms)
        .map(|(key, _)| key)
        .collect()
}
