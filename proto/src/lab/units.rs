//! Quantities written with units in the lab file: memory, rates, durations,
//! loss. Each parser returns a message fit for a diagnostic on failure.

use std::time::Duration;

/// Splits `"1.5GiB"` into `("1.5", "GiB")`.
fn split_number(text: &str) -> (&str, &str) {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    (&t[..end], t[end..].trim())
}

/// `number * scale` as an integer, if the number is well formed and the
/// product is a whole, non-negative value that fits.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    match number.split_once('.') {
        None => number.parse::<u64>().ok()?.checked_mul(scale),
        Some((whole, frac)) => {
            // Exact decimal arithmetic: "1.5" GiB is 1536 MiB, not 1535.99.
            let digits = frac.len() as u32;
            if digits > 9 || frac.contains('.') {
                return None;
            }
            let denom = 10u64.pow(digits);
            let w = whole.parse::<u64>().ok()?.checked_mul(scale)?;
            let f = frac.parse::<u64>().ok()?.checked_mul(scale)?;
            (f % denom == 0).then(|| w.checked_add(f / denom))?
        }
    }
}

/// A size in MiB, the one rule for every file that states one (lab files,
/// hosts files, image recipes): a plain number is MiB; `M`/`MiB`, `G`/`GiB`,
/// `T`/`TiB` in any case; decimals only where the result is whole MiB.
/// `what` names the quantity in the message (`memory`, `size`).
pub fn parse_size_mib(what: &str, text: &str) -> Result<u64, String> {
    let (n, unit) = split_number(text);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mib" => 1,
        "g" | "gib" => 1024,
        "t" | "tib" => 1024 * 1024,
        "mb" | "gb" | "tb" | "kb" | "k" | "kib" => {
            return Err(format!(
                "{what} \"{text}\" uses unit \"{unit}\"; write MiB or GiB (e.g. 512MiB, 2GiB)"
            ))
        }
        _ => {
            return Err(format!(
                "{what} \"{text}\" is not a size like 512MiB or 2GiB"
            ))
        }
    };
    scaled(n, scale).ok_or_else(|| format!("{what} \"{text}\" is not a whole number of MiB"))
}

/// A size as Docker (and so containerlab) writes it, in binary units:
/// `512Mb`, `1Gb`, `1.5g`, `2GiB`; plain numbers are bytes; rounded up to
/// whole MiB. Only for importing a containerlab topology: labspan's own
/// files use [`parse_size_mib`], whose units are not Docker's.
pub fn docker_size_mib(text: &str) -> Option<u64> {
    let t = text.to_ascii_lowercase();
    let (num, unit) = split_number(&t);
    let num: f64 = num.parse().ok()?;
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let bytes = match unit {
        "" => num,
        "k" => num * 1024.0,
        "m" => num * 1024.0 * 1024.0,
        "g" => num * 1024.0 * 1024.0 * 1024.0,
        "t" => num * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let mib = bytes / (1024.0 * 1024.0);
    (0.0..1e12).contains(&mib).then(|| mib.ceil() as u64)
}

/// A node's memory, in MiB ([`parse_size_mib`]).
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    parse_size_mib("memory", text)
}

/// Rate: `kbit`, `Mbit`, `Gbit` (per second), in kbit/s.
pub fn parse_rate_kbit(text: &str) -> Result<u64, String> {
    let (n, unit) = split_number(text);
    let scale = match unit.to_ascii_lowercase().trim_end_matches("/s") {
        "kbit" => 1,
        "mbit" => 1000,
        "gbit" => 1_000_000,
        _ => {
            return Err(format!(
                "rate \"{text}\" is not a rate like 100Mbit (units: kbit, Mbit, Gbit)"
            ))
        }
    };
    scaled(n, scale).ok_or_else(|| format!("rate \"{text}\" is not a whole number of kbit"))
}

/// Duration: `us`, `ms`, `s`, in microseconds.
pub fn parse_duration_us(what: &str, text: &str) -> Result<u64, String> {
    let (n, unit) = split_number(text);
    let scale = match unit {
        "us" | "µs" => 1,
        "ms" => 1000,
        "s" => 1_000_000,
        _ => {
            return Err(format!(
                "{what} \"{text}\" is not a duration like 10ms (units: us, ms, s)"
            ))
        }
    };
    scaled(n, scale)
        .ok_or_else(|| format!("{what} \"{text}\" is not a whole number of microseconds"))
}

