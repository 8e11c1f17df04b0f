//! `labspan up LAB`: deploy a lab (or apply an edited lab file) while
//! showing each node's progress, wait for every guest, run the lab's
//! checks, print a table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use labspan_agent::reconcile::Agent;
use labspan_agent::vm::AccelChoice;
use labspan_image::ImageError;
use labspan_proto::lab::LoadedLab;
use labspan_proto::msg::LabReport;

use crate::embedded::{self, load};
use crate::progress::{Mode, Renderer};
use crate::InvalidInput;

/// Arguments of `labspan up`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab file.
    pub lab: PathBuf,
    /// Accelerator: auto (KVM when it can boot a guest in time, else TCG), kvm or tcg.
    #[arg(long, env = "LABSPAN_ACCEL", default_value = "auto")]
    pub accel: AccelChoice,
    /// Deploy without running the lab's `verify` checks.
    #[arg(long)]
    pub no_verify: bool,
    /// Deploy on the cluster this file names (see `labspan cluster init`)
    /// instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Replace a lab of the same name that another member, or another
    /// file, deployed (the lab then runs what this file says).
    #[arg(long)]
    pub replace: bool,
    /// Progress, checks and the result as JSON lines on stdout (one
    /// object per step: lab, node, host, phase, ...).
    #[arg(long)]
    pub json: bool,
}

/// Runs `labspan up`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(up(args))
}

async fn up(args: Args) -> anyhow::Result<ExitCode> {
    if args.cluster.is_some() && crate::origin::accel_on_command_line() {
        return Err(InvalidInput(format!(
            "error: --accel does not apply with a cluster (from {}): each host's agent picks its \
             accelerator (`labspan agent run --accel`); drop --accel",
            crate::origin::cluster()
        ))
        .into());
    }
    let loaded = load(&args.lab)?;
    let show = Renderer::new(Mode::pick(args.json));
    let deploy = crate::remote::Deploy::new(&args.lab, args.replace)?;
    if let Some(cluster) = &args.cluster {
        return crate::remote::up(cluster, &loaded, &deploy, !args.no_verify, &show).await;
    }
    embedded_up(&loaded, &deploy, args.accel, !args.no_verify, &show).await
}

/// `up` on the embedded default: this machine's own single-node cluster,
/// after a check of the lab against this machine (exit 2, nothing changed).
async fn embedded_up(
    loaded: &LoadedLab,
    deploy: &crate::remote::Deploy,
    accel: AccelChoice,
    verify: bool,
    show: &Arc<Renderer>,
) -> anyhow::Result<ExitCode> {
    let bundle = &loaded.bundle;
    let prepared = embedded::prepare().await?;
    let placement = prepared.fits(bundle)?;
    let agent = Agent::new(labspan_agent::paths::state_dir(), accel);
    ensure_builtin_images(&agent, &bundle.lab)?;
    prepared.check(bundle, &placement, &agent).await?;
    // Progress comes the way it does from a cluster: the local agent
    // tells the embedded coordinator, which streams it to this command.
    let cluster = prepared.start(accel, None).await?;
    let result = crate::remote::up(cluster.cluster_file(), loaded, deploy, verify, show).await;
    show.finish();
    cluster.stop().await;
    result
}

/// The last line of `up` (embedded default and cluster alike), and its
/// exit status; with `--json`, an object with phase `done`.
pub(crate) fn summary(report: &LabReport, ok: bool, started: Instant, mode: Mode) -> ExitCode {
    let lab = &report.lab;
    let secs = started.elapsed().as_secs_f64();
    if mode == Mode::Json {
        let status = report.status.to_string();
        println!(
            "{}",
            serde_json::json!({"lab": lab, "phase": "done", "status": status, "ok": ok, "secs": (secs * 10.0).round() / 10.0})
        );
    } else {
        let verdict = if ok { "is up" } else { "has problems" };
        println!("\nlab \"{lab}\" {verdict} in {secs:.1} s");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Builds the built-in images a lab uses (`tiny`, `tiny-router`) that are
/// missing, the way a container tool pulls a missing image.
fn ensure_builtin_images(agent: &Agent, lab: &labspan_proto::lab::Lab) -> anyhow::Result<()> {
    let used: std::collections::BTreeSet<&str> =
        lab.nodes.values().map(|n| n.image.as_str()).collect();
    for recipe in used.into_iter().filter_map(labspan_image::recipe) {
        if !matches!(
            agent.images().get(recipe.name),
            Err(ImageError::Missing { .. })
        ) {
            continue;
        }
        let name = recipe.name;
        eprintln!("image \"{name}\" is not in the store: building it (once; see `labspan image build {name}`)");
        let style = ProgressStyle::with_template(&format!("{{spinner}} {name}: {{wide_msg}}"))?;
        let bar = ProgressBar::new_spinner().with_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        agent
            .images()
            .build_recipe(recipe, &mut |step: &str| bar.set_message(step.to_string()))?;
        bar.finish_and_clear();
    }
    Ok(())
}
