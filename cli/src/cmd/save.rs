//! `labspan save LAB -o FILE` and `labspan load FILE`: a lab and one of
//! its checkpoints in one archive ([`crate::archive`]), and that archive
//! brought back running on any cluster, or on the embedded default.
//!
//! The archive holds the lab bundle, its guest files, the hash of each
//! image the lab uses (images are not copied: the cluster loading it must
//! have the same ones), and every file of the checkpoint. `load` deploys
//! the lab, gives each node's host its files, records the checkpoint and
//! resets the lab to it; anything that fails takes the lab down again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use labspan_proto::checkpoint::{Checkpoint, CheckpointFile};
use labspan_proto::codec;
use labspan_proto::lab::{LabBundle, LoadedLab};
use labspan_proto::msg::{AgentReply, Reply, Request};
use labspan_transport::client::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::archive;
use crate::cmd::checkpoint::on_cluster;
use crate::remote::{call, connect, open_stream, Deploy};
use crate::InvalidInput;

/// `labspan save`.
#[derive(clap::Args)]
pub struct SaveArgs {
    /// Lab name.
    pub lab: String,
    /// The archive to write.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// The checkpoint to save (default: the lab's latest).
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Act on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// `labspan load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// An archive written by `labspan save`.
    pub file: PathBuf,
    /// Take a running lab of the same name down first (once the archive
    /// and its images have been checked), as `labspan up --replace` does.
    #[arg(long)]
    pub replace: bool,
    /// Act on the cluster this file names instead of this machine.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: Option<PathBuf>,
}

/// What an archive says beyond its members (the manifest's `content`).
#[derive(Debug, Serialize, Deserialize)]
struct Content {
    lab: String,
    /// Member holding the lab bundle (codec-encoded, as the cluster keeps it).
    bundle: String,
    /// Guest file sha256 → member.
    files: BTreeMap<String, String>,
    /// Image name → its content digest: the loading cluster must have it.
    images: BTreeMap<String, String>,
    checkpoint: Checkpoint,
    /// Node → file kind → member.
    checkpoint_files: BTreeMap<String, BTreeMap<String, String>>,
}

const BUNDLE_MEMBER: &str = "lab.bundle";

fn invalid(msg: String) -> anyhow::Error {
    InvalidInput(format!("error: {msg}")).into()
}

/// Runs `labspan save`.
pub fn run_save(a: SaveArgs) -> anyhow::Result<ExitCode> {
    on_cluster(a.cluster.as_deref(), async |file| {
        let started = Instant::now();
        let client = connect(file).await?;
        let result = save(file, &client, &a).await;
        client.close().await;
        let (checkpoint, bytes) = result?;
        println!(
            "{}: checkpoint {:?} saved to {} in {:.1} s ({} MiB)",
            a.lab,
            checkpoint,
            a.output.display(),
            started.elapsed().as_secs_f64(),
            bytes >> 20
        );
        Ok(ExitCode::SUCCESS)
    })
}

