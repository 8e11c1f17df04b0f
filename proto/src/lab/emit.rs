//! Writes a `Lab` back as lab-file text. The output is JSON, which is YAML
//! too: every value is quoted, so nothing is re-typed on the way back in.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{Check, HostSelector, Impairment, Lab, Link, RestartPolicy};

#[derive(Serialize)]
struct FileLab<'a> {
    name: &'a str,
    nodes: BTreeMap<&'a str, FileNode<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    links: Vec<FileLink>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    lans: BTreeMap<&'a str, Vec<String>>,
    #[serde(skip_serializing_if = "FilePlacement::is_empty")]
    placement: FilePlacement<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    verify: Vec<FileCheck<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resilience: Option<FileResilience>,
}

#[derive(Serialize)]
struct FileResilience {
    checkpoint_every: String,
}

#[derive(Serialize)]
struct FileNode<'a> {
    image: &'a str,
    memory: String,
    cpus: u32,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    nics: BTreeMap<&'a str, FileNic>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    exec: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    files: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<&'static str>,
}

#[derive(Serialize)]
struct FileNic {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ip: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum FileLink {
    Plain([String; 2]),
    Impaired {
        endpoints: [String; 2],
        #[serde(skip_serializing_if = "Option::is_none")]
        delay: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        jitter: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        loss: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rate: Option<String>,
    },
}

#[derive(Serialize)]
struct FilePlacement<'a> {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pin: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "<[Vec<String>]>::is_empty")]
    together: &'a [Vec<String>],
    #[serde(skip_serializing_if = "<[Vec<String>]>::is_empty")]
    spread: &'a [Vec<String>],
}

impl FilePlacement<'_> {
    fn is_empty(&self) -> bool {
        self.pin.is_empty() && self.together.is_empty() && self.spread.is_empty()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum FileCheck<'a> {
    Ping {
        from: &'a str,
        to: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
    Exec {
        node: &'a str,
        cmd: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        expect: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout: Option<String>,
    },
}

fn file_link(link: &Link) -> FileLink {
    let ends = [link.endpoints[0].to_string(), link.endpoints[1].to_string()];
    let Impairment {
        delay_us,
        jitter_us,
        loss_percent,
        rate_kbit,
    } = link.impairment;
    if link.impairment.is_none() {
        return FileLink::Plain(ends);
    }
    FileLink::Impaired {
        endpoints: ends,
        delay: delay_us.map(|d| format!("{d}us")),
        jitter: jitter_us.map(|d| format!("{d}us")),
        loss: loss_percent.map(|l| format!("{l}%")),
        rate: rate_kbit.map(|r| format!("{r}kbit")),
    }
}

fn file_check(check: &Check) -> FileCheck<'_> {
    let timeout = check.timeout().map(|t| format!("{}us", t.as_micros()));
    match check {
        Check::Ping { from, to, .. } => FileCheck::Ping { from, to, timeout },
        Check::Exec {
            node, cmd, expect, ..
        } => FileCheck::Exec {
            node,
            cmd,
            expect: expect.as_deref(),
            timeout,
        },
    }
}

/// The lab as lab-file text; `parse(to_yaml(lab))` gives back `lab`.
pub fn to_yaml(lab: &Lab) -> String {
    let nodes = lab
        .nodes
        .iter()
        .map(|(name, n)| {
            let nics = n
                .nics
                .iter()
                .map(|(k, nic)| {
                    let ip = nic.ip.iter().map(|i| i.to_string()).collect();
                    (k.as_str(), FileNic { ip, mtu: nic.mtu })
                })
                .collect();
            let node = FileNode {
                image: &n.image,
                memory: format!("{}MiB", n.memory_mib),
                cpus: n.cpus,
                nics,
                exec: &n.exec,
                files: &n.files,
                restart: (n.restart != RestartPolicy::default()).then(|| n.restart.as_str()),
            };
            (name.as_str(), node)
        })
        .collect();
    let pin = lab
        .placement
        .pin
        .iter()
        .map(|(n, s)| (n.as_str(), selector(s)))
        .collect();
    let file = FileLab {
        name: &lab.name,
        nodes,
        links: lab.links.iter().map(file_link).collect(),
        lans: lab
            .lans
            .iter()
            .map(|(k, l)| {
                (
                    k.as_str(),
                    l.members.iter().map(|m| m.to_string()).collect(),
                )
            })
            .collect(),
        placement: FilePlacement {
            pin,
            together: &lab.placement.together,
            spread: &lab.placement.spread,
        },
        verify: lab.verify.iter().map(file_check).collect(),
        resilience: lab.resilience.checkpoint_every.map(|every| FileResilience {
            checkpoint_every: format!("{}s", every.as_secs()),
        }),
    };
    // Serializing plain maps, strings and numbers cannot fail.
    serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
}

fn selector(s: &HostSelector) -> String {
    s.to_string()
}
