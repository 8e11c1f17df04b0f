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
        let mut wait = self.start();
        loop {
            if let Some(found) = check().await {
                return Some(found);
            }
            if !wait.pause().await {
                return None;
            }
        }
    }

    /// The same wait for a loop that keeps its own state from one check to
    /// the next (a `&mut` QMP session, a count of attempts, the last answer),
    /// which a closure given to [`Poll::until`] cannot borrow: check, then
    /// `if !wait.pause().await` stop, the check just made being the last.
    pub fn start(self) -> Waiting {
        Waiting {
            every: self.every,
            deadline: Instant::now() + self.within,
        }
    }
}

/// A [`Poll`] under way: its pauses and its deadline.
#[derive(Debug)]
pub struct Waiting {
    every: Duration,
    deadline: Instant,
}

impl Waiting {
    /// Pauses until the next check (`every`, or less if the deadline comes
    /// first) and says true; says false at once when the deadline has passed.
    pub async fn pause(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.every.min(self.deadline - now)).await;
        true
    }

    /// How long until the deadline (zero once it has passed).
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
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

    #[tokio::test(start_paused = true)]
    async fn a_started_wait_pauses_every_interval_then_stops_at_the_deadline() {
        let start = Instant::now();
        let mut wait = Poll::new(Duration::from_millis(400), Duration::from_secs(1)).start();
        let mut pauses = 0;
        while wait.pause().await {
            pauses += 1;
        }
        // Pauses end at 400 ms, 800 ms and the 1 s deadline.
        assert_eq!(pauses, 3);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(wait.left(), Duration::ZERO);
    }
}
