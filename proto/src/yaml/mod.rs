//! The one way labspan reads a YAML file that a person wrote (a lab file,
//! a hosts file): marked-yaml keeps each value's position, and the walk
//! goes on after a problem, so that every problem in the file is reported
//! at once with its file, line, column and object path ([`Sink`]).
//! Serde would stop at the first.

mod diagnostic;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoadError as YamlError, LoaderOptions, Node as Yaml};

pub use diagnostic::{Diagnostic, Diagnostics, Pos, Sink};

use crate::suggest::closest;

/// What a file's top level must be, in the words of its errors.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The file, as a message names it ("the lab file").
    pub what: &'static str,
    /// How such a file starts, said when it is not a mapping.
    pub start: &'static str,
    /// What to write instead of YAML anchors.
    pub no_anchors: &'static str,
}

/// Loads the YAML tree of a file whose top level is `shape`. A duplicate key is reported, then the file is read
/// again keeping the last value, so the rest of the file is still checked.
pub fn load(sink: &mut Sink, text: &str, shape: Shape) -> Option<Yaml> {
    if is_blank(text) {
        let first = Pos { line: 1, column: 1 };
        let message = format!("{} is empty", shape.what);
        sink.error(first, "", message, Some(shape.start.to_string()));
        return None;
    }
    let strict = options().error_on_duplicate_keys(true);
    let err = match yaml_guarded(text, strict) {
        Ok(root) => return Some(root),
        Err(e) => e,
    };
    let (pos, message, help) = match &err {
        YamlError::DuplicateKey(d) => {
            let permissive = yaml_guarded(text, options()).ok();
            let (first, again) = (Pos::of_span(d.prev_key.span()), Pos::of_span(d.key.span()));
            let path = permissive
                .as_ref()
                .and_then(|r| path_of_key(r, "", first))
                .unwrap_or_default();
            let what = if path == "nodes" { "node name" } else { "key" };
            let msg = format!(
                "duplicate {what} \"{}\" (first at line {}, column {})",
                d.key.as_str(),
                first.line,
                first.column
            );
            sink.error(
                again,
                &path,
                msg,
                Some("remove or rename one of them".into()),
            );
            return permissive;
        }
        YamlError::ScanError(m, e) => (
            Pos::of_marker(m),
            format!("YAML syntax error: {}", e.info()),
            None,
        ),
        YamlError::TopLevelMustBeMapping(m) | YamlError::TopLevelMustBeSequence(m) => (
            Pos::of_marker(m),
            format!("{} must be a YAML mapping", shape.what),
            Some(shape.start.to_string()),
        ),
        YamlError::UnexpectedAnchor(m) => (
            Pos::of_marker(m),
            "YAML anchors and aliases are not supported".into(),
            Some(shape.no_anchors.to_string()),
        ),
        YamlError::MappingKeyMustBeScalar(m) => (
            Pos::of_marker(m),
            "mapping keys must be plain values".into(),
            None,
        ),
        YamlError::UnexpectedTag(m) => (
            Pos::of_marker(m),
            "YAML tags (!tag) are not supported".into(),
            None,
        ),
    };
    sink.error(pos, "", message, help);
    None
}

/// Loader options: quoted scalars stay strings, so `""` is not "nothing".
fn options() -> LoaderOptions {
    LoaderOptions::default().prevent_coercion(true)
}

/// marked-yaml asserts on some inputs it considers impossible (for example
/// an empty document); a lab file must never crash labspan, so such input is
/// reported as a syntax error instead.
fn yaml_guarded(text: &str, options: LoaderOptions) -> Result<Yaml, YamlError> {
    if is_blank(text) {
        return Err(YamlError::TopLevelMustBeMapping(marked_yaml::Marker::new(
            0, 0, 1, 1,
        )));
    }
    marked_yaml::parse_yaml_with_options(0, text, options)
}

