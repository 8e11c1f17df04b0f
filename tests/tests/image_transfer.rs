//! Images reach the hosts by themselves: a cluster of two test hosts, each
//! with its own image store, where only h1 holds `tiny`. A lab with a node
//! on each host boots after h2's agent fetched `tiny` from h1 over the
//! agents' image endpoints; `labspan image push` adds an image under a new
//! name to one host, and a lab using it runs on both; a lab naming an image
//! no host has is refused with the fix.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is its job

use std::fs;
use std::path::Path;
use std::process::Command;

use labspan_tests::daemons::{ok, start_cluster, Daemons};
use labspan_tests::{text, write_lab, Fabric, TestHost, TEST_IMAGES};

/// The port of the coordinator (on h1's underlay address).
const COORDINATOR_PORT: u16 = 7120;

fn lab(name: &str, image: &str, net: u8) -> String {
    format!(
        r#"
name: {name}
defaults: {{image: {image}, memory: 256MiB, cpus: 1}}
nodes:
  a: {{nics: {{eth0: {{ip: [198.19.{net}.1/24]}}}}}}
  b: {{nics: {{eth0: {{ip: [198.19.{net}.2/24]}}}}}}
links:
  - [a:eth0, b:eth0]
placement:
  spread: [[a, b]]
verify:
  - ping: {{from: a, to: b}}
"#
    )
}

/// Gives `host` a store of its own (the harness links the shared one),
/// holding a copy of the shared store's image `name` when `copy` is set.
fn own_store(host: &TestHost, copy: Option<&str>) {
    let store = host.state.join("images");
    fs::remove_file(&store).expect("unlinking the shared store");
    fs::create_dir_all(store.join("names")).expect("creating the store");
    fs::create_dir_all(store.join("objects")).expect("creating the store");
    if let Some(name) = copy {
        let shared = Path::new(TEST_IMAGES);
        let hash = fs::read_to_string(shared.join("names").join(name)).expect("shared image");
        let hash = hash.trim();
        let out = Command::new("cp")
            .arg("-a")
            .arg(shared.join("objects").join(hash))
            .arg(store.join("objects"))
            .output()
            .expect("cp");
        assert!(out.status.success(), "copying {name}: {}", text(&out));
        fs::write(store.join("names").join(name), format!("{hash}\n")).expect("name");
    }
}

fn hash_of(host: &TestHost, name: &str) -> Option<String> {
    let index = host.state.join("images").join("names").join(name);
    fs::read_to_string(index).ok().map(|h| h.trim().to_string())
}

#[test]
fn a_host_without_the_image_fetches_it_and_pushed_images_spread() {
    let fabric = Fabric::new("img", 2);
    let (h1, h2) = (&fabric.hosts[0], &fabric.hosts[1]);
    h1.ensure_tiny();
    own_store(h1, Some("tiny"));
    own_store(h2, None);
    let mut daemons = Daemons::default();
    let coordinator = h1.underlay_addr(COORDINATOR_PORT);
    let admin = start_cluster(&fabric, &coordinator, &mut daemons);

    // h2 holds nothing: its node boots from the copy it fetches from h1.
    let file = write_lab(h1, "fetch.yaml", &lab("fetch", "tiny", 41));
    let shown = ok(
        &h1.labspan(&["up", file.to_str().expect("utf-8"), "--cluster", &admin]),
        "labspan up (h2 fetches tiny)",
    );
    assert!(shown.contains("PASS ping a -> b"), "{shown}");
    assert_eq!(hash_of(h2, "tiny"), hash_of(h1, "tiny"), "h2 has h1's tiny");
    let hash = hash_of(h2, "tiny").expect("tiny on h2");
    let fetched = h2.state.join("images/objects").join(&hash);
    assert!(
        fetched.join("digest.json").is_file(),
        "the fetched copy was verified"
    );
    let log = fs::read_to_string(h2.state.join("agent.log")).unwrap_or_default();
    let fetch = log.lines().rfind(|l| l.contains("Fetching"));
    let fetch = fetch.unwrap_or_else(|| panic!("no fetch progress in h2's log:\n{log}"));
    assert!(fetch.contains("from: \"h1\""), "{fetch}");
    eprintln!("h2: {fetch}");

    // An image no host has is refused with the fix, before anything runs.
    let file = write_lab(h1, "nope.yaml", &lab("nope", "nope", 42));
    let out = h1.labspan(&["up", file.to_str().expect("utf-8"), "--cluster", &admin]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("labspan image push nope"),
        "{}",
        text(&out)
    );

    // Pushed under a new name to one host, it runs on both.
    let push = ok(
        &h1.labspan(&[
            "image",
            "push",
            "tiny",
            "--name",
            "mine",
            "--cluster",
            &admin,
        ]),
        "labspan image push",
    );
    assert!(push.contains("pushed image \"mine\""), "{push}");
    eprintln!("{push}");
    let file = write_lab(h1, "pushed.yaml", &lab("pushed", "mine", 43));
    let shown = ok(
        &h1.labspan(&["up", file.to_str().expect("utf-8"), "--cluster", &admin]),
        "labspan up (pushed image)",
    );
    assert!(shown.contains("PASS ping a -> b"), "{shown}");
    assert_eq!(hash_of(h1, "mine").as_deref(), Some(hash.as_str()));
    assert_eq!(hash_of(h2, "mine").as_deref(), Some(hash.as_str()));
    // Pushing what the cluster has is a no-op; an unknown image is refused.
    let again = ok(
        &h1.labspan(&[
            "image",
            "push",
            "tiny",
            "--name",
            "mine",
            "--cluster",
            &admin,
        ]),
        "labspan image push (again)",
    );
    assert!(again.contains("already in the cluster"), "{again}");
    let out = h1.labspan(&["image", "push", "nothing-here", "--cluster", &admin]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("\"nothing-here\""), "{}", text(&out));

    for name in ["fetch", "pushed"] {
        ok(
            &h1.labspan(&["down", name, "--cluster", &admin]),
            "labspan down --cluster",
        );
    }
    drop(daemons);
}
