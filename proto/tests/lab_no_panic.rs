//! The parser never panics, whatever it is given: arbitrary bytes, mutated
//! demo labs, and YAML features the lab file does not use. This runs in the
//! normal test suite; `fuzz/` has the coverage-guided (cargo fuzz) target.

use labspan_proto::lab::parse;
use proptest::collection::vec;
use proptest::prelude::*;

const DEMOS: [&str; 3] = [
    include_str!("../../demos/ping/lab.yaml"),
    include_str!("../../demos/ospf-triangle/lab.yaml"),
    include_str!("../../demos/sip/lab.yaml"),
];

/// Parses and checks that a rejection always says something.
fn parse_any(text: &str) {
    if let Err(d) = parse("fuzz.yaml", text) {
        assert!(!d.is_empty(), "rejected without a diagnostic:\n{text}");
    }
}

#[test]
fn odd_yaml_is_rejected_not_panicked_on() {
    for text in [
        "",
        "---",
        "---\n...\n",
        "# only a comment",
        "\u{feff}",
        "a: 1\n---\nb: 2\n",
        "name: t\nnodes: {a: &x {image: tiny}, b: *x}\n",
        "name: t\nnodes: {a: *x}\n",
        "name: t\nnodes: !!map {a: {image: tiny}}\n",
        "? [a, b]\n: c\n",
        "name: [t]\nnodes: {? {a: 1} : 2}\n",
        "[",
        "{",
        "\"",
        "name: t\nnodes: {a: {image: tiny, nics: {eth0: {ip: 7}}}}\nlinks: [[a:eth0, a:eth0]]\n",
        "name: t\nnodes: {a: {image: tiny}}\nlinks: [{}]\nlans: {x: []}\nplacement: {together: [[]], spread: [[]]}\nverify: [{}, {ping: {}}, {exec: {}}]\n",
        "name: t\nnodes: {a: {image: tiny}}\nplacement: {together: [[a, zz], [zz, a]], spread: [[zz, zz, a, a]]}\n",
    ] {
        parse_any(text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        parse_any(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_demos_never_panic(
        demo in 0usize..DEMOS.len(),
        edits in vec((any::<prop::sample::Index>(), 0usize..4, any::<char>()), 1..8),
    ) {
        let mut text: Vec<char> = DEMOS[demo].chars().collect();
        for (at, kind, c) in edits {
            let i = at.index(text.len() + 1);
            match kind {
                0 if i < text.len() => { text.remove(i); }
                1 if i < text.len() => text[i] = c,
                2 => text.insert(i, c),
                _ => text.insert(i, [':', '-', '[', '{', '\n', ' ', ','][usize::from(c as u8) % 7]),
            }
        }
        parse_any(&text.into_iter().collect::<String>());
    }
}
