//! `labspan up LAB`: deploy a lab (or apply an edited lab file), wait for
//! every guest, run the lab's checks, print a table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use labspan_agent::image::ImageError;
use labspan_agent::reconcile::{Event, Report};
use labspan_agent::vm::AccelChoice;

use crate::embedded::{classify, load, Embedded};
use crate::guests::{verify, LocalGuests};

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
}

/// Runs `labspan up`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(up(args))
}

async fn up(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let bundle = load(&args.lab)?;
    if let Some(cluster) = &args.cluster {
        return crate::remote::up(cluster, &bundle, !args.no_verify).await;
    }
    let name = bundle.lab.name.clone();
    let env = Embedded::open(args.accel)?;
    let (record, host_plan) = env.plan(&bundle)?;
    ensure_builtin_images(&env, &bundle.lab)?;
    env.agent.check(&host_plan).await.map_err(classify)?;
    env.store.put(&record)?;

    let progress = Progress::new(&bundle.lab);
    let report = env
        .agent
        .apply(&host_plan, &|e| progress.on(e))
        .await
        .map_err(classify)?;
    progress.finish();
    print_vms(&name, &report);

    let mut ok = report.ok();
    if !args.no_verify && !bundle.lab.verify.is_empty() && ok {
        let guests = LocalGuests {
            agent: &env.agent,
            lab: &name,
        };
        ok = verify(&guests, &bundle.lab).await;
    }
    Ok(summary(&name, ok, started))
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
fn ensure_builtin_images(env: &Embedded, lab: &labspan_proto::lab::Lab) -> anyhow::Result<()> {
    let used: std::collections::BTreeSet<&str> =
        lab.nodes.values().map(|n| n.image.as_str()).collect();
    for recipe in used.into_iter().filter_map(labspan_agent::image::recipe) {
        if !matches!(
            env.agent.images().get(recipe.name),
            Err(ImageError::Missing { .. })
        ) {
            continue;
        }
        let name = recipe.name;
        eprintln!("image \"{name}\" is not in the store: building it (once; see `labspan image build {name}`)");
        let style = ProgressStyle::with_template(&format!("{{spinner}} {name}: {{wide_msg}}"))?;
        let bar = ProgressBar::new_spinner().with_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        env.agent
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

    fn on(&self, event: Event) {
        let (vm, msg) = match &event {
            Event::Launching { vm, .. } => (vm, "starting QEMU".to_string()),
            Event::Adopted { vm, pid, .. } => (vm, format!("running (pid {pid}), kept")),
            Event::Restarting { vm, why, .. } => (vm, format!("restarting: {why}")),
            Event::Booted { vm, after, .. } => (
                vm,
                format!(
                    "guest agent up after {:.1} s, configuring",
                    after.as_secs_f64()
                ),
            ),
            Event::Configured { vm, .. } => (vm, "configured".to_string()),
            Event::Stopped { vm, .. } => (vm, "stopped and removed".to_string()),
        };
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

fn print_vms(lab: &str, report: &Report) {
    println!("{:<12} {:<8} {:>8}  CONSOLE", "NODE", "STATE", "PID");
    for vm in &report.vms {
        let state = if vm.error.is_none() {
            "ready"
        } else {
            "FAILED"
        };
        println!(
            "{:<12} {:<8} {:>8}  labspan console {lab} {}",
            vm.vm, state, vm.pid, vm.vm
        );
        if let Some(e) = &vm.error {
            println!("  {e}");
        }
    }
}
