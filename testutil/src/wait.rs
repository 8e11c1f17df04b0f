//! Waiting for a condition in a test. The deadline bounds how long a broken
//! test hangs; it is not a timing assertion. Policy: the first check runs at
//! once, then after 50 ms, the pause doubling up to 1 s, until the deadline
//! has passed; then the test fails naming what it waited for.

use std::fmt;
use std::future::Future;
use std::time::Duration;

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long a check started near the deadline may still run.
pub const LAST_CHECK: Duration = Duration::from_secs(10);

/// Calls `check` until it returns `Some`, and returns that value; panics
/// with "timed out after DEADLINE waiting for WHAT" when `deadline` passes.
/// `what` is shown only on failure: [`described`] builds one from a closure,
/// for a message that says what was last seen.
pub fn wait_until<T>(
    what: impl fmt::Display,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let end = std::time::Instant::now() + deadline;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        let now = std::time::Instant::now();
        if now >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause.min(end - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`wait_until`] for async checks, on tokio's clock (so a test with paused
/// time waits in virtual time). A check that does not return (a request to
/// a peer that never answers) fails the wait too, once the deadline and
/// [`LAST_CHECK`] have both passed: a wait never hangs.
pub async fn wait_until_async<T, Fut>(
    what: impl fmt::Display,
    deadline: Duration,
    mut check: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let begin = tokio::time::Instant::now();
    let end = begin + deadline;
    let mut pause = FIRST_PAUSE;
    loop {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout_at(end.max(started + LAST_CHECK), check()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!(
                "timed out after {deadline:?} waiting for {what} (its last check, started {:?} in, had not returned)",
                started - begin
            ),
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause.min(end - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// A description computed when it is shown: `wait_until(described(|| ...))`
/// can name the state a failed wait last saw.
pub fn described<F: Fn() -> String>(f: F) -> impl fmt::Display {
    struct Described<F>(F);
    impl<F: Fn() -> String> fmt::Display for Described<F> {
        fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
            out.write_str(&(self.0)())
        }
    }
    Described(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_the_first_value_the_check_gives() {
        let calls = Cell::new(0);
        let v = wait_until("the third call", Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            (calls.get() == 3).then_some("third")
        });
        assert_eq!(v, "third");
        assert_eq!(calls.get(), 3);
    }

    #[test]
    #[should_panic(expected = "waiting for a condition that never holds")]
    fn fails_naming_what_it_waited_for() {
        wait_until(
            "a condition that never holds",
            Duration::from_millis(120),
            || None::<()>,
        );
    }

    #[test]
    #[should_panic(expected = "waiting for the last value seen: 7")]
    fn a_described_wait_names_what_it_last_saw() {
        let last = Cell::new(0);
        wait_until(
            described(|| format!("the last value seen: {}", last.get())),
            Duration::from_millis(120),
            || {
                last.set(7);
                None::<()>
            },
        );
    }

    #[tokio::test(start_paused = true)]
    async fn async_checks_wait_on_tokios_clock() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let v = wait_until_async("the fifth call", Duration::from_secs(60), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { (n == 5).then_some(n) }
        })
        .await;
        assert_eq!(v, 5);
        // 50 + 100 + 200 + 400 ms of virtual time: the stated policy.
        assert_eq!(start.elapsed(), Duration::from_millis(750));
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 10s waiting for nothing")]
    async fn async_wait_fails_at_its_deadline() {
        wait_until_async("nothing", Duration::from_secs(10), || async { None::<()> }).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(
        expected = "waiting for an answer (its last check, started 0ns in, had not returned)"
    )]
    async fn a_check_that_never_returns_fails_the_wait() {
        wait_until_async("an answer", Duration::from_secs(10), || {
            std::future::pending::<Option<()>>()
        })
        .await;
    }
}
