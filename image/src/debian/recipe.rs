//! A recipe file: what it may hold, read the way a lab file is (every
//! problem at once, each at its line and key).

use std::fs;
use std::path::Path;

use labspan_proto::lab::units::parse_size_mib;
use labspan_proto::yaml::{
    self, check_keys, missing, want_map, want_seq, want_str, Diagnostics, Pos, Shape, Sink,
};
use marked_yaml::Node;

use crate::{check_name, io_err, ImageError};

/// A recipe file: `{name: debian-sip, suite: bookworm, packages: [...], size: 2GiB}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The image's name in the store (`image:` in lab files).
    pub name: String,
    /// Debian suite [default: bookworm].
    pub suite: String,
    /// Packages added to the base set (kernel, systemd, qemu-guest-agent, iproute2, ping, udev).
    pub packages: Vec<String>,
    /// Filesystem size: `2GiB`, `1500MiB` [default: 2GiB].
    pub size: String,
    /// Units left disabled at boot: services that need the lab's
    /// configuration first (the lab's `exec` starts them).
    pub disable: Vec<String>,
    /// Debian mirror [default: the host's apt source for the suite].
    pub mirror: Option<String>,
}

/// The keys a recipe may have.
const RECIPE_KEYS: &[&str] = &["name", "suite", "packages", "size", "disable", "mirror"];

/// What a recipe's top level must be.
const RECIPE_FILE: Shape = Shape {
    what: "the image recipe",
    start: "start with name: my-image, then packages:",
    no_anchors: "write each value out",
};

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<(Recipe, Vec<u8>), ImageError> {
        let bytes = fs::read(path).map_err(io_err("reading the image recipe", path))?;
        let bad = |detail: String| ImageError::Recipe {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| bad(e.to_string()))?;
        let recipe = Recipe::parse(&path.display().to_string(), text)
            .map_err(|problems| bad(format!("\n{problems}")))?;
        Ok((recipe, bytes))
    }

    /// Parses and checks a recipe's text (`file` names it in problems),
    /// the way a lab file is read: every problem at once, each with its
    /// line, column and key.
    pub fn parse(file: &str, text: &str) -> Result<Recipe, Diagnostics> {
        let mut sink = Sink::new(file);
        let recipe =
            yaml::load(&mut sink, text, RECIPE_FILE).and_then(|root| read(&mut sink, &root));
        match recipe {
            Some(recipe) if sink.is_clean() => Ok(recipe),
            _ => Err(sink.finish()),
        }
    }
}

fn read(sink: &mut Sink, root: &Node) -> Option<Recipe> {
    let top = want_map(sink, root, "", "a mapping with name, packages, ...")?;
    check_keys(sink, top, "", RECIPE_KEYS);
    let name = match top.get_node("name") {
        Some(n) => want_str(sink, n, "name", "the image's name").filter(|name| {
            let problem = check_name(name).err();
            if let Some(e) = &problem {
                sink.error(Pos::of(n), "name", e.to_string(), None);
            }
            problem.is_none()
        }),
        None => {
            missing(sink, top, "", "name", "name: debian-sip");
            None
        }
    };
    let suite = top.get_node("suite").map_or(Some("bookworm"), |n| {
        plain(sink, n, "suite", "a Debian suite name")
    });
    let size = top.get_node("size").map_or(Some("2GiB"), |n| {
        let text = want_str(sink, n, "size", "a size like 2GiB")?;
        match size_mib(text) {
            Ok(_) => Some(text),
            Err(why) => {
                sink.error(Pos::of(n), "size", why, None);
                None
            }
        }
    });
    let packages = names(sink, top.get_node("packages"), "packages", "a package name");
    let disable = names(sink, top.get_node("disable"), "disable", "a unit name");
    let mirror = top
        .get_node("mirror")
        .map(|n| want_str(sink, n, "mirror", "a Debian mirror's URL"));
    Some(Recipe {
        name: name?.to_string(),
        suite: suite?.to_string(),
        packages: packages?,
        size: size?.to_string(),
        disable: disable?,
        mirror: match mirror {
            Some(url) => Some(url?.to_string()),
            None => None,
        },
    })
}