/// The longest a check may be retried: an hour.
pub const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(3600);

/// A check's `timeout`: a duration (`us`, `ms`, `s`) above zero and at
/// most [`MAX_CHECK_TIMEOUT`].
pub fn parse_check_timeout(text: &str) -> Result<Duration, String> {
    let us = parse_duration_us("timeout", text)?;
    let timeout = Duration::from_micros(us);
    if timeout.is_zero() || timeout > MAX_CHECK_TIMEOUT {
        return Err(format!(
            "timeout \"{text}\" is out of range: a check may be retried for more than 0 s and at most 3600 s"
        ));
    }
    Ok(timeout)
}

/// The shortest `resilience.checkpoint_every`: a checkpoint pauses the
/// lab for a moment and writes its RAM, so taking one more often than
/// this would keep the lab busy saving.
pub const MIN_CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// `resilience.checkpoint_every`: whole seconds, minutes or hours (`30s`,
/// `15m`, `1h`), at least [`MIN_CHECKPOINT_EVERY`].
pub fn parse_checkpoint_every(text: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(text);
    let scale = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "checkpoint_every \"{text}\" is not a period like 15m (units: s, m, h)"
            ))
        }
    };
    let secs = scaled(n, scale)
        .ok_or_else(|| format!("checkpoint_every \"{text}\" is not a whole number of seconds"))?;
    let every = Duration::from_secs(secs);
    if every < MIN_CHECKPOINT_EVERY {
        return Err(format!(
            "checkpoint_every \"{text}\" is too short: at least {} s between automatic checkpoints",
            MIN_CHECKPOINT_EVERY.as_secs()
        ));
    }
    Ok(every)
}

/// Loss in percent, with or without `%`, 0..=100.
pub fn parse_loss_percent(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    let ok = !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.');
    match n.parse::<f64>() {
        Ok(v) if ok && (0.0..=100.0).contains(&v) => Ok(v),
        Ok(_) if ok => Err(format!("loss \"{text}\" is out of range 0%..=100%")),
        _ => Err(format!("loss \"{text}\" is not a percentage like 0.5%")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_periods() {
        assert_eq!(parse_checkpoint_every("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_checkpoint_every("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_checkpoint_every("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_checkpoint_every("10s"), Ok(MIN_CHECKPOINT_EVERY));
        let short = parse_checkpoint_every("5s").unwrap_err();
        assert!(short.contains("too short"), "{short}");
        let unit = parse_checkpoint_every("15").unwrap_err();
        assert!(unit.contains("units: s, m, h"), "{unit}");
        assert!(parse_checkpoint_every("500ms").is_err());
        assert!(parse_checkpoint_every("1.5s").is_err());
    }

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory_mib("256"), Ok(256));
        assert_eq!(parse_memory_mib("256MiB"), Ok(256));
        assert_eq!(parse_memory_mib("2GiB"), Ok(2048));
        assert_eq!(parse_memory_mib("1.5GiB"), Ok(1536));
        assert_eq!(parse_memory_mib("2 G"), Ok(2048));
        assert!(parse_memory_mib("1.5MiB").is_err());
        assert!(parse_memory_mib("512MB").is_err());
        assert!(parse_memory_mib("lots").is_err());
        assert!(parse_memory_mib("99999999999999999999GiB").is_err());
    }

    #[test]
    fn rate_delay_loss() {
        assert_eq!(parse_rate_kbit("100Mbit"), Ok(100_000));
        assert_eq!(parse_rate_kbit("1Gbit"), Ok(1_000_000));
        assert_eq!(parse_rate_kbit("64kbit"), Ok(64));
        assert!(parse_rate_kbit("100MB").is_err());
        assert_eq!(parse_duration_us("delay", "10ms"), Ok(10_000));
        assert_eq!(parse_duration_us("delay", "0.5ms"), Ok(500));
        assert_eq!(parse_duration_us("delay", "2s"), Ok(2_000_000));
        assert!(parse_duration_us("delay", "10").is_err());
        assert_eq!(parse_loss_percent("0.5%"), Ok(0.5));
        assert_eq!(parse_loss_percent("3"), Ok(3.0));
        assert!(parse_loss_percent("101%").is_err());
        assert!(parse_loss_percent("NaN").is_err());
        assert!(parse_loss_percent("-1%").is_err());
    }
}
