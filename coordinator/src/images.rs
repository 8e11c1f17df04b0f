//! Which bits of each image a lab runs, and where hosts fetch them: pure
//! decisions over the inventories agents report.
//!
//! Every host of a lab must run the same bits of an image, so a name is
//! resolved once for the cluster: among the hosts that are up, the store
//! hash held by the most hosts (ties: the smallest hash), and of that hash
//! the content digest held by the most of its holders (same tie rule).

use std::collections::{BTreeMap, BTreeSet};

use labspan_proto::image::{ImageInfo, ImagePlan, ImageSource};
use labspan_proto::lab::Lab;
use labspan_proto::msg::HostImages;
use labspan_proto::plan::HostPlan;

/// What the leader knows of one host's images (soft state, not in Raft).
pub type Inventories = BTreeMap<String, HostImages>;

/// The resolved image `name`, with every up host that holds it, or `None`
/// when no up host reports it.
pub fn resolve(name: &str, inventories: &Inventories, up: &BTreeSet<String>) -> Option<ImagePlan> {
    let holders: Vec<(&HostImages, &ImageInfo)> = inventories
        .values()
        .filter(|h| up.contains(&h.host))
        .filter_map(|h| h.images.iter().find(|i| i.name == name).map(|i| (h, i)))
        .collect();
    let hash = most_common(holders.iter().map(|(_, i)| i.hash.as_str()))?;
    let of_hash: Vec<_> = holders.iter().filter(|(_, i)| i.hash == hash).collect();
    let digest = most_common(of_hash.iter().map(|(_, i)| i.digest.as_str()))?;
    let same: Vec<_> = of_hash.iter().filter(|(_, i)| i.digest == digest).collect();
    let size = same.first().map_or(0, |(_, i)| i.size);
    let sources = same
        .iter()
        .filter_map(|(h, _)| {
            h.addr.as_ref().map(|addr| ImageSource {
                host: h.host.clone(),
                addr: addr.clone(),
            })
        })
        .collect();
    Some(ImagePlan {
        name: name.to_string(),
        hash: hash.to_string(),
        digest: digest.to_string(),
        size,
        sources,
    })
}

/// The value seen most often; ties go to the smallest.
fn most_common<'a>(values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    // BTreeMap iterates in ascending order and max_by_key keeps the last
    // maximum, so iterate in reverse to keep the smallest of equal counts.
    counts
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .map(|(v, _)| v)
}

/// Fills every lab plan's `images` with the images its VMs use, resolved
/// over `inventories`; a plan's own host is never its own source. Names no
/// up host holds are left out (the agent uses or builds its own copy).
pub fn attach(
    plans: &mut BTreeMap<String, HostPlan>,
    inventories: &Inventories,
    up: &BTreeSet<String>,
) {
    let mut cache: BTreeMap<String, Option<ImagePlan>> = BTreeMap::new();
    for (host, plan) in plans.iter_mut() {
        for lab in &mut plan.labs {
            let names: BTreeSet<&String> = lab.vms.iter().map(|v| &v.image).collect();
            let mut images = Vec::new();
            for name in names {
                let resolved = cache
                    .entry(name.clone())
                    .or_insert_with(|| resolve(name, inventories, up));
                if let Some(image) = resolved {
                    let mut image = image.clone();
                    image.sources.retain(|s| &s.host != host);
                    images.push(image);
                }
            }
            lab.images = images;
        }
    }
}

/// Why a lab cannot be deployed with the images the cluster has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "lab \"{lab}\": image \"{image}\" (node \"{node}\") is on no host that is up: \
     add it to the cluster with `labspan image push {image}` (or `labspan image push FILE.qcow2 --name {image}`)"
)]
pub struct MissingImage {
    pub lab: String,
    pub node: String,
    pub image: String,
}

