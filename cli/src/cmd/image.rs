//! `labspan image`: build, list, import guest images, and push one to a
//! cluster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use labspan_image::{self as image, Image, ImageError, ImageStore, ImportRequest};

use crate::InvalidInput;

/// Where the image store is: `--store`, else `$LABSPAN_STATE/images`, else
/// `/var/lib/labspan/images`.
#[derive(clap::Args)]
pub struct StoreArg {
    /// Image store folder.
    #[arg(long, value_name = "DIR", global = true)]
    store: Option<PathBuf>,
}

impl StoreArg {
    fn open(&self) -> ImageStore {
        match &self.store {
            Some(d) => ImageStore::at(d),
            None => ImageStore::in_state(&labspan_agent::paths::state_dir()),
        }
    }
}

/// `labspan image` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Build an image from Debian packages; cached by recipe.
    Build {
        /// The image to build: `tiny`, `tiny-router`, or a recipe file.
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List the images in the store, or with `--cluster` which lab hosts
    /// hold which image.
    List {
        /// Print JSON (the manifests) instead of a table.
        #[arg(long)]
        json: bool,
        /// List the images of every up host of the cluster this file names.
        #[arg(long)]
        cluster: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Import your own qcow2 disk image (it must run qemu-guest-agent for
    /// `exec` and guest configuration to work).
    Import {
        /// The qcow2 file.
        file: PathBuf,
        /// Name to give it in the store (used as `image:` in lab files).
        #[arg(long)]
        name: String,
        /// Kernel to boot directly (otherwise the disk boots through the firmware).
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// Initramfs for --kernel.
        #[arg(long, value_name = "FILE", requires = "kernel")]
        initrd: Option<PathBuf>,
        /// Kernel command line for --kernel [default: root=/dev/vda rw console=ttyS0].
        #[arg(long, requires = "kernel")]
        cmdline: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Add an image to a cluster: upload it to one lab host, from which the
    /// others fetch it when a lab needs it.
    Push {
        /// An image of the local store, or a qcow2 file (imported first).
        image: String,
        /// Name in the cluster [default: the image's name, or the file's stem].
        #[arg(long)]
        name: Option<String>,
        /// The cluster's admin file (from `labspan cluster init`).
        #[arg(long, env = "LABSPAN_CLUSTER")]
        cluster: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// Runs `labspan image ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Build { name, store } => build(&name, &store.open()),
        Command::List {
            json,
            cluster: Some(cluster),
            ..
        } => super::image_push::list_cluster(&cluster, json),
        Command::List { json, store, .. } => list(json, &store.open()),
        Command::Push {
            image,
            name,
            cluster,
            store,
        } => super::image_push::push(&image, name.as_deref(), &cluster, &store.open()),
        Command::Import {
            file,
            name,
            kernel,
            initrd,
            cmdline,
            store,
        } => {
            let req = ImportRequest {
                name: &name,
                disk: &file,
                kernel: kernel.as_deref(),
                initrd: initrd.as_deref(),
                cmdline: cmdline.as_deref(),
            };
            let image = store.open().import(&req).map_err(user_error)?;
            println!(
                "imported {} as image \"{}\" ({})",
                file.display(),
                name,
                short(&image)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn build(name: &str, store: &ImageStore) -> anyhow::Result<ExitCode> {
    let recipe = Path::new(name);
    let builtin = image::recipe(name);
    if builtin.is_none() && !recipe.is_file() {
        let known: Vec<&str> = image::RECIPES.iter().map(|r| r.name).collect();
        return Err(anyhow::Error::new(InvalidInput(format!(
            "labspan image build: \"{name}\" is neither a built-in recipe ({}) nor a recipe file \
             (e.g. demos/sip/image.yaml; see docs/images.md); use `labspan image import` for your own images",
            known.join(", ")
        ))));
    }
    let started = Instant::now();
    let mut progress = |line: &str| {
        eprintln!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
    };
    let report = if let Some(builtin) = builtin {
        store.build_recipe(builtin, &mut progress)
    } else {
        store.build_debian(recipe, &mut progress)
    };
    let report = report
        .map_err(user_error)
        .with_context(|| format!("building image {name} in {}", store.root().display()))?;
    println!(
        "image {} {} ({}) in {:.1}s",
        report.image.manifest.name,
        short(&report.image),
        if report.cached { "cached" } else { "built" },
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(json: bool, store: &ImageStore) -> anyhow::Result<ExitCode> {
    let listing = || -> Result<Vec<(String, Image)>, ImageError> {
        let names = store.names()?;
        names
            .into_iter()
            .map(|n| store.get(&n).map(|i| (n, i)))
            .collect()
    };
    let images =
        listing().with_context(|| format!("listing images in {}", store.root().display()))?;
    if json {
        // Each under the name it has in this store (a pushed copy may have
        // been named apart from the image it was made from).
        let manifests: Vec<_> = (images.iter())
            .map(|(name, i)| image::Manifest {
                name: name.clone(),
                ..i.manifest.clone()
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&manifests)?);
        return Ok(ExitCode::SUCCESS);
    }
    if images.is_empty() {
        eprintln!(
            "no images in {}: run `labspan image build tiny`",
            store.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<12} {:<9} {:<6} {:<14} {:>9}",
        "NAME", "HASH", "KIND", "AGENT", "BOOTS", "SIZE"
    );
    for (name, i) in &images {
        let m = &i.manifest;
        let boots = match (&m.kernel, &m.disk) {
            (Some(_), Some(_)) => "kernel+disk",
            (Some(_), None) => "kernel+initrd",
            (None, _) => "disk (bios)",
        };
        println!(
            "{:<16} {:<12} {:<9} {:<6} {:<14} {:>9}",
            name,
            &m.hash[..m.hash.len().min(12)],
            m.guest.kind,
            agent_column(m),
            boots,
            human_size(dir_size(&i.dir))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the image runs a guest agent: known for the images labspan
/// builds; an imported disk is whatever its maker put in it.
fn agent_column(m: &image::Manifest) -> &'static str {
    match (m.guest.kind.as_str(), m.guest.guest_agent) {
        (image::IMPORTED_KIND, _) => "unknown",
        (_, true) => "yes",
        (_, false) => "no",
    }
}

/// Bad names and unusable files are the user's input: exit status 2.
pub(crate) fn user_error(e: ImageError) -> anyhow::Error {
    match e {
        ImageError::BadName { .. } | ImageError::NotQcow2 { .. } | ImageError::Recipe { .. } => {
            anyhow::Error::new(InvalidInput(e.to_string()))
        }
        other => anyhow::Error::new(other),
    }
}

pub(crate) fn short(image: &Image) -> String {
    image.manifest.hash.chars().take(12).collect()
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.1} MiB", bytes as f64 / MIB)
}