/// Whether `text` holds no YAML value: only blank lines, comments and
/// document markers.
fn is_blank(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// The path of the mapping key that starts at `at`.
fn path_of_key(node: &Yaml, path: &str, at: Pos) -> Option<String> {
    match node {
        Yaml::Scalar(_) => None,
        Yaml::Mapping(m) => m.iter().find_map(|(k, v)| {
            let child = if path.is_empty() {
                k.as_str().to_string()
            } else {
                format!("{path}.{}", k.as_str())
            };
            if Pos::of_span(k.span()) == at {
                Some(path.to_string())
            } else {
                path_of_key(v, &child, at)
            }
        }),
        Yaml::Sequence(s) => s
            .iter()
            .enumerate()
            .find_map(|(i, v)| path_of_key(v, &format!("{path}[{i}]"), at)),
    }
}

/// Joins an object path and a key.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How a YAML node's kind reads in a message.
pub fn kind(n: &Yaml) -> &'static str {
    match n {
        Yaml::Scalar(s) if is_null_scalar(s) => "nothing",
        Yaml::Scalar(_) => "a scalar",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Sequence(_) => "a list",
    }
}

/// `key:` with no value, `~` or `null` (unquoted).
pub fn is_null_scalar(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// True for an empty value, which means "all defaults" where a mapping is expected.
pub fn is_null(n: &Yaml) -> bool {
    matches!(n, Yaml::Scalar(s) if is_null_scalar(s))
}

/// Reports every key of `map` not in `allowed`, with a "did you mean".
pub fn check_keys(sink: &mut Sink, map: &MarkedMappingNode, path: &str, allowed: &[&str]) {
    for key in map.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        let help = match closest(key.as_str(), allowed.iter().copied()) {
            Some(s) => format!("did you mean \"{s}\"?"),
            None => format!("expected one of: {}", allowed.join(", ")),
        };
        let msg = format!("unknown key \"{}\"", key.as_str());
        sink.error(Pos::of_span(key.span()), path, msg, Some(help));
    }
}

/// `n` as a mapping, or an error saying what was expected.
pub fn want_map<'n>(
    sink: &mut Sink,
    n: &'n Yaml,
    path: &str,
    what: &str,
) -> Option<&'n MarkedMappingNode> {
    want(sink, n, path, what, Yaml::as_mapping(n))
}

/// `n` as a list, or an error saying what was expected.
pub fn want_seq<'n>(
    sink: &mut Sink,
    n: &'n Yaml,
    path: &str,
    what: &str,
) -> Option<&'n MarkedSequenceNode> {
    want(sink, n, path, what, Yaml::as_sequence(n))
}

/// `n` as a non-null scalar, or an error saying what was expected.
pub fn want_str<'n>(sink: &mut Sink, n: &'n Yaml, path: &str, what: &str) -> Option<&'n str> {
    let text = n.as_scalar().filter(|s| !is_null_scalar(s));
    want(sink, n, path, what, text.map(|s| s.as_str()))
}

/// `got`, or (when `n` was not of the kind wanted) an error at `n` saying
/// what was expected and what was found.
fn want<T>(sink: &mut Sink, n: &Yaml, path: &str, what: &str, got: Option<T>) -> Option<T> {
    if got.is_none() {
        let found = format!("expected {what}, found {}", kind(n));
        sink.error(Pos::of(n), path, found, None);
    }
    got
}

/// One string or a list of strings, with each item's position.
pub fn str_or_list<'n>(
    sink: &mut Sink,
    n: &'n Yaml,
    path: &str,
    what: &str,
) -> Vec<(&'n str, Pos, String)> {
    match n {
        Yaml::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let p = format!("{path}[{i}]");
                want_str(sink, item, &p, what).map(|s| (s, Pos::of(item), p))
            })
            .collect(),
        _ => want_str(sink, n, path, what)
            .map(|s| vec![(s, Pos::of(n), path.to_string())])
            .unwrap_or_default(),
    }
}

/// Reports a required key that is missing from `map`.
pub fn missing(sink: &mut Sink, map: &MarkedMappingNode, path: &str, key: &str, example: &str) {
    let msg = format!("missing key \"{key}\"");
    sink.error(
        Pos::of_span(map.span()),
        path,
        msg,
        Some(format!("add it, e.g. {example}")),
    );
}
