//! The Debian mirror a recipe without `mirror:` is built from: the one the
//! host's apt uses for the suite.

use std::fs;
use std::path::Path;

use crate::ImageError;

/// The mirror the host's apt uses for `suite` (deb822 sources first, then
/// the one-line format).
pub fn host_mirror(suite: &str) -> Result<String, ImageError> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = fs::read_to_string(deb822) {
        if let Some(m) = mirror_from_deb822(&text, suite) {
            return Ok(m);
        }
    }
    let list = Path::new("/etc/apt/sources.list");
    if let Ok(text) = fs::read_to_string(list) {
        if let Some(m) = mirror_from_list(&text, suite) {
            return Ok(m);
        }
    }
    Err(ImageError::Resolve {
        detail: format!(
            "no apt source for suite {suite} in {} or {}: add `mirror: URL` to the recipe",
            deb822.display(),
            list.display()
        ),
    })
}

/// The first `URIs:` of a stanza whose `Suites:` has `suite`.
fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        let suites = field("Suites:")?;
        if !suites.split_whitespace().any(|s| s == suite) {
            return None;
        }
        field("URIs:")?
            .split_whitespace()
            .next()
            .map(str::to_string)
    })
}

/// The URI of the first `deb URI SUITE ...` line.
fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace().filter(|w| !w.starts_with('['));
        (w.next()? == "deb").then_some(())?;
        let uri = w.next()?;
        (w.next()? == suite).then(|| uri.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_sources() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_from_deb822(deb822, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(mirror_from_deb822(deb822, "trixie"), None);
        let list = "# x\ndeb [arch=amd64] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_list(list, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
    }
}
