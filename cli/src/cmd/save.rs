//! `labspan save LAB -o FILE` and `labspan load FILE`: a lab and one of
//! its checkpoints in one archive ([`crate::archive`]), and that archive
//! brought back running on any cluster, or on the embedded default.
//!
//! The archive holds the lab bundle, its guest files, the images the lab
//! uses (by hash, with their digests; `--without-images` leaves them out
//! and names them only), and every file of the checkpoint. `load` brings
//! the images the cluster lacks to it, deploys the lab, gives each node's
//! host its files, records the checkpoint and resets the lab to it;
//! anything that fails takes the lab down again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use labspan_proto::checkpoint::{Checkpoint, CheckpointFile};
use labspan_proto::codec;
use labspan_proto::lab::{LabBundle, LoadedLab};
use labspan_proto::msg::{AgentReply, HostImages, Reply, Request};
use labspan_transport::client::Client;
use labspan_transport::poll::Poll;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::archive;
use crate::cmd::checkpoint::on_cluster;
use crate::remote::{call, connect, open_stream, Deploy};
use crate::InvalidInput;

mod images;

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
    /// Leave the images out (for images every cluster that loads it has):
    /// the archive names them by digest only.
    #[arg(long)]
    pub without_images: bool,
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
    /// Image name → its content digest: the loading cluster must have it,
    /// or the archive must hold it.
    images: BTreeMap<String, String>,
    /// Image name → its store hash, for each image the archive holds
    /// (its files under `images/objects/HASH/`).
    #[serde(default)]
    image_objects: BTreeMap<String, String>,
    checkpoint: Checkpoint,
    /// Node → file kind → member.
    checkpoint_files: BTreeMap<String, BTreeMap<String, String>>,
}

