//! The one way labspan (the agent, the image store and its builders) runs
//! a host tool to completion and checks it (`qemu-img`,
//! `qemu-system-x86_64 -daemonize`, `apt-cache`, `mkfs.ext4`, ...): a
//! failure is a [`ToolError`] that names the tool, its arguments and what
//! it printed on stderr. A tool whose output is read while it runs
//! (`tcpdump`) is started with [`spawn_async`], which names it the same way
//! when it cannot start; its caller keeps the child. debootstrap, whose
//! failure carries its log, is spawned where it is read.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::process::{ExitStatus, Output};

/// A host tool that could not be run, or that failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool could not be started (not installed, not executable).
    #[error("cannot run `{command}`: {cause}")]
    Spawn { command: String, cause: io::Error },
    /// The tool ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl ToolError {
    /// What the tool printed on stderr, when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ToolError::Failed { stderr, .. } => Some(stderr),
            ToolError::Spawn { .. } => None,
        }
    }
}

/// The tool and its arguments, as a shell would show them.
fn shown<'a>(program: &'a OsStr, args: impl Iterator<Item = &'a OsStr>) -> String {
    std::iter::once(program)
        .chain(args)
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn checked(command: String, out: io::Result<Output>) -> Result<Output, ToolError> {
    let out = out.map_err(|cause| ToolError::Spawn {
        command: command.clone(),
        cause,
    })?;
    if out.status.success() {
        return Ok(out);
    }
    Err(ToolError::Failed {
        command,
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `cmd` to completion; its output if it exited with status 0.
pub fn run(cmd: &mut std::process::Command) -> Result<Output, ToolError> {
    let command = shown(cmd.get_program(), cmd.get_args());
    checked(command, cmd.output())
}

/// [`run`] for async callers.
pub async fn run_async(cmd: &mut tokio::process::Command) -> Result<Output, ToolError> {
    let std = cmd.as_std();
    let command = shown(std.get_program(), std.get_args());
    checked(command, cmd.output().await)
}

/// Starts `cmd`, a tool whose output its caller reads while it runs, and
/// hands back the child (the caller stops and reaps it). A tool that cannot
/// be started is a [`ToolError::Spawn`] naming it and its arguments.
pub fn spawn_async(cmd: &mut tokio::process::Command) -> Result<tokio::process::Child, ToolError> {
    let std = cmd.as_std();
    let command = shown(std.get_program(), std.get_args());
    cmd.spawn()
        .map_err(|cause| ToolError::Spawn { command, cause })
}

/// [`run`], returning stdout as text.
pub fn stdout_of(cmd: &mut std::process::Command) -> Result<String, ToolError> {
    run(cmd).map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_failure_names_the_tool_its_arguments_and_its_stderr() {
        let err =
            run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).expect_err("exit 3");
        assert_eq!(err.stderr(), Some("broken"));
        let text = err.to_string();
        assert!(
            text.starts_with("`sh -c echo broken >&2; exit 3` failed"),
            "{text}"
        );
        assert!(text.ends_with(": broken"), "{text}");
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error_and_success_gives_stdout() {
        let err = run(&mut Command::new("labspan-no-such-tool")).expect_err("missing");
        assert!(matches!(err, ToolError::Spawn { .. }), "{err}");
        assert_eq!(
            stdout_of(Command::new("echo").arg("hi")).expect("echo"),
            "hi\n"
        );
    }

    #[tokio::test]
    async fn the_async_flavour_checks_the_same_way() {
        let err = run_async(tokio::process::Command::new("false").arg("x"))
            .await
            .expect_err("false");
        assert!(err.to_string().starts_with("`false x` failed"), "{err}");
    }

    #[tokio::test]
    async fn a_spawned_tool_is_named_when_it_cannot_start_and_its_child_is_kept() {
        let err = spawn_async(tokio::process::Command::new("labspan-no-such-tool").arg("-x"))
            .expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot run `labspan-no-such-tool -x`: "),
            "{err}"
        );
        let child = spawn_async(
            tokio::process::Command::new("echo")
                .arg("hi")
                .stdout(std::process::Stdio::piped()),
        )
        .expect("echo starts");
        let out = child.wait_with_output().await.expect("echo ends");
        assert_eq!(out.stdout, b"hi\n");
    }
}
