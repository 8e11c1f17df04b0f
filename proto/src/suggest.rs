//! "Did you mean": the one place that turns a misspelt name (a lab key, a
//! lab, a node, a NIC) into a suggestion or the list of names that exist.

/// Names listed at most when none is close enough to suggest.
const LIST_LIMIT: usize = 12;

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if close enough to be a likely typo.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    // Inputs this long are not typos of short keys; skip the quadratic work.
    if word.len() > 64 {
        return None;
    }
    let len = word.chars().count();
    let limit = (len / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        // A one-letter name is "close" to every other one-letter name: no help.
        .filter(|(d, _)| *d <= limit && *d < len)
        .min()
        .map(|(_, c)| c)
}

/// What to append to "there is no `word`": `; did you mean "x"?` when a
/// known name is close, else the known names (`what` is their plural,
/// "deployed labs", "its NICs").
pub fn hint<'c>(
    word: &str,
    known: impl IntoIterator<Item = &'c str> + Clone,
    what: &str,
) -> String {
    if let Some(guess) = closest(word, known.clone()) {
        return format!("; did you mean \"{guess}\"?");
    }
    let names: Vec<&str> = known.into_iter().collect();
    match names.len() {
        0 => format!(" (there are no {what})"),
        n if n <= LIST_LIMIT => format!(" ({what}: {})", names.join(", ")),
        n => format!(
            " ({what}: {}, and {} more)",
            names[..LIST_LIMIT].join(", "),
            n - LIST_LIMIT
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(closest("mtuu", ["ip", "mtu"]), Some("mtu"));
        assert_eq!(
            closest("memroy", ["image", "memory", "cpus"]),
            Some("memory")
        );
        assert_eq!(closest("zzz", ["ip", "mtu"]), None);
    }

    #[test]
    fn hint_suggests_or_lists() {
        assert_eq!(
            hint("pnig", ["ping", "sip"], "labs"),
            "; did you mean \"ping\"?"
        );
        assert_eq!(hint("zzz", ["ping", "sip"], "labs"), " (labs: ping, sip)");
        assert_eq!(hint("zzz", [], "labs"), " (there are no labs)");
        let many: Vec<String> = (0..20).map(|i| format!("node{i:02}")).collect();
        let h = hint("x", many.iter().map(String::as_str), "nodes");
        assert!(h.ends_with(", and 8 more)"), "{h}");
    }
}
