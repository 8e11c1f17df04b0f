//! `labspan exec LAB NODE -- CMD...`: run a command in a guest, with its
//! output and exit status.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use labspan_agent::vm::AccelChoice;

use crate::embedded::Embedded;

/// Arguments of `labspan exec`.
#[derive(clap::Args)]
pub struct Args {
    /// Lab name.
    pub lab: String,
    /// Node name.
    pub node: String,
    /// Seconds the command may run.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The command, run with `sh -c` (words are joined with spaces, as ssh does).
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
    /// Run it on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<std::path::PathBuf>,
}

/// Runs `labspan exec`; exits with the guest command's status.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cmd = args.cmd.join(" ");
    let rt = tokio::runtime::Runtime::new()?;
    if let Some(cluster) = &args.cluster {
        return rt.block_on(crate::remote::exec(
            cluster,
            &args.lab,
            &args.node,
            &cmd,
            args.timeout,
        ));
    }
    let env = Embedded::open(AccelChoice::Auto)?;
    let out = rt.block_on(env.agent.exec(
        &args.lab,
        &args.node,
        &cmd,
        Duration::from_secs(args.timeout),
    ))?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    Ok(ExitCode::from(u8::try_from(out.exit_code).unwrap_or(255)))
}