/// Checks that every image `lab` uses is held by an up host or is built by
/// the agents themselves (`builtin`). While some up host has not reported
/// its inventory yet, nothing is refused: that host may hold it.
pub fn check_lab(
    lab: &Lab,
    inventories: &Inventories,
    up: &BTreeSet<String>,
    builtin: impl Fn(&str) -> bool,
) -> Result<(), MissingImage> {
    if up.is_empty() || up.iter().any(|h| !inventories.contains_key(h)) {
        return Ok(());
    }
    for (node, spec) in &lab.nodes {
        if builtin(&spec.image) || resolve(&spec.image, inventories, up).is_some() {
            continue;
        }
        return Err(MissingImage {
            lab: lab.name.clone(),
            node: node.clone(),
            image: spec.image.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, hash: &str, digest: &str) -> ImageInfo {
        ImageInfo {
            name: name.into(),
            hash: hash.into(),
            digest: digest.into(),
            size: 10,
        }
    }

    fn inv(hosts: &[(&str, Vec<ImageInfo>)]) -> Inventories {
        hosts
            .iter()
            .map(|(h, images)| {
                (
                    h.to_string(),
                    HostImages {
                        host: h.to_string(),
                        addr: Some(format!("{h}:7102")),
                        images: images.clone(),
                    },
                )
            })
            .collect()
    }

    fn up(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn the_hash_most_hosts_hold_wins_then_the_smallest() {
        let i = inv(&[
            ("h1", vec![info("x", "bbb", "d2")]),
            ("h2", vec![info("x", "aaa", "d1")]),
            ("h3", vec![info("x", "bbb", "d2")]),
        ]);
        let r = resolve("x", &i, &up(&["h1", "h2", "h3"])).expect("resolved");
        assert_eq!((r.hash.as_str(), r.digest.as_str()), ("bbb", "d2"));
        let hosts: Vec<&str> = r.sources.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["h1", "h3"]);
        // h3 down: one each, the smallest hash wins.
        let r = resolve("x", &i, &up(&["h1", "h2"])).expect("resolved");
        assert_eq!(r.hash, "aaa");
        assert!(resolve("y", &i, &up(&["h1", "h2", "h3"])).is_none());
        assert!(resolve("x", &i, &up(&[])).is_none());
    }

    #[test]
    fn a_lab_whose_image_nobody_has_is_refused_with_the_fix() {
        let text = "name: l\nnodes:\n  a: {image: mine}\n  b: {image: tiny}\n";
        let lab = labspan_proto::lab::parse("l.yaml", text).expect("lab");
        let builtin = |n: &str| labspan_proto::image::BUILTIN.contains(&n);
        let hosts = up(&["h1", "h2"]);
        let empty = inv(&[("h1", vec![]), ("h2", vec![])]);
        let err = check_lab(&lab, &empty, &hosts, builtin).expect_err("nobody has it");
        let msg = err.to_string();
        assert!(msg.contains("image \"mine\" (node \"a\")"), "{msg}");
        assert!(msg.contains("labspan image push mine"), "{msg}");
        // One holder is enough; tiny is built by the agents.
        let held = inv(&[("h1", vec![]), ("h2", vec![info("mine", "a", "d")])]);
        assert_eq!(check_lab(&lab, &held, &hosts, builtin), Ok(()));
        // A holder that is down does not count.
        assert!(check_lab(&lab, &held, &up(&["h1"]), builtin).is_err());
        // An up host that has not reported yet may hold it: not refused.
        let partial = inv(&[("h1", vec![])]);
        assert_eq!(check_lab(&lab, &partial, &hosts, builtin), Ok(()));
    }

    #[test]
    fn a_host_is_not_its_own_source() {
        let i = inv(&[("h1", vec![info("x", "a", "d")]), ("h2", vec![])]);
        let vm = |image: &str| labspan_proto::plan::VmPlan {
            name: "v".into(),
            image: image.into(),
            memory_mib: 64,
            cpus: 1,
            nics: vec![],
            config: Default::default(),
            restart: Default::default(),
            incoming: None,
            restore: None,
        };
        let lab = labspan_proto::plan::LabPlan {
            lab: "l".into(),
            segments: vec![],
            vms: vec![vm("x"), vm("tiny")],
            verify: vec![],
            images: vec![],
        };
        let mut plans: BTreeMap<String, HostPlan> = ["h1", "h2"]
            .iter()
            .map(|h| {
                let plan = HostPlan {
                    host: h.to_string(),
                    labs: vec![lab.clone()],
                    kept_checkpoints: Vec::new(),
                    generation: 0,
                };
                (h.to_string(), plan)
            })
            .collect();
        attach(&mut plans, &i, &up(&["h1", "h2"]));
        let h1 = &plans["h1"].labs[0].images;
        let h2 = &plans["h2"].labs[0].images;
        assert_eq!(h1.len(), 1, "tiny is held by nobody: left out");
        assert!(h1[0].sources.is_empty());
        assert_eq!(h2[0].sources[0].host, "h1");
    }
}
