//! The images of a lab archive. `save` puts each image the lab
//! uses into the archive as its store folder (`images/objects/HASH/`, by
//! hash: the folder a host's store keeps it in), unless told
//! `--without-images`; `load` checks each one against the digest the
//! archive names before anything is asked of a cluster, and brings an
//! image the cluster lacks to one of its hosts before it deploys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::{bail, Context};
use labspan_image::digest::digest_folder;
use labspan_image::endpoint::image_client_endpoint;
use labspan_image::transfer::{self, Fetcher};
use labspan_image::{Expected, ImageStore};
use labspan_proto::image::{ImageDigest, ImageInfo, ImagePlan, ImageSource};
use labspan_proto::msg::HostImages;
use labspan_transport::client::any_local;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The archive folder its images are under: a store of their own once
/// unpacked.
const ROOT: &str = "images";

/// The member holding `file` of the image stored at `hash`.
pub fn member(hash: &str, file: &str) -> String {
    format!("{ROOT}/objects/{hash}/{file}")
}

/// One image a lab uses, as the cluster has it, and the hosts that serve it.
pub struct ClusterImage {
    pub info: ImageInfo,
    pub sources: Vec<ImageSource>,
}

/// Each image the lab's nodes use (`names`), as the cluster's hosts list it.
pub fn of_lab<'a>(
    hosts: &[HostImages],
    names: impl Iterator<Item = &'a String>,
) -> anyhow::Result<BTreeMap<String, ClusterImage>> {
    let mut out = BTreeMap::new();
    for name in names {
        let info = hosts
            .iter()
            .flat_map(|h| &h.images)
            .find(|i| &i.name == name)
            .with_context(|| format!("no host of the cluster has image {name:?}"))?;
        let sources = hosts
            .iter()
            .filter(|h| h.images.iter().any(|i| i.digest == info.digest))
            .filter_map(|h| {
                h.addr.clone().map(|addr| ImageSource {
                    host: h.host.clone(),
                    addr,
                })
            })
            .collect();
        out.insert(
            name.clone(),
            ClusterImage {
                info: info.clone(),
                sources,
            },
        );
    }
    Ok(out)
}

/// The folder holding `img`'s files, and their digest: this machine's own
/// store when it has that build (the embedded default's store), else a
/// copy fetched into `scratch` from a host that serves it (checked
/// against the digest as an agent's fetch is).
pub async fn fetch(
    cluster: &Path,
    img: &ClusterImage,
    scratch: &ImageStore,
) -> anyhow::Result<(PathBuf, ImageDigest)> {
    let ImageInfo {
        name, hash, digest, ..
    } = &img.info;
    let local = ImageStore::in_state(&labspan_agent::paths::state_dir());
    if local.has(hash) {
        if let Ok(d) = local.digest(hash) {
            if &d.digest == digest {
                return Ok((local.object_dir(hash), d));
            }
        }
    }
    let Some(first) = img.sources.first() else {
        bail!(
            "no host that holds image {name:?} serves images: save with --without-images to leave it out"
        );
    };
    let addr: SocketAddr = first
        .addr
        .parse()
        .with_context(|| format!("image endpoint {:?} of host {:?}", first.addr, first.host))?;
    let (ca, me) = crate::remote::load_cluster_file(cluster)?.credential()?;
    let endpoint = image_client_endpoint(any_local(addr), &ca, &me)?;
    let fetcher = Fetcher::new(endpoint.clone(), scratch.clone());
    let plan = ImagePlan {
        name: name.clone(),
        hash: hash.clone(),
        digest: digest.clone(),
        size: img.info.size,
        sources: img.sources.clone(),
    };
    let fetched = fetcher.ensure(&plan, &|_| {}, &|_, _| {}).await;
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    fetched.with_context(|| format!("fetching image {name:?} to save it"))?;
    Ok((scratch.object_dir(hash), scratch.digest(hash)?))
}

/// The images an archive holds, checked: each named one's folder is
/// whole and has the digest the archive names for it. The store they
/// make in the unpacked archive.
pub fn check_archived(
    file: &Path,
    unpacked: &crate::archive::Unpacked,
    digests: &BTreeMap<String, String>,
    objects: &BTreeMap<String, String>,
) -> anyhow::Result<ImageStore> {
    let store = ImageStore::at(unpacked.path(ROOT));
    let corrupt =
        |why: String| anyhow::anyhow!("{}: the archive is corrupt: {why}", file.display());
    for (name, hash) in objects {
        let Some(want) = digests.get(name) else {
            return Err(corrupt(format!(
                "it holds image {name:?} but names no digest for it"
            )));
        };
        if !store.has(hash) {
            return Err(corrupt(format!(
                "it lists image {name:?} as {hash} but holds no whole copy of it"
            )));
        }
        let got = digest_folder(&store.object_dir(hash)).map_err(|e| corrupt(e.to_string()))?;
        if &got.digest != want {
            return Err(corrupt(format!(
                "image {name:?} in it has digest {}, its manifest names {want}",
                got.digest
            )));
        }
        store
            .name_hash(name, hash)
            .map_err(|e| corrupt(format!("image {name:?}: {e}")))?;
    }
    Ok(store)
}

/// Brings image `name` from `from` (the unpacked archive's store) to the
/// cluster: pushed to `to`, a host that serves images, which checks its
/// digest.
pub async fn push(
    cluster: &Path,
    from: &ImageStore,
    name: &str,
    to: (&str, SocketAddr),
) -> anyhow::Result<()> {
    let (ca, me) = crate::remote::load_cluster_file(cluster)?.credential()?;
    let endpoint = image_client_endpoint(any_local(to.1), &ca, &me)?;
    let pushed = transfer::push(&endpoint, to.1, from, name, name).await;
    endpoint.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    pushed.with_context(|| format!("bringing image {name:?} to host {}", to.0))?;
    Ok(())
}

/// Copies image `name` from `from` into this machine's store, checked
/// against its digest as a fetched image is (the embedded default).
pub async fn import_here(from: &ImageStore, name: &str) -> anyhow::Result<()> {
    let img = from.get(name)?;
    let hash = &img.manifest.hash;
    let digest = from.digest(hash)?;
    let to = ImageStore::in_state(&labspan_agent::paths::state_dir());
    if to.has(hash) {
        to.name_hash(name, hash)?;
        return Ok(());
    }
    let dir = from.object_dir(hash);
    let mut files: Pin<Box<dyn AsyncRead + Send>> = Box::pin(tokio::io::empty());
    for f in &digest.files {
        let path = dir.join(&f.name);
        let file = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        files = Box::pin(files.chain(file));
    }
    let want = Expected {
        name,
        hash,
        digest: &digest.digest,
    };
    to.receive(want, &digest, &mut files, &mut |_| {})
        .await
        .with_context(|| format!("importing image {name:?} into {}", to.root().display()))?;
    Ok(())
}