const BUNDLE_MEMBER: &str = "lab.bundle";
/// How often, and how long, `load` asks whether the leader lists an image
/// it brought (an agent reports a pushed image at once, a stored one
/// within a heartbeat).
const IMAGE_POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const IMAGE_KNOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);
/// How often, and how long, a failed load tries to take its lab down.
const TAKE_DOWN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const TAKE_DOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(90);

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
    let hosts = match call(client, &Request::ImageHosts).await? {
        Reply::ImageHosts(h) => h,
        other => bail!("unexpected reply to ImageHosts: {other:?}"),
    };
    let lab_images = images::of_lab(&hosts, bundle.lab.nodes.values().map(|n| &n.image))?;
    let scratch = tempfile::Builder::new()
        .prefix(".labspan-save-")
        .tempdir_in(parent_of(&a.output))
        .with_context(|| format!("a scratch folder beside {}", a.output.display()))?;
    let mut members: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut image_objects = BTreeMap::new();
    if !a.without_images {
        let fetched = labspan_image::ImageStore::at(scratch.path().join("images"));
        for (name, img) in &lab_images {
            let (dir, digest) = images::fetch(cluster, img, &fetched).await?;
            for f in &digest.files {
                members.insert(images::member(&img.info.hash, &f.name), dir.join(&f.name));
            }
            image_objects.insert(name.clone(), img.info.hash.clone());
        }
    }
    let images = lab_images
        .iter()
        .map(|(name, img)| (name.clone(), img.info.digest.clone()))
        .collect();
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
    let name = checkpoint.name.clone();
    for (node, share) in &checkpoint.nodes {
        for f in &share.files {
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
        image_objects,
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

/// Brings one checkpoint file from its host into `to`, checked against
/// `f` (a disk file is recorded whole: its layers folded over its image,
/// which it names by a relative link).
async fn fetch_checkpoint_file(
    cluster: &Path,
    lab: &str,
    name: &str,
    node: &str,
    f: &CheckpointFile,
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
    let archived =
        images::check_archived(&a.file, &unpacked, &content.images, &content.image_objects)
            .map_err(|e| invalid(format!("{e:#}")))?;
    let embedded = a.cluster.is_none();
    on_cluster(a.cluster.as_deref(), async |cluster| {
        let started = Instant::now();
        let from = Archive {
            file: &a.file,
            unpacked: &unpacked,
            content: &content,
            images: &archived,
        };
        load(cluster, embedded, &from, a.replace).await?;
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

/// An archive read and checked, to load.
struct Archive<'a> {
    file: &'a Path,
    unpacked: &'a archive::Unpacked,
    content: &'a Content,
    /// The images it holds, as a store in the unpacked archive.
    images: &'a labspan_image::ImageStore,
}

/// Loads `from` on `cluster` (this machine's embedded default when
/// `embedded`: an image it lacks goes into this machine's store).
async fn load(
    cluster: &Path,
    embedded: bool,
    from: &Archive<'_>,
    replace: bool,
) -> anyhow::Result<()> {
    let (archive_file, unpacked, content) = (from.file, from.unpacked, from.content);
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
    let ready = ready_to_load(&client, lab, content, replace).await;
    let ready = match ready {
        Ok((bring, hosts)) => {
            bring_images(cluster, embedded, from.images, &bring, &hosts, &client).await
        }
        Err(e) => Err(e),
    };
    let ready = match ready {
        Ok(()) if replace => replace_lab(&client, lab).await,
        other => other,
    };
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

/// Refuses a load that cannot work here: an image is missing or differs
/// and the archive holds no copy, or the lab is deployed already (unless
/// `replace`). Returns the images to bring from the archive, and the hosts.
async fn ready_to_load(
    client: &Client,
    lab: &str,
    content: &Content,
    replace: bool,
) -> anyhow::Result<(Vec<String>, Vec<HostImages>)> {
    let hosts = match call(client, &Request::ImageHosts).await? {
        Reply::ImageHosts(h) => h,
        other => bail!("unexpected reply to ImageHosts: {other:?}"),
    };
    let mut bring = Vec::new();
    for (name, digest) in &content.images {
        let have: Vec<&str> = hosts
            .iter()
            .flat_map(|h| &h.images)
            .filter(|i| &i.name == name)
            .map(|i| i.digest.as_str())
            .collect();
        if have.contains(&digest.as_str()) {
            continue;
        }
        if content.image_objects.contains_key(name) {
            bring.push(name.clone());
            continue;
        }
        let seen = match have.first() {
            Some(d) => format!("its hosts have {name:?} as {d}"),
            None => format!("no host has an image {name:?}"),
        };
        bail!(invalid(format!(
            "lab {lab:?} needs image {name:?} of digest {digest}, and {seen}: \
             the archive holds no copy of it (saved with --without-images); bring that build \
             of {name:?} to a host first (`labspan image push`, or `labspan image build {name}` \
             from the same recipe)"
        )));
    }
    let deployed = matches!(
        call(client, &Request::GetLab { name: lab.into() }).await,
        Ok(Reply::Lab { .. })
    );
    if deployed && !replace {
        bail!(invalid(format!(
            "lab {lab:?} is already deployed here: `labspan down {lab}` first, \
             or `labspan load --replace` to replace it"
        )));
    }
    Ok((bring, hosts))
}

/// Brings each image of `names` from the archive's store to the cluster
/// (pushed to a host that serves images; on the embedded default, into
/// this machine's store), and waits until the leader lists it.
async fn bring_images(
    cluster: &Path,
    embedded: bool,
    from: &labspan_image::ImageStore,
    names: &[String],
    hosts: &[HostImages],
    client: &Client,
) -> anyhow::Result<()> {
    for name in names {
        let img = from.get(name)?;
        let digest = from.digest(&img.manifest.hash)?;
        let mib = digest.size() >> 20;
        if embedded {
            eprintln!(
                "image {name:?} ({mib} MiB) is not on this machine: importing it from the archive"
            );
            images::import_here(from, name).await?;
        } else {
            let (host, addr) = super::image_push::pick(hosts)?;
            eprintln!("image {name:?} ({mib} MiB) is not in the cluster: bringing it from the archive to host {host}");
            images::push(cluster, from, name, (&host, addr)).await?;
        }
        let listed = Poll::new(IMAGE_POLL_EVERY, IMAGE_KNOWN_WITHIN)
            .until(|| async {
                match call(client, &Request::ImageHosts).await {
                    Ok(Reply::ImageHosts(h)) => h
                        .iter()
                        .flat_map(|h| &h.images)
                        .any(|i| &i.name == name && i.digest == digest.digest)
                        .then_some(()),
                    _ => None,
                }
            })
            .await;
        if listed.is_none() {
            bail!(
                "image {name:?} was brought to the cluster, but the leader does not list it after {} s",
                IMAGE_KNOWN_WITHIN.as_secs()
            );
        }
    }
    Ok(())
}

/// `load --replace`: the running lab goes down first.
async fn replace_lab(client: &Client, lab: &str) -> anyhow::Result<()> {
    let deployed = matches!(
        call(client, &Request::GetLab { name: lab.into() }).await,
        Ok(Reply::Lab { .. })
    );
    if !deployed {
        return Ok(());
    }
    eprintln!("{lab}: taking the running lab down to replace it");
    match call(client, &Request::DeleteLab { name: lab.into() }).await? {
        Reply::Done => Ok(()),
        other => bail!("unexpected reply to DeleteLab: {other:?}"),
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

/// Takes a lab that could not be loaded down again, trying for up to
/// [`TAKE_DOWN_WITHIN`]: a load fails when its leader is lost, and the
/// next one takes a few seconds to be elected. Said, not fatal, if it
/// cannot.
async fn take_down(cluster: &Path, lab: &str) {
    let last = std::sync::Mutex::new(String::new());
    let down = Poll::new(TAKE_DOWN_EVERY, TAKE_DOWN_WITHIN)
        .until(|| async {
            let tried = async {
                let client = connect(cluster).await?;
                let r = call(&client, &Request::DeleteLab { name: lab.into() }).await;
                client.close().await;
                r
            };
            match tried.await {
                Ok(_) => Some(()),
                // Refused (not deployed, or not ours to remove): nothing to retry.
                Err(e) if e.downcast_ref::<InvalidInput>().is_some() => Some(()),
                Err(e) => {
                    if let Ok(mut last) = last.lock() {
                        *last = format!("{e:#}");
                    }
                    None
                }
            }
        })
        .await;
    if down.is_none() {
        let why = last.lock().map(|l| l.clone()).unwrap_or_default();
        eprintln!(
            "{lab}: could not be taken down after a failed load ({why}): `labspan down {lab}`"
        );
    }
}
