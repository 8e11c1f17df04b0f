//! The log of every labspan process (CLI, `coordinator run`, `agent run`):
//! on stderr, filtered by `LABSPAN_LOG` (default `warn`), colour only on a
//! terminal, and a warning that repeats is printed once per interval with
//! the count of those it stood for, so a host cut off for a minute does not
//! bury everything else in the log.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The variable that sets what is logged (`warn`, `info`, `labspan=debug`).
pub const ENV: &str = "LABSPAN_LOG";
/// One warning of a kind (one place in the code) per this interval.
const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Installs the process's log.
pub fn init() {
    let filter = EnvFilter::try_from_env(ENV).unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::stderr().is_terminal();
    let format = tracing_subscriber::fmt::format().with_ansi(ansi);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .event_format(Quieted {
            inner: format,
            repeats: Mutex::new(Repeats::new(REPEAT_INTERVAL)),
        })
        .init();
}

/// What to do with one warning.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Print it; `suppressed` like it were not printed since the last one.
    Print { suppressed: u64 },
    /// Count it, print nothing.
    Suppress,
}

/// Per kind of message: when one was last printed and how many were not since.
#[derive(Debug)]
pub struct Repeats<K> {
    interval: Duration,
    seen: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq> Repeats<K> {
    /// At most one message of a kind per `interval`.
    pub fn new(interval: Duration) -> Self {
        Repeats {
            interval,
            seen: HashMap::new(),
        }
    }

    /// Decides about a message of kind `key` arriving at `now`.
    pub fn admit(&mut self, key: K, now: Instant) -> Verdict {
        match self.seen.get_mut(&key) {
            Some((printed, suppressed)) if now.duration_since(*printed) < self.interval => {
                *suppressed += 1;
                Verdict::Suppress
            }
            Some((printed, suppressed)) => {
                let n = std::mem::take(suppressed);
                *printed = now;
                Verdict::Print { suppressed: n }
            }
            None => {
                self.seen.insert(key, (now, 0));
                Verdict::Print { suppressed: 0 }
            }
        }
    }
}

/// The standard format, with repeated warnings held back.
struct Quieted<F> {
    inner: F,
    repeats: Mutex<Repeats<Identifier>>,
}

impl<S, N, F> FormatEvent<S, N> for Quieted<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if *event.metadata().level() == Level::WARN {
            let verdict = self
                .repeats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .admit(event.metadata().callsite(), Instant::now());
            match verdict {
                Verdict::Suppress => return Ok(()),
                Verdict::Print { suppressed: 0 } => {}
                Verdict::Print { suppressed } => writeln!(
                    writer,
                    "({suppressed} more warnings like the next one in the last {} s were not printed)",
                    REPEAT_INTERVAL.as_secs()
                )?,
            }
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_printed_once_per_interval_with_a_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Repeats::new(s(10));
        assert_eq!(r.admit("a", t0), Verdict::Print { suppressed: 0 });
        for i in 1..=55 {
            assert_eq!(
                r.admit("a", t0 + Duration::from_millis(i * 100)),
                Verdict::Suppress
            );
        }
        // Another kind is not held back by the first.
        assert_eq!(r.admit("b", t0 + s(1)), Verdict::Print { suppressed: 0 });
        assert_eq!(r.admit("a", t0 + s(10)), Verdict::Print { suppressed: 55 });
        assert_eq!(r.admit("a", t0 + s(21)), Verdict::Print { suppressed: 0 });
    }
}
