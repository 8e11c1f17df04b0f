//! "Did you mean": the one place that turns a misspelt name (a lab key, a
//! lab, a node, a NIC) into a suggestion or the list of names that exist.

/// Names listed at most when none is close enough to suggest.
const LIST_LIMIT: usize = 12;

/// Edit distance where swapping two neighbouring letters is one edit
/// (optimal string alignment): `pnig` is one typo away from `ping`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        d[at(i, 0)] = i;
    }
    for j in 0..=b.len() {
        d[at(0, j)] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[at(i - 1, j)] + 1)
                .min(d[at(i, j - 1)] + 1)
                .min(d[at(i - 1, j - 1)] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[at(i - 2, j - 2)] + 1);
            }
            d[at(i, j)] = best;
        }
    }
    d[at(a.len(), b.len())]
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
