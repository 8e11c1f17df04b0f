//! What the user reads when a file they wrote is wrong (a lab file, a hosts
//! file): one line per problem, with file, line, column, the object path
//! and, when we can guess it, a fix.

use std::fmt;

/// A place in the file, 1-based; `line == 0` means "the whole file".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Pos {
    /// Position of a YAML node (its first character), or the file start.
    pub fn of(node: &marked_yaml::Node) -> Pos {
        Self::of_span(node.span())
    }

    /// Position of the start of a span, or the file start if it has none.
    pub fn of_span(span: &marked_yaml::Span) -> Pos {
        span.start().map_or(Pos::default(), Pos::of_marker)
    }

    /// Position of a marker.
    pub fn of_marker(m: &marked_yaml::Marker) -> Pos {
        Pos {
            line: m.line(),
            column: m.column(),
        }
    }
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Display name of the file, as given to `parse`.
    pub file: String,
    /// 1-based line (0 when the problem is about the whole file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Object path, e.g. `nodes.r1.nics.eth9`; empty for the file itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when we can tell.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a lab file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one file while it is being read.
pub struct Sink<'a> {
    file: &'a str,
    found: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    /// An empty sink for `file` (its display name).
    pub fn new(file: &'a str) -> Self {
        Sink {
            file,
            found: Vec::new(),
        }
    }

    /// Records a problem at `pos` on the object at `path`.
    pub fn error(&mut self, pos: Pos, path: &str, message: String, help: Option<String>) {
        self.found.push(Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message,
            help,
        });
    }

    /// True when nothing was recorded yet.
    pub fn is_clean(&self) -> bool {
        self.found.is_empty()
    }

    /// The problems in file order (stable for problems at the same place).
    pub fn finish(mut self) -> Diagnostics {
        self.found.sort_by_key(|d| (d.line, d.column));
        Diagnostics(self.found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_position_path_and_help() {
        let d = Diagnostic {
            file: "lab.yaml".into(),
            line: 12,
            column: 7,
            path: "nodes.r1.nics.eth9".into(),
            message: "unknown key \"mtuu\"".into(),
            help: Some("did you mean \"mtu\"?".into()),
        };
        assert_eq!(
            d.to_string(),
            "lab.yaml:12:7: nodes.r1.nics.eth9: unknown key \"mtuu\"\n  help: did you mean \"mtu\"?"
        );
    }
}
