use std::net::SocketAddr;
use std::sync::Mutex;

use crate::endpoint::{image_client_endpoint, image_server_endpoint};
use labspan_proto::image::{ImagePlan, ImageSource};
use labspan_proto::msg::Role;
use labspan_transport::tls::{ClusterCa, NodeCredential};
use labspan_transport::{read_message_within, write_message};
use quinn::Endpoint;
use tokio::task::JoinHandle;

use super::*;
use crate::msg::{ImageReply, ImageRequest};
use crate::{GuestKind, ImageStore, Manifest};

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// A store holding image `x`: a 5 MiB disk (several chunks) and a manifest.
fn source_store(root: &std::path::Path) -> (ImageStore, String) {
    let store = ImageStore::at(root);
    let work = store.work_dir("t").expect("work dir");
    let staged = work.0.join("image");
    std::fs::create_dir_all(&staged).expect("mkdir");
    let disk: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(staged.join("disk.qcow2"), disk).expect("write");
    let hash = "b".repeat(64);
    let m = Manifest {
        name: "x".into(),
        hash: hash.clone(),
        kernel: None,
        initrd: None,
        disk: Some("disk.qcow2".into()),
        cmdline: String::new(),
        guest: GuestKind {
            kind: "imported".into(),
            guest_agent: true,
        },
        recipe: vec![],
    };
    store.commit(&staged, &m).expect("commit");
    (store, hash)
}

fn server(ca: &ClusterCa, me: &NodeCredential) -> (Endpoint, SocketAddr) {
    let ep =
        image_server_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), me).expect("server endpoint");
    let addr = ep.local_addr().expect("bound");
    (ep, addr)
}

/// An image endpoint that offers the right digest, then sends the files
/// with one byte flipped: what a bad disk or a broken path does.
fn corrupting_server(ep: Endpoint, store: ImageStore) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Ok(ImageRequest::Get { hash }) =
                    read_message_within(&mut recv, MAX_ENVELOPE).await
                else {
                    continue;
                };
                let digest = store.digest(&hash).expect("digest");
                let offer = ImageReply::Offer {
                    hash: hash.clone(),
                    digest: digest.clone(),
                };
                write_message(&mut send, &offer).await.expect("offer");
                let mut bytes = Vec::new();
                for f in &digest.files {
                    bytes.extend(
                        std::fs::read(store.object_dir(&hash).join(&f.name)).expect("read"),
                    );
                }
                bytes[1000] ^= 1;
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
            }
        }
    })
}

fn plan(hash: &str, digest: &str, sources: Vec<ImageSource>) -> ImagePlan {
    ImagePlan {
        name: "x".into(),
        hash: hash.into(),
        digest: digest.into(),
        size: 0,
        sources,
    }
}

#[tokio::test]
async fn a_corrupt_source_is_detected_and_the_fetch_retries_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, hash) = source_store(&dir.path().join("src"));
    let digest = src.digest(&hash).expect("digest");
    let ca = ClusterCa::generate("t").expect("ca");
    let (bad_ep, bad_addr) = server(&ca, &ca.issue("host0", Role::Agent).expect("cert"));
    let (good_ep, good_addr) = server(&ca, &ca.issue("host1", Role::Agent).expect("cert"));
    let bad = corrupting_server(bad_ep.clone(), src.clone());
    let good = serve(good_ep.clone(), src.clone(), Default::default());
    let me = ca.issue("host2", Role::Agent).expect("cert");
    let client = image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &me).expect("client");
    let dst = ImageStore::at(dir.path().join("dst"));
    let fetcher = Fetcher::new(client, dst.clone());
    let sources = vec![
        ImageSource {
            host: "host0".into(),
            addr: bad_addr.to_string(),
        },
        ImageSource {
            host: "host1".into(),
            addr: good_addr.to_string(),
        },
    ];
    let seen = Mutex::new(Vec::new());
    let retries = Mutex::new(Vec::new());
    let img = fetcher
        .ensure(
            &plan(&hash, &digest.digest, sources),
            &|p| seen.lock().expect("lock").push(p),
            &|from, why| retries.lock().expect("lock").push(format!("{from}: {why}")),
        )
        .await
        .expect("fetched on the second attempt");
    let retries = retries.into_inner().expect("lock");
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(retries[0].starts_with("host0: "), "{retries:?}");
    assert!(retries[0].contains("disk.qcow2 is corrupt"), "{retries:?}");
    assert_eq!(dst.get("x").expect("named"), img);
    assert_eq!(
        crate::digest::digest_folder(&img.dir).expect("digest"),
        digest
    );
    let last = seen
        .into_inner()
        .expect("lock")
        .pop()
        .expect("progress reported");
    assert_eq!((last.from.as_str(), last.bytes), ("host1", digest.size()));
    // Already here: no transfer at all the second time.
    let again = fetcher
        .ensure(
            &plan(&hash, &digest.digest, vec![]),
            &|_| panic!("no transfer"),
            &|_, _| {},
        )
        .await
        .expect("present");
    assert_eq!(again, img);
    bad.abort();
    good.abort();
}

