//! Time limits on I/O steps, for the client connections (`crate::listener`)
//! and the upstream ones (`crate::upstream`) alike.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// The time limit on an I/O step ran out.
#[derive(Debug, thiserror::Error)]
#[error("timed out")]
pub struct TimedOut;

/// `io`'s output, or [`TimedOut`] when it has not finished `limit` after it
/// first had to wait. Unlike `tokio::time::timeout`, the timer (a clock read
/// and a handle to the runtime) is only made when `io` waits: most writes,
/// and reads of bytes already buffered, finish at once.
pub async fn within<F: Future>(limit: Duration, io: F) -> Result<F::Output, TimedOut> {
    let mut io = pin!(io);
    let mut timer = pin!(None::<tokio::time::Sleep>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = io.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep(limit)));
        }
        match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(TimedOut)),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_only_once_the_step_waits() {
        assert_eq!(within(Duration::ZERO, async { 7 }).await.ok(), Some(7));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert!(within(Duration::from_secs(1), slow).await.is_err());
        let in_time = tokio::time::sleep(Duration::from_secs(1));
        assert!(within(Duration::from_secs(5), in_time).await.is_ok());
    }
}
