//! The one way the daemons and the command wait for something outside the
//! process (a QEMU to exit, agents to reconnect, an image to be listed):
//! check at once, then at a fixed interval, until a deadline. It lives in
//! this crate because every daemon and the command depend on it.
//!
//! The policy is fixed on purpose: no backoff and no jitter, because every
//! wait here is for a local or cluster event that a steady check catches,
//! and the deadline, not the number of tries, bounds it. (Retries of a
//! failed request that may succeed elsewhere, as image fetches, pause
//! longer after each attempt; they say so where they are.)

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A wait: checked at once, then every `every`, for at most `within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// Pause between checks.
    pub every: Duration,
    /// How long to keep checking.
    pub within: Duration,
}

impl Poll {
    /// A wait of at most `within`, checking every `every`.
    pub const fn new(every: Duration, within: Duration) -> Poll {
        Poll { every, within }
    }

    /// Checks until `check` gives `Some`: that value, or `None` once
    /// `within` has passed (checked one last time at the deadline).
    pub async fn until<T, F, Fut>(self, mut check: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + self.within;
        loop {
            if let Some(found) = check().await {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(self.every.min(deadline - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn checks_at_once_then_every_interval_until_found() {
        let mut calls = 0;
        let poll = Poll::new(Duration::from_millis(100), Duration::from_secs(5));
        let found = poll
            .until(|| {
                calls += 1;
                let n = calls;
                async move { (n == 3).then_some(n) }
            })
            .await;
        assert_eq!(found, Some(3));
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_after_a_last_check() {
        let mut calls = 0;
        let poll = Poll::new(Duration::from_millis(400), Duration::from_secs(1));
        let found: Option<()> = poll
            .until(|| {
                calls += 1;
                async { None }
            })
            .await;
        assert_eq!(found, None);
        // At 0, 400 and 800 ms, then the last one at the 1 s deadline.
        assert_eq!(calls, 4);
    }
}