#[tokio::test]
async fn every_attempt_failing_names_each_source_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, hash) = source_store(&dir.path().join("src"));
    let digest = src.digest(&hash).expect("digest");
    let ca = ClusterCa::generate("t").expect("ca");
    let (bad_ep, bad_addr) = server(&ca, &ca.issue("host0", Role::Agent).expect("cert"));
    let bad = corrupting_server(bad_ep.clone(), src.clone());
    let me = ca.issue("host2", Role::Agent).expect("cert");
    let client = image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &me).expect("client");
    let dst = ImageStore::at(dir.path().join("dst"));
    let sources = vec![ImageSource {
        host: "host0".into(),
        addr: bad_addr.to_string(),
    }];
    let err = Fetcher::new(client, dst.clone())
        .ensure(&plan(&hash, &digest.digest, sources), &|_| {}, &|_, _| {})
        .await
        .expect_err("every copy is corrupt");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("after {FETCH_ATTEMPTS} attempts")),
        "{msg}"
    );
    assert!(msg.contains("image \"x\""), "{msg}");
    assert!(msg.contains("from host host0"), "{msg}");
    assert!(!dst.root().join("names").exists());
    assert_eq!(
        std::fs::read_dir(dst.root().join("objects"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    bad.abort();
}

#[tokio::test]
async fn roles_decide_who_fetches_and_who_pushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, hash) = source_store(&dir.path().join("src"));
    let digest = src.digest(&hash).expect("digest");
    let ca = ClusterCa::generate("t").expect("ca");
    let dst = ImageStore::at(dir.path().join("dst"));
    let (ep, addr) = server(&ca, &ca.issue("host1", Role::Agent).expect("cert"));
    let task = serve(ep.clone(), dst.clone(), Default::default());
    let admin = ca.issue("alice", Role::Admin).expect("cert");
    let admin_ep =
        image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &admin).expect("client");
    // An admin pushes: the agent verifies and stores it.
    let host = push(&admin_ep, addr, &src, "x", "x").await.expect("pushed");
    assert_eq!(host, "host1");
    assert_eq!(dst.digest(&hash).expect("digest"), digest);
    assert_eq!(dst.get("x").expect("named").manifest.hash, hash);
    // An admin fetches (`labspan save`), a viewer may not; an agent
    // may not push.
    let sources = vec![ImageSource {
        host: "host1".into(),
        addr: addr.to_string(),
    }];
    let other = ImageStore::at(dir.path().join("other"));
    Fetcher::new(admin_ep.clone(), other.clone())
        .ensure(
            &plan(&hash, &digest.digest, sources.clone()),
            &|_| {},
            &|_, _| {},
        )
        .await
        .expect("an admin fetches");
    assert_eq!(other.digest(&hash).expect("digest"), digest);
    let viewer = ca.issue("bob", Role::Viewer).expect("cert");
    let viewer_ep =
        image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &viewer).expect("client");
    let err = Fetcher::new(viewer_ep.clone(), ImageStore::at(dir.path().join("v")))
        .ensure(&plan(&hash, &digest.digest, sources), &|_| {}, &|_, _| {})
        .await
        .expect_err("viewers do not fetch");
    assert!(err.to_string().contains("may not fetch"), "{err}");
    let agent = ca.issue("host2", Role::Agent).expect("cert");
    let agent_ep =
        image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &agent).expect("client");
    let err = push(&agent_ep, addr, &src, "x", "x")
        .await
        .expect_err("agents do not push");
    assert!(err.to_string().contains("may not push"), "{err}");
    // A server that is not an agent is not trusted by image clients.
    let (fake_ep, fake_addr) = server(&ca, &admin);
    let fake = serve(fake_ep.clone(), src.clone(), Default::default());
    let err = push(&admin_ep, fake_addr, &src, "x", "x")
        .await
        .expect_err("not an agent");
    assert!(matches!(err, AttemptError::Transport(_)), "{err}");
    task.abort();
    fake.abort();
}

/// Prints the rate of a 256 MiB fetch over loopback (a figure, not a
/// check): `cargo test --release -p labspan-agent --lib throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, hash) = source_store(&dir.path().join("src"));
    let big: Vec<u8> = (0..256 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.object_dir(&hash).join("disk.qcow2"), big).expect("write");
    std::fs::remove_file(src.object_dir(&hash).join(crate::digest::DIGEST_FILE)).ok();
    let started = std::time::Instant::now();
    let digest = src.digest(&hash).expect("digest");
    let hashing = started.elapsed();
    let ca = ClusterCa::generate("t").expect("ca");
    let (ep, addr) = server(&ca, &ca.issue("host1", Role::Agent).expect("cert"));
    let task = serve(ep.clone(), src.clone(), Default::default());
    let me = ca.issue("host2", Role::Agent).expect("cert");
    let client = image_client_endpoint(SocketAddr::from(LOOPBACK), ca.cert(), &me).expect("client");
    let dst = ImageStore::at(dir.path().join("dst"));
    let sources = vec![ImageSource {
        host: "host1".into(),
        addr: addr.to_string(),
    }];
    let last = Mutex::new(None);
    Fetcher::new(client, dst)
        .ensure(
            &plan(&hash, &digest.digest, sources),
            &|p| *last.lock().expect("lock") = Some(p),
            &|_, _| {},
        )
        .await
        .expect("fetched");
    let p = last.into_inner().expect("lock").expect("progress");
    eprintln!(
        "digest of {} MiB: {:.2} s; fetch: {:.1} MiB/s",
        digest.size() >> 20,
        hashing.as_secs_f64(),
        p.mib_per_s
    );
    task.abort();
}
