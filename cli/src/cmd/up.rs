//! `labspan up LAB`: deploy a lab (or apply an edited lab file), wait for
//! every guest, run the lab's checks, print a table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use labspan_agent::image::ImageError;
use labspan_agent::reconcile::{Agent, Event};
use labspan_agent::vm::AccelChoice;
use labspan_proto::lab::LoadedLab;

use crate::embedded::{self, load};
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
    if let Some(cluster) = &args.cluster {
        let deploy = crate::remote::Deploy::new(&args.lab, args.replace)?;
        return crate::remote::up(cluster, &loaded, &deploy, !args.no_verify).await;
    }
    let deploy = crate::remote::Deploy::new(&args.lab, args.replace)?;
    embedded_up(&loaded, &deploy, args.accel, !args.no_verify).await
}

/// `up` on the embedded default: this machine's own single-node cluster,
/// after a check of the lab against this machine (exit 2, nothing changed).
async fn embedded_up(
    loaded: &LoadedLab,
    deploy: &crate::remote::Deploy,
    accel: AccelChoice,
    verify: bool,
) -> anyhow::Result<ExitCode> {
    let bundle = &loaded.bundle;
    let prepared = embedded::prepare().await?;
    let placement = prepared.fits(bundle)?;
    let agent = Agent::new(labspan_agent::paths::state_dir(), accel);
    ensure_builtin_images(&agent, &bundle.lab)?;
    prepared.check(bundle, &placement, &agent).await?;
    let progress = Arc::new(Progress::new(&bundle.lab));
    let hook = {
        let (progress, lab) = (progress.clone(), bundle.lab.name.clone());
        Arc::new(move |e: Event| progress.on(&lab, e))
    };
    let cluster = prepared.start(accel, Some(hook)).await?;
    let finish = || progress.finish();
    let result =
        crate::remote::up_with(cluster.cluster_file(), loaded, deploy, verify, &finish).await;
    progress.finish();
    cluster.stop().await;
    result
}

/// The last line of `up` (embedded default and cluster alike), and its exit status.
pub(crate) fn summary(lab: &str, ok: bool, started: Instant) -> ExitCode {
    let verdict = if ok { "is up" } else { "has problems" };
    println!(
        "\nlab \"{lab}\" {verdict} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
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
    for recipe in used.into_iter().filter_map(labspan_agent::image::recipe) {
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

/// One spinner per VM, updated from the agent's events.
struct Progress {
    bars: Mutex<std::collections::BTreeMap<String, ProgressBar>>,
}

impl Progress {
    fn new(lab: &labspan_proto::lab::Lab) -> Progress {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {prefix:<12} {wide_msg} {elapsed:>4}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = lab
            .nodes
            .keys()
            .map(|node| {
                let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                bar.set_prefix(node.clone());
                bar.set_message("planned");
                bar.enable_steady_tick(Duration::from_millis(120));
                (node.clone(), bar)
            })
            .collect();
        Progress {
            bars: Mutex::new(bars),
        }
    }

    /// Shows `event` if it is about `lab` (the agent reports every lab of the host).
    fn on(&self, lab: &str, event: Event) {
        let (of, vm, msg) = match &event {
            Event::Launching { lab, vm } => (lab, vm, "starting QEMU".to_string()),
            Event::Receiving { lab, vm } => (lab, vm, "receiving it from another host".to_string()),
            Event::Arrived { lab, vm } => (lab, vm, "arrived from another host".to_string()),
            Event::Adopted { lab, vm, pid } => (lab, vm, format!("running (pid {pid}), kept")),
            Event::Restarting { lab, vm, why } => (lab, vm, format!("restarting: {why}")),
            Event::Booted { lab, vm, after } => (
                lab,
                vm,
                format!(
                    "guest agent up after {:.1} s, configuring",
                    after.as_secs_f64()
                ),
            ),
            Event::Configured { lab, vm } => (lab, vm, "configured".to_string()),
            Event::Stopped { lab, vm } => (lab, vm, "stopped and removed".to_string()),
            Event::Failed {
                lab,
                vm,
                state,
                why,
            } => (lab, vm, format!("{state}: {why}")),
            Event::BackingOff { lab, vm, delay } => {
                (lab, vm, format!("restarting in {} s", delay.as_secs()))
            }
            Event::Left { lab, vm, why } => (lab, vm, format!("left as it is ({why})")),
            Event::Fetching {
                lab,
                image,
                from,
                bytes,
                total,
                mib_per_s,
            } => (
                lab,
                image,
                format!(
                    "image from {from}: {:.1} of {:.1} MiB ({mib_per_s:.1} MiB/s)",
                    *bytes as f64 / 1048576.0,
                    *total as f64 / 1048576.0
                ),
            ),
            Event::FetchRetry {
                lab,
                image,
                from,
                why,
            } => (
                lab,
                image,
                format!("fetch from {from} failed, retrying: {why}"),
            ),
        };
        if of != lab {
            return;
        }
        if let Ok(bars) = self.bars.lock() {
            match bars.get(vm) {
                Some(bar) => bar.set_message(msg),
                None => eprintln!("{vm}: {msg}"),
            }
        }
    }

    fn finish(&self) {
        if let Ok(bars) = self.bars.lock() {
            bars.values().for_each(ProgressBar::finish_and_clear);
        }
    }
}