/// A name apt or systemd takes as one word (never an option).
fn plain<'n>(sink: &mut Sink, n: &'n Node, path: &str, what: &str) -> Option<&'n str> {
    let text = want_str(sink, n, path, what)?;
    let ok = !text.starts_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.:_@".contains(&b));
    if !ok {
        sink.error(Pos::of(n), path, format!("\"{text}\" is not {what}"), None);
        return None;
    }
    Some(text)
}

/// A list of [`plain`] names, empty when the key is absent.
fn names(sink: &mut Sink, n: Option<&Node>, path: &str, what: &str) -> Option<Vec<String>> {
    let Some(n) = n else {
        return Some(Vec::new());
    };
    let items = want_seq(sink, n, path, &format!("a list of {what}s"))?;
    let mut out = Vec::new();
    let mut all = true;
    for (i, item) in items.iter().enumerate() {
        match plain(sink, item, &format!("{path}[{i}]"), what) {
            Some(name) => out.push(name.to_string()),
            None => all = false,
        }
    }
    all.then_some(out)
}

/// A recipe's disk size in MiB: the one size rule
/// ([`parse_size_mib`]), within what debootstrap and a guest need.
pub fn size_mib(s: &str) -> Result<u64, String> {
    let mib = parse_size_mib("size", s)?;
    if !(256..=65536).contains(&mib) {
        return Err(format!("size \"{s}\" is out of range (256MiB ..= 64GiB)"));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_reads_with_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.yaml");
        fs::write(&p, "name: debian-sip\npackages: [bird2, bind9]\n").expect("write");
        let (r, _) = Recipe::load(&p).expect("load");
        assert_eq!(r.suite, "bookworm");
        assert_eq!(r.size, "2GiB");
        assert_eq!(r.packages, vec!["bird2", "bind9"]);

        fs::write(&p, "name: x\npackges: [bird2]\n").expect("write");
        let err = Recipe::load(&p).expect_err("unknown key").to_string();
        assert!(err.contains("packges"), "{err}");
        assert!(err.contains("r.yaml"), "{err}");

        fs::write(&p, "name: x\npackages: [\"--force-yes\"]\n").expect("write");
        assert!(Recipe::load(&p).is_err());
    }

    /// As a lab file: every problem at once, each at its line and key.
    #[test]
    fn every_recipe_problem_is_reported_with_its_place() {
        let text = "name: x\npackges: [bird2]\nsize: 10MiB\npackages: [ok, \"--force-yes\"]\n";
        let problems = Recipe::parse("r.yaml", text).expect_err("three problems");
        let lines: Vec<String> = problems
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.path, d.message))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("2: unknown key \"packges\""),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("3:size size \"10MiB\" is out of range"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("4:packages[1] \"--force-yes\""),
            "{lines:?}"
        );
        assert!(Recipe::parse("r.yaml", "").is_err());
    }

    #[test]
    fn the_demo_recipe_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../demos/sip/image.yaml");
        let (recipe, _) = Recipe::load(&path).expect("demos/sip/image.yaml");
        assert_eq!(recipe.name, "debian-sip");
        assert!(
            recipe.packages.iter().any(|p| p == "kamailio"),
            "{recipe:?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size_mib("2GiB"), Ok(2048));
        assert_eq!(size_mib("1.5GiB"), Ok(1536));
        assert_eq!(size_mib("1500M"), Ok(1500));
        assert_eq!(size_mib("1500"), Ok(1500));
        assert_eq!(size_mib("2gib"), Ok(2048));
        assert!(size_mib("2TB").is_err());
        assert!(size_mib("10MiB").is_err());
    }
}
