//! `labspan completions` and `labspan man`: shell completions and man pages,
//! made from the same clap definitions as the command itself, so they never
//! drift from it. The Debian package ships both (deploy/package.sh).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

/// Arguments of `labspan completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Arguments of `labspan man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Folder to write the pages to: labspan.1 and one page per subcommand
    /// (labspan-up.1, labspan-cluster-join.1, ...).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Prints the completion script for one shell.
pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    // Into memory first: clap_complete panics when its writer fails, and a
    // closed stdout (`| head`) must end the command quietly instead.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "labspan", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes every man page into `--out`.
pub fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let pages = write_pages(crate::Cli::command(), &a.out)?;
    eprintln!("wrote {pages} man pages to {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd` and of each of its subcommands, named as git
/// names its pages (`labspan-cluster-join.1`); returns how many.
fn write_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    // Subcommands' names, usage and version carry their parents' prefix.
    let mut cmd = cmd;
    cmd.build();
    write_tree(&cmd, "labspan", dir)
}

fn write_tree(cmd: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<usize> {
    let page = cmd.clone().name(name.to_string());
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let mut pages = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        pages += write_tree(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = write_pages(crate::Cli::command(), dir.path()).expect("pages");
        let main = std::fs::read_to_string(dir.path().join("labspan.1")).expect("labspan.1");
        assert!(
            main.contains(".TH labspan") && main.contains("import"),
            "{main}"
        );
        let join = std::fs::read_to_string(dir.path().join("labspan-cluster-join.1"))
            .expect("labspan-cluster-join.1");
        assert!(join.contains("JOIN_LINE"), "{join}");
        let count = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(count, pages);
        assert!(pages > 30, "{pages} pages");
    }
}
