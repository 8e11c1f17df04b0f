//! `labspan validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use labspan_proto::lab::{self, LoadError};

use crate::InvalidInput;

/// Arguments of `labspan validate`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab files to check; every problem in every file is reported.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Runs `labspan validate`: `FILE: ok (...)` per valid file on stdout, every
/// problem of the others on stderr, exit status 2 if any file is invalid.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    for file in &args.files {
        // load_bundle also reads `files:` sources, so a missing one is caught now.
        match lab::load_bundle(file) {
            Ok(loaded) => {
                let lab = &loaded.bundle.lab;
                let segments = lab.links.len() + lab.lans.len();
                println!(
                    "{}: ok ({} nodes, {segments} segments)",
                    file.display(),
                    lab.nodes.len()
                );
            }
            Err(LoadError::Invalid(d)) => problems.push(d.to_string()),
            Err(e @ LoadError::Read { .. }) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    Err(anyhow::Error::new(InvalidInput(problems.join("\n"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../demos")
            .join(name)
            .join("lab.yaml")
    }

    #[test]
    fn valid_demos_pass() {
        let files = vec![demo("ping"), demo("ospf-triangle"), demo("sip")];
        assert!(matches!(run(Args { files }), Ok(code) if code == ExitCode::SUCCESS));
    }

    #[test]
    fn invalid_file_is_invalid_input_with_every_problem() {
        let dir = std::env::temp_dir().join(format!("labspan-validate-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let bad = dir.join("bad.yaml");
        let text = "name: t\nnodes: {a: {image: tiny, cpus: 0}}\nlinks: [[a:eth0, b:eth0]]\n";
        let _ = std::fs::write(&bad, text);
        let result = run(Args {
            files: vec![demo("ping"), bad.clone(), dir.join("missing.yaml")],
        });
        let _ = std::fs::remove_dir_all(&dir);
        let err = match result {
            Err(e) => e,
            Ok(_) => panic!("invalid lab accepted"),
        };
        let msg = err
            .downcast_ref::<InvalidInput>()
            .map(|i| i.0.clone())
            .unwrap_or_default();
        let bad = bad.display();
        assert!(
            msg.contains(&format!(
                "{bad}:2:32: nodes.a.cpus: cpus 0 is out of range 1..=64"
            )),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "{bad}:3:18: links[0][1]: node \"b\" does not exist"
            )),
            "{msg}"
        );
        assert!(
            msg.contains("missing.yaml: No such file or directory"),
            "{msg}"
        );
    }
}