async fn save(cluster: &Path, client: &Client, a: &SaveArgs) -> anyhow::Result<(String, u64)> {
    let lab = &a.lab;
    let bundle_bytes = match call(client, &Request::GetLab { name: lab.clone() }).await? {
        Reply::Lab { bundle, .. } => bundle,
        other => bail!("unexpected reply to GetLab: {other:?}"),
    };
    let bundle: LabBundle = codec::decode(&bundle_bytes).context("decoding the lab bundle")?;
    let all = match call(client, &Request::CheckpointList { lab: lab.clone() }).await? {
        Reply::Checkpoints(all) => all,
        other => bail!("unexpected reply to CheckpointList: {other:?}"),
    };
    let checkpoint = match &a.checkpoint {
        Some(name) => all.iter().find(|c| &c.name == name).cloned().ok_or_else(|| {
            invalid(format!("lab {lab:?} has no checkpoint {name:?}"))
        })?,
        None => all.last().cloned().ok_or_else(|| {
            invalid(format!(
                "lab {lab:?} has no checkpoint to save: `labspan checkpoint create {lab} NAME` takes one"
            ))
        })?,
    };
    let images = image_digests(client, &bundle).await?;
    let scratch = tempfile::Builder::new()
        .prefix(".labspan-save-")
        .tempdir_in(parent_of(&a.output))
        .with_context(|| format!("a scratch folder beside {}", a.output.display()))?;
    let mut members: BTreeMap<String, PathBuf> = BTreeMap::new();
    let put = |members: &mut BTreeMap<String, PathBuf>, name: String, bytes: &[u8]| {
        let path = scratch.path().join(name.replace('/', "_"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        members.insert(name, path);
        anyhow::Ok(())
    };
    put(&mut members, BUNDLE_MEMBER.into(), &bundle_bytes)?;
    let mut files = BTreeMap::new();
    for f in bundle.files.values() {
        let req = Request::GetFile {
            sha256: f.sha256.clone(),
        };
        let contents = match call(client, &req).await? {
            Reply::File { contents } => contents,
            other => bail!("unexpected reply to GetFile: {other:?}"),
        };
        let member = format!("files/{}", f.sha256);
        put(&mut members, member.clone(), &contents)?;
        files.insert(f.sha256.clone(), member);
    }
    let mut checkpoint_files: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut checkpoint = checkpoint;
    let name = checkpoint.name.clone();
    for (node, share) in &mut checkpoint.nodes {
        for f in &mut share.files {
            let member = format!("checkpoint/{node}/{}", f.kind);
            let path = scratch.path().join(format!("{node}.{}", f.kind));
            fetch_checkpoint_file(cluster, lab, &name, node, f, &path).await?;
            members.insert(member.clone(), path);
            checkpoint_files
                .entry(node.clone())
                .or_default()
                .insert(f.kind.clone(), member);
        }
    }
    let content = Content {
        lab: lab.clone(),
        bundle: BUNDLE_MEMBER.into(),
        files,
        images,
        checkpoint: checkpoint.clone(),
        checkpoint_files,
    };
    let content = serde_json::to_value(&content)?;
    let output = a.output.clone();
    tokio::task::spawn_blocking(move || archive::write(&output, content, &members)).await??;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    Ok((checkpoint.name, size))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The content digest of every image the lab uses, as the cluster has it.
async fn image_digests(
    client: &Client,
    bundle: &LabBundle,
) -> anyhow::Result<BTreeMap<String, String>> {
    let hosts = match call(client, &Request::ImageHosts).await? {
        Reply::ImageHosts(h) => h,
        other => bail!("unexpected reply to ImageHosts: {other:?}"),
    };
    let mut out = BTreeMap::new();
    for node in bundle.lab.nodes.values() {
        let found = hosts
            .iter()
            .flat_map(|h| &h.images)
            .find(|i| i.name == node.image)
            .with_context(|| format!("no host of the cluster has image {:?}", node.image))?;
        out.insert(node.image.clone(), found.digest.clone());
    }
    Ok(out)
}

/// Brings one checkpoint file from its host into `to`, checked against
/// `f`. A disk layer comes exported (folded over its image, which it names
/// by a relative link): a file of its own, whose size and hash go into `f`.
async fn fetch_checkpoint_file(
    cluster: &Path,
    lab: &str,
    name: &str,
    node: &str,
    f: &mut CheckpointFile,
    to: &Path,
) -> anyhow::Result<()> {
    let req = Request::CheckpointRead {
        lab: lab.into(),
        name: name.into(),
        node: node.into(),
        kind: f.kind.clone(),
    };
    let (client, mut send, mut recv) = open_stream(cluster, &req).await?;
    let mut out = tokio::fs::File::create(to)
        .await
        .with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // Tokio's read (quinn's own says `None` at the end).
        let n = AsyncReadExt::read(&mut recv, &mut buf)
            .await
            .with_context(|| format!("receiving the {} file of node {node:?}", f.kind))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
        bytes += n as u64;
    }
    out.flush().await?;
    // Ours ends only now: the coordinator stops relaying soon after the
    // first side of a stream ends.
    let _ = send.finish();
    client.close().await;
    let sha256 = hex::encode(hasher.finalize());
    if f.kind == "disk" {
        f.bytes = bytes;
        f.sha256 = sha256;
        return Ok(());
    }
    if bytes != f.bytes || sha256 != f.sha256 {
        bail!(
            "the {} file of node {node:?} in checkpoint {name:?} came as {bytes} bytes of sha256 {sha256}; the checkpoint records {} bytes of sha256 {}",
            f.kind,
            f.bytes,
            f.sha256
        );
    }
    Ok(())
}

/// Runs `labspan load`.
pub fn run_load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let scratch = std::env::temp_dir();
    let file = a.file.clone();
    let unpacked = archive::read(&file, &scratch).map_err(|e| invalid(e.to_string()))?;
    let content: Content = serde_json::from_value(unpacked.manifest.content.clone())
        .map_err(|e| invalid(format!("{}: its manifest: {e}", a.file.display())))?;
    on_cluster(a.cluster.as_deref(), async |cluster| {
        let started = Instant::now();
        load(cluster, &a.file, &unpacked, &content, a.replace).await?;
        println!(
            "{}: loaded from {} and running in checkpoint {:?} in {:.1} s",
            content.lab,
            a.file.display(),
            content.checkpoint.name,
            started.elapsed().as_secs_f64()
        );
        Ok(ExitCode::SUCCESS)
    })
}

async fn load(
    cluster: &Path,
    archive_file: &Path,
    unpacked: &archive::Unpacked,
    content: &Content,
    replace: bool,
) -> anyhow::Result<()> {
    let lab = &content.lab;
    let bundle_bytes = std::fs::read(unpacked.path(&content.bundle))?;
    let bundle: LabBundle = codec::decode(&bundle_bytes).context("decoding the lab bundle")?;
    if &bundle.lab.name != lab {
        bail!(invalid(format!(
            "the archive's lab is {:?}, its manifest says {lab:?}",
            bundle.lab.name
        )));
    }
    let client = connect(cluster).await?;
    let ready = ready_to_load(&client, lab, &content.images, replace).await;
    client.close().await;
    ready?;
    let mut contents = BTreeMap::new();
    for (sha256, member) in &content.files {
        contents.insert(sha256.clone(), std::fs::read(unpacked.path(member))?);
    }
    let loaded = LoadedLab { bundle, contents };
    let how = Deploy::new(archive_file, false)?;
    // Its progress as `up` shows it (bars on a terminal, lines elsewhere).
    let show = crate::progress::Renderer::new(crate::progress::Mode::pick(false));
    let up = crate::remote::up(cluster, &loaded, &how, false, &show).await;
    if !matches!(up, Ok(code) if code == ExitCode::SUCCESS) {
        take_down(cluster, lab).await;
        return match up {
            Err(e) => Err(e),
            Ok(_) => bail!("lab {lab:?} did not come up; it was taken down again"),
        };
    }
    let client = connect(cluster).await?;
    let restored = restore(cluster, &client, unpacked, content).await;
    client.close().await;
    if let Err(e) = restored {
        take_down(cluster, lab).await;
        return Err(e.context(format!(
            "lab {lab:?} could not be brought to its checkpoint; it was taken down again"
        )));
    }
    Ok(())
}

/// Refuses a load that cannot work here: an image is missing or differs,
/// or the lab is deployed already (taken down first with `replace`).
async fn ready_to_load(
    client: &Client,
    lab: &str,
    images: &BTreeMap<String, String>,
    replace: bool,
) -> anyhow::Result<()> {
    let hosts = match call(client, &Request::ImageHosts).await? {
        Reply::ImageHosts(h) => h,
        other => bail!("unexpected reply to ImageHosts: {other:?}"),
    };
    for (name, digest) in images {
        let have: Vec<&str> = hosts
            .iter()
            .flat_map(|h| &h.images)
            .filter(|i| &i.name == name)
            .map(|i| i.digest.as_str())
            .collect();
        if !have.contains(&digest.as_str()) {
            let seen = match have.first() {
                Some(d) => format!("its hosts have {name:?} as {d}"),
                None => format!("no host has an image {name:?}"),
            };
            bail!(invalid(format!(
                "lab {lab:?} needs image {name:?} of digest {digest}, and {seen}: \
                 images are not in the archive; bring that build of {name:?} to a host first \
                 (`labspan image push`, or `labspan image build {name}` from the same recipe)"
            )));
        }
    }
    let deployed = matches!(
        call(client, &Request::GetLab { name: lab.into() }).await,
        Ok(Reply::Lab { .. })
    );
    match (deployed, replace) {
        (false, _) => Ok(()),
        (true, false) => bail!(invalid(format!(
            "lab {lab:?} is already deployed here: `labspan down {lab}` first, \
             or `labspan load --replace` to replace it"
        ))),
        (true, true) => {
            eprintln!("{lab}: taking the running lab down to replace it");
            match call(client, &Request::DeleteLab { name: lab.into() }).await? {
                Reply::Done => Ok(()),
                other => bail!("unexpected reply to DeleteLab: {other:?}"),
            }
        }
    }
}

/// Gives each node's host its checkpoint files, records the checkpoint,
/// and resets the lab to it.
async fn restore(
    cluster: &Path,
    client: &Client,
    unpacked: &archive::Unpacked,
    content: &Content,
) -> anyhow::Result<()> {
    let lab = &content.lab;
    let ckpt = &content.checkpoint;
    for (node, share) in &ckpt.nodes {
        for f in &share.files {
            let member = content
                .checkpoint_files
                .get(node)
                .and_then(|k| k.get(&f.kind))
                .with_context(|| format!("the archive has no {} file of node {node:?}", f.kind))?;
            send_checkpoint_file(cluster, lab, &ckpt.name, node, f, &unpacked.path(member)).await?;
        }
    }
    let req = Request::CheckpointImport {
        lab: lab.clone(),
        checkpoint: ckpt.clone(),
    };
    match call(client, &req).await? {
        Reply::Checkpointed(_) => {}
        other => bail!("unexpected reply to CheckpointImport: {other:?}"),
    }
    let req = Request::Reset {
        lab: lab.clone(),
        name: ckpt.name.clone(),
    };
    match call(client, &req).await? {
        Reply::WasReset(_) => Ok(()),
        other => bail!("unexpected reply to Reset: {other:?}"),
    }
}

/// Sends one checkpoint file to the host of `node`; its answer says
/// whether it arrived whole.
async fn send_checkpoint_file(
    cluster: &Path,
    lab: &str,
    name: &str,
    node: &str,
    f: &CheckpointFile,
    path: &Path,
) -> anyhow::Result<()> {
    let req = Request::CheckpointWrite {
        lab: lab.into(),
        name: name.into(),
        node: node.into(),
        file: f.clone(),
    };
    let (client, mut send, mut recv) = open_stream(cluster, &req).await?;
    let sent = send_over(&mut send, &mut recv, node, f, path).await;
    client.close().await;
    sent
}

async fn send_over(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    node: &str,
    f: &CheckpointFile,
    path: &Path,
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    tokio::io::copy(&mut file, send)
        .await
        .with_context(|| format!("sending the {} file of node {node:?}", f.kind))?;
    send.finish()?;
    match labspan_transport::read_message::<AgentReply>(recv).await {
        Ok(AgentReply::Resumed { .. }) => Ok(()),
        Ok(AgentReply::Error(e)) => bail!("{}", e.message),
        Ok(other) => bail!("unexpected answer to a checkpoint file: {other:?}"),
        Err(e) => bail!("no answer after the {} file of node {node:?}: {e}", f.kind),
    }
}

/// Takes a lab that could not be loaded down again (best effort: said, not fatal).
async fn take_down(cluster: &Path, lab: &str) {
    let down = async {
        let client = connect(cluster).await?;
        let r = call(&client, &Request::DeleteLab { name: lab.into() }).await;
        client.close().await;
        r
    };
    if let Err(e) = down.await {
        eprintln!(
            "{lab}: could not be taken down after a failed load ({e:#}): `labspan down {lab}`"
        );
    }
}
