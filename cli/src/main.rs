//! `labspan`: run network labs of QEMU guests across several hosts as one lab.

mod archive;
mod cmd;
mod embedded;
mod follow;
mod graph;
mod guests;
mod log;
mod metrics;
mod origin;
mod progress;
mod remote;
mod verify;
mod web;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Exit status for invalid input (lab file, flags, hosts file): nothing was changed.
const EXIT_INVALID: u8 = 2;

/// An error caused by the user's input rather than by the system; exits with
/// status 2. Wrap errors in it with `anyhow::Error::new(InvalidInput(..))`.
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

#[derive(Parser)]
#[command(name = "labspan", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check lab files and report every problem found.
    Validate(cmd::validate::Args),
    /// Draw a lab's nodes, NICs and segments (dot, mermaid or json).
    Graph(cmd::graph::Args),
    /// Decide which host runs each node of a lab.
    Place(cmd::place::Args),
    /// Build, list and import guest images.
    #[command(subcommand)]
    Image(cmd::image::Command),
    /// Turn another tool's topology (containerlab) into a lab file.
    #[command(subcommand)]
    Import(cmd::import::Command),
    /// Deploy a lab (or apply an edited lab file) and run its checks.
    Up(cmd::up::Args),
    /// Stop a lab and remove everything it made.
    Down(cmd::down::Args),
    /// Show running labs and their nodes.
    Inspect(cmd::inspect::Args),
    /// Follow labs' progress on a cluster as it happens (deploys, host
    /// losses and re-placements, downs).
    Events(cmd::events::Args),
    /// Run a command in a node's guest.
    Exec(cmd::exec::Args),
    /// Restart one node's guest, keeping its disk.
    Restart(cmd::restart::Args),
    /// Move a running node to another host without a restart.
    Move(cmd::moving::Args),
    /// Take, list and delete consistent checkpoints of a running lab.
    #[command(subcommand)]
    Checkpoint(cmd::checkpoint::Command),
    /// Bring every VM of a lab back to one of its checkpoints.
    Reset(cmd::checkpoint::NameArgs),
    /// Write a lab and one of its checkpoints to an archive.
    Save(cmd::save::SaveArgs),
    /// Bring a lab saved with `labspan save` back, running, in its checkpoint.
    Load(cmd::save::LoadArgs),
    /// Drain a host (move its VMs away) or end its cordon.
    #[command(subcommand)]
    Host(cmd::moving::HostCommand),
    /// Attach to a node's serial console.
    Console(cmd::console::Args),
    /// Capture a node NIC's packets as pcap (for wireshark, tcpdump -r).
    Capture(cmd::capture::Args),
    /// Show the cluster in a browser: hosts, nodes, segments, live.
    Web(cmd::web::Args),
    /// Create a cluster, make join tokens, join, see its status.
    #[command(subcommand)]
    Cluster(cmd::cluster::Command),
    /// Run a coordinator.
    #[command(subcommand)]
    Coordinator(cmd::coordinator::Command),
    /// Run a host agent.
    #[command(subcommand)]
    Agent(cmd::agent::Command),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(cmd::docs::CompletionsArgs),
    /// Write the man pages into a folder.
    Man(cmd::docs::ManArgs),
}

fn main() -> ExitCode {
    log::init();
    quiet_on_closed_stdout();
    let cli = match Cli::command().try_get_matches() {
        Ok(matches) => {
            origin::record(&matches);
            Cli::from_arg_matches(&matches)
        }
        Err(e) => Err(e),
    };
    let cli = cli.unwrap_or_else(|e| origin::explain_and_exit(e));
    let result = match cli.command {
        Command::Validate(a) => cmd::validate::run(a),
        Command::Graph(a) => cmd::graph::run(a),
        Command::Place(a) => cmd::place::run(a),
        Command::Image(c) => cmd::image::run(c),
        Command::Import(c) => cmd::import::run(c),
        Command::Up(a) => cmd::up::run(a),
        Command::Down(a) => cmd::down::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Events(a) => cmd::events::run(a),
        Command::Exec(a) => cmd::exec::run(a),
        Command::Restart(a) => cmd::restart::run(a),
        Command::Move(a) => cmd::moving::run(a),
        Command::Host(c) => cmd::moving::run_host(c),
        Command::Checkpoint(c) => cmd::checkpoint::run(c),
        Command::Reset(a) => cmd::checkpoint::run_reset(a),
        Command::Save(a) => cmd::save::run_save(a),
        Command::Load(a) => cmd::save::run_load(a),
        Command::Console(a) => cmd::console::run(a),
        Command::Capture(a) => cmd::capture::run(a),
        Command::Web(a) => cmd::web::run(a),
        Command::Cluster(c) => cmd::cluster::run(c),
        Command::Coordinator(c) => cmd::coordinator::run(c),
        Command::Agent(c) => cmd::agent::run(c),
        Command::Completions(a) => cmd::docs::completions(a),
        Command::Man(a) => cmd::docs::man(a),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`| head`, `| tcpdump -c 3`): it has what it wanted.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(invalid) = e.downcast_ref::<InvalidInput>() {
                eprintln!("{invalid}");
                return ExitCode::from(EXIT_INVALID);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout is a pipe whose reader has gone (Rust
/// ignores SIGPIPE); such a command ends quietly with status 0 instead, as
/// `validate ... | head -n 1` expects. Every other panic is reported as usual.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = (payload.downcast_ref::<String>().map(String::as_str))
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}
