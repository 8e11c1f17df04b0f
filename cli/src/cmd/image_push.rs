//! `labspan image push NAME|FILE.qcow2 --cluster FILE`: uploads an image
//! to one lab host of a cluster over its image endpoint; the agent checks
//! the image's digest before it takes it, and the other hosts fetch it
//! from there when a lab needs it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use labspan_image::endpoint::image_client_endpoint;
use labspan_image::transfer;
use labspan_image::{ImageError, ImageStore, ImportRequest};
use labspan_proto::msg::{HostImages, Reply, Request};
use labspan_transport::client::any_local;
use labspan_transport::poll::Poll;

use super::image::{short, user_error};

/// How often, and for how long, `push` asks whether the leader knows the
/// pushed image.
const KNOWN_POLL_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const KNOWN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
use crate::InvalidInput;

/// Runs `labspan image push`.
pub fn push(
    image: &str,
    name: Option<&str>,
    cluster: &Path,
    store: &ImageStore,
) -> anyhow::Result<ExitCode> {
    let (local, name) = local_image(image, name, store)?;
    let img = store.get(&local).map_err(push_error)?;
    let digest = store.digest(&img.manifest.hash).map_err(user_error)?;
    let rt = tokio::runtime::Runtime::new()?;
    let hosts = rt.block_on(image_hosts(cluster))?;
    if let Some(h) = hosts.iter().find(|h| {
        h.images
            .iter()
            .any(|i| i.name == name && i.hash == img.manifest.hash && i.digest == digest.digest)
    }) {
        println!(
            "image \"{name}\" ({}) is already in the cluster (host {})",
            short(&img),
            h.host
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (host, addr) = pick(&hosts)?;
    let file = crate::remote::load_cluster_file(cluster)?;
    let (ca, me) = file.credential()?;
    let started = Instant::now();
    let stored = rt.block_on(async {
        let endpoint = image_client_endpoint(any_local(addr), &ca, &me)?;
        let r = transfer::push(&endpoint, addr, store, &local, &name).await;
        endpoint.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        r.with_context(|| format!("pushing image \"{name}\" to host {host} ({addr})"))
    })?;
    let secs = started.elapsed().as_secs_f64();
    // A lab deployed right after this command must find the image: wait
    // until the leader has the host's new inventory.
    let known = rt.block_on(wait_known(cluster, &stored, &name, &img.manifest.hash));
    if !known {
        eprintln!(
            "warning: the leader does not list image \"{name}\" on host {stored} yet; \
             it will once that agent reports its images"
        );
    }
    let mib = digest.size() as f64 / (1024.0 * 1024.0);
    println!(
        "pushed image \"{name}\" ({}, {mib:.1} MiB) to host {stored} in {secs:.1}s ({:.1} MiB/s); \
         the other hosts fetch it from there when a lab needs it",
        short(&img),
        mib / secs.max(1e-6)
    );
    Ok(ExitCode::SUCCESS)
}

/// The local image to push and the name it gets in the cluster: a qcow2
/// file is imported into the local store first.
fn local_image(
    image: &str,
    name: Option<&str>,
    store: &ImageStore,
) -> anyhow::Result<(String, String)> {
    let path = Path::new(image);
    let is_file = image.ends_with(".qcow2") || image.contains('/') || path.is_file();
    if !is_file {
        return Ok((image.to_string(), name.unwrap_or(image).to_string()));
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let name = name.unwrap_or(stem).to_string();
    let req = ImportRequest {
        name: &name,
        disk: path,
        kernel: None,
        initrd: None,
        cmdline: None,
    };
    let img = store.import(&req).map_err(user_error)?;
    eprintln!(
        "imported {} as image \"{name}\" ({})",
        path.display(),
        short(&img)
    );
    Ok((name.clone(), name))
}

/// An image that is not in the store is the user's input: exit status 2.
fn push_error(e: ImageError) -> anyhow::Error {
    match e {
        ImageError::Missing { .. } => anyhow::Error::new(InvalidInput(format!(
            "labspan image push: {e}; or give a qcow2 file to push"
        ))),
        other => user_error(other),
    }
}

/// The hosts that are up, with their image endpoints and inventories.
async fn image_hosts(cluster: &Path) -> anyhow::Result<Vec<HostImages>> {
    let client = crate::remote::connect(cluster).await?;
    let reply = crate::remote::call(&client, &Request::ImageHosts).await;
    client.close().await;
    match reply? {
        Reply::ImageHosts(hosts) => Ok(hosts),
        other => anyhow::bail!("unexpected reply to ImageHosts: {other:?}"),
    }
}

/// Whether the leader lists image `name` at `hash` on `host`, asked for a
/// few seconds (the agent reports a pushed image at once).
async fn wait_known(cluster: &Path, host: &str, name: &str, hash: &str) -> bool {
    Poll::new(KNOWN_POLL_EVERY, KNOWN_WITHIN)
        .until(|| async {
            let hosts = image_hosts(cluster).await.ok()?;
            hosts
                .iter()
                .any(|h| {
                    h.host == host && h.images.iter().any(|i| i.name == name && i.hash == hash)
                })
                .then_some(())
        })
        .await
        .is_some()
}

/// The first up host that serves images.
pub(crate) fn pick(hosts: &[HostImages]) -> anyhow::Result<(String, SocketAddr)> {
    for h in hosts {
        if let Some(addr) = h.addr.as_deref().and_then(|a| a.parse().ok()) {
            return Ok((h.host.clone(), addr));
        }
    }
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    anyhow::bail!(
        "no lab host that is up serves images (up: {}): start the agents with an image endpoint \
         (`labspan agent run --image-listen ADDR`, on by default)",
        names.join(", ")
    )
}

/// One image on one host, as `image list --cluster` shows it.
#[derive(serde::Serialize)]
struct HostImage<'a> {
    image: &'a str,
    host: &'a str,
    size: u64,
    hash: &'a str,
    digest: &'a str,
}

/// `labspan image list --cluster FILE`: which up host holds which image,
/// with sizes and hashes (the copies of one image share both).
pub fn list_cluster(cluster: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let hosts = rt.block_on(image_hosts(cluster))?;
    let mut rows: Vec<HostImage<'_>> = hosts
        .iter()
        .flat_map(|h| {
            h.images.iter().map(|i| HostImage {
                image: &i.name,
                host: &h.host,
                size: i.size,
                hash: &i.hash,
                digest: &i.digest,
            })
        })
        .collect();
    rows.sort_by(|a, b| (a.image, a.host).cmp(&(b.image, b.host)));
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        let up: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
        println!("no host holds an image (hosts up: {})", up.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    let wide = |f: fn(&HostImage<'_>) -> usize, title: &str| {
        rows.iter().map(f).chain([title.len()]).max().unwrap_or(0)
    };
    let (wi, wh) = (
        wide(|r| r.image.len(), "IMAGE"),
        wide(|r| r.host.len(), "HOST"),
    );
    println!(
        "{:<wi$} {:<wh$} {:>10}  {:<12}  DIGEST",
        "IMAGE", "HOST", "SIZE", "HASH"
    );
    for r in &rows {
        println!(
            "{:<wi$} {:<wh$} {:>10}  {:<12}  {}",
            r.image,
            r.host,
            format!("{:.1} MiB", r.size as f64 / (1024.0 * 1024.0)),
            r.hash.chars().take(12).collect::<String>(),
            r.digest.chars().take(16).collect::<String>(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
