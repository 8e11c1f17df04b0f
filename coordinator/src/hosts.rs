//! The hosts file: which lab hosts exist, what each can give, and where its
//! VXLAN tunnel endpoint is.
//!
//! ```yaml
//! hosts:
//!   lab-host-1: {memory: 16GiB, cpus: 8, labels: [fast], cpu_overcommit: 4, reserve: 1GiB, vtep: 198.18.0.1}
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node;

use labspan_proto::lab::units::parse_size_mib;
use labspan_proto::names::valid;
use labspan_proto::yaml::{
    self, check_keys, join, missing, want_map, want_seq, want_str, Diagnostics, Pos, Shape, Sink,
};

use crate::placement::HostOffer;

/// Memory kept for the host itself when the file does not say (MiB).
pub const DEFAULT_RESERVE_MIB: u64 = 1024;
/// vCPUs per physical CPU when the file does not say: lab guests mostly idle.
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;

/// One lab host as placement sees it: what the hosts file (or a live
/// host's offer) says it has, and what other labs already take there.
/// The replicated record of a host is `raft::Host`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// Host name (the key in the hosts file).
    pub name: String,
    /// Physical memory, MiB.
    pub memory_mib: u64,
    /// Physical CPUs.
    pub cpus: u32,
    /// Labels that `pin: label:X` hints select on.
    pub labels: BTreeSet<String>,
    /// vCPUs allowed per physical CPU.
    pub cpu_overcommit: f64,
    /// Memory kept for the host's own use, MiB.
    pub reserve_mib: u64,
    /// Address of the host's VXLAN tunnel endpoint.
    pub vtep: Option<IpAddr>,
    /// Memory already taken by VMs of other labs, MiB.
    pub used_memory_mib: u64,
    /// vCPUs already taken by VMs of other labs.
    pub used_vcpus: u64,
    /// Capabilities its agent found missing (`netem`, `tbf`).
    pub lacks: BTreeSet<String>,
}

impl HostSpec {
    /// A host with the defaults for everything but its size.
    pub fn new(name: &str, memory_mib: u64, cpus: u32) -> HostSpec {
        HostSpec {
            name: name.to_string(),
            memory_mib,
            cpus,
            labels: BTreeSet::new(),
            cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
            reserve_mib: DEFAULT_RESERVE_MIB,
            vtep: None,
            used_memory_mib: 0,
            used_vcpus: 0,
            lacks: BTreeSet::new(),
        }
    }

    /// vCPUs VMs may use in all: CPUs × overcommit, rounded down.
    pub fn vcpu_capacity(&self) -> u64 {
        (f64::from(self.cpus) * self.cpu_overcommit).floor() as u64
    }

    /// What placement may use of this host.
    pub fn offer(&self) -> HostOffer {
        HostOffer {
            name: self.name.clone(),
            memory_mib: self.memory_mib.saturating_sub(self.reserve_mib),
            vcpus: self.vcpu_capacity(),
            used_memory_mib: self.used_memory_mib,
            used_vcpus: self.used_vcpus,
            labels: self.labels.clone(),
            lacks: self.lacks.clone(),
        }
    }
}

/// Why a hosts file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file could not be read.
    #[error("{file}: cannot read the hosts file: {cause}")]
    Read {
        /// The file.
        file: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file is not a valid hosts file: every problem in it, each with
    /// its line, column and key, as for a lab file.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and parses a hosts file.
pub fn load_hosts(path: &Path) -> Result<Vec<HostSpec>, HostsError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| HostsError::Read {
        file: file.clone(),
        cause,
    })?;
    parse_hosts(&text, &file)
}

/// What a hosts file's top level must be.
const HOSTS_FILE: Shape = Shape {
    what: "the hosts file",
    start: "start with hosts:, then one entry per lab host",
    no_anchors: "write each host's values out",
};

/// An entry, as an example in help.
const HOST_EXAMPLE: &str = "lab-host-1: {memory: 16GiB, cpus: 8}";

/// Parses the text of a hosts file; `file` is used in errors.
pub fn parse_hosts(text: &str, file: &str) -> Result<Vec<HostSpec>, HostsError> {
    let mut sink = Sink::new(file);
    let hosts = yaml::load(&mut sink, text, HOSTS_FILE)
        .map(|root| read_hosts(&mut sink, &root))
        .unwrap_or_default();
    if !sink.is_clean() {
        return Err(HostsError::Invalid(sink.finish()));
    }
    Ok(hosts)
}

/// Keys a host entry may have.
const HOST_KEYS: &[&str] = &[
    "memory",
    "cpus",
    "labels",
    "cpu_overcommit",
    "reserve",
    "vtep",
];

fn read_hosts(sink: &mut Sink, root: &Node) -> Vec<HostSpec> {
    let Some(top) = want_map(sink, root, "", "a mapping with a hosts: key") else {
        return Vec::new();
    };
    check_keys(sink, top, "", &["hosts"]);
    let Some(node) = top.get_node("hosts") else {
        missing(
            sink,
            top,
            "",
            "hosts",
            &format!("hosts: {{{HOST_EXAMPLE}}}"),
        );
        return Vec::new();
    };
    let Some(entries) = want_map(sink, node, "hosts", "a mapping of host names to sizes") else {
        return Vec::new();
    };
    if entries.is_empty() {
        let help = format!("add one, e.g. {HOST_EXAMPLE}");
        sink.error(Pos::of(node), "hosts", "no host listed".into(), Some(help));
    }
    let mut hosts: Vec<HostSpec> = entries
        .iter()
        .filter_map(|(k, v)| read_host(sink, k, v))
        .collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    hosts
}

/// One entry; `None` (with every problem reported) when it is not valid.
fn read_host(sink: &mut Sink, key: &MarkedScalarNode, node: &Node) -> Option<HostSpec> {
    let name = key.as_str();
    let at = join("hosts", name);
    // A host is the agent that runs on it: its name is a member name.
    let named = match valid::member(name) {
        Ok(()) => true,
        Err(e) => {
            sink.error(Pos::of_span(key.span()), "hosts", e.why, Some(e.help));
            false
        }
    };
    let map = want_map(sink, node, &at, &format!("a mapping like {HOST_EXAMPLE}"))?;
    check_keys(sink, map, &at, HOST_KEYS);
    let memory = match map.get_node("memory") {
        Some(n) => size(sink, n, &join(&at, "memory"), "memory"),
        None => {
            missing(sink, map, &at, "memory", "memory: 16GiB");
            None
        }
    };
    let cpus = match map.get_node("cpus") {
        Some(n) => cpus(sink, n, &join(&at, "cpus")),
        None => {
            missing(sink, map, &at, "cpus", "cpus: 8");
            None
        }
    };
    let reserve = map
        .get_node("reserve")
        .map(|n| size(sink, n, &join(&at, "reserve"), "reserve"));
    let overcommit = map
        .get_node("cpu_overcommit")
        .map(|n| overcommit(sink, n, &join(&at, "cpu_overcommit")));
    let labels = map
        .get_node("labels")
        .map(|n| labels(sink, n, &join(&at, "labels")));
    let vtep = map
        .get_node("vtep")
        .map(|n| vtep(sink, n, &join(&at, "vtep")));
    let mut host = HostSpec::new(name, memory?, cpus?);
    host.reserve_mib = reserve.unwrap_or(Some(DEFAULT_RESERVE_MIB))?;
    host.cpu_overcommit = overcommit.unwrap_or(Some(DEFAULT_CPU_OVERCOMMIT))?;
    host.labels = labels.unwrap_or(Some(BTreeSet::new()))?;
    host.vtep = match vtep {
        Some(ip) => Some(ip?),
        None => None,
    };
    if host.reserve_mib >= host.memory_mib {
        let msg = format!(
            "the reserve ({} MiB) leaves no memory of {} MiB for VMs",
            host.reserve_mib, host.memory_mib
        );
        sink.error(Pos::of_span(map.span()), &join(&at, "reserve"), msg, None);
        return None;
    }
    named.then_some(host)
}

/// The size at `at`, whose key is `key` (the word its errors use).
fn size(sink: &mut Sink, n: &Node, at: &str, key: &str) -> Option<u64> {
    let text = want_str(sink, n, at, "a size like 16GiB")?;
    let problem = match parse_size_mib(key, text) {
        Ok(0) => "a size of 0 leaves no room".to_string(),
        Ok(mib) => return Some(mib),
        Err(why) => why,
    };
    sink.error(Pos::of(n), at, problem, None);
    None
}

fn cpus(sink: &mut Sink, n: &Node, at: &str) -> Option<u32> {
    let text = want_str(sink, n, at, "a number of CPUs")?;
    let cpus = text.parse::<u32>().ok().filter(|&c| c > 0);
    if cpus.is_none() {
        let msg = format!("\"{text}\" is not a whole number of CPUs above 0");
        sink.error(Pos::of(n), at, msg, None);
    }
    cpus
}

fn overcommit(sink: &mut Sink, n: &Node, at: &str) -> Option<f64> {
    let text = want_str(sink, n, at, "a ratio")?;
    let ratio = text
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 64.0);
    if ratio.is_none() {
        let msg = format!("\"{text}\" is not a ratio in (0, 64]");
        sink.error(Pos::of(n), at, msg, Some("e.g. 4 or 1.5".into()));
    }
    ratio
}

fn labels(sink: &mut Sink, n: &Node, at: &str) -> Option<BTreeSet<String>> {
    let items = want_seq(sink, n, at, "a list of labels, e.g. [fast, edge]")?;
    let mut labels = BTreeSet::new();
    let mut all = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{at}[{i}]");
        let Some(label) = want_str(sink, item, &path, "a label") else {
            all = false;
            continue;
        };
        let ok = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            let msg = format!("\"{label}\" is not a label");
            let help = Some("use letters, digits, '-' and '_'".into());
            sink.error(Pos::of(item), &path, msg, help);
            all = false;
        }
        labels.insert(label.to_string());
    }
    all.then_some(labels)
}

fn vtep(sink: &mut Sink, n: &Node, at: &str) -> Option<IpAddr> {
    let text = want_str(sink, n, at, "an IP address")?;
    let ip = text.parse().ok();
    if ip.is_none() {
        let msg = format!("\"{text}\" is not an IP address");
        sink.error(Pos::of(n), at, msg, None);
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "hosts:\n  lab-host-1: {memory: 16GiB, cpus: 8, labels: [fast], cpu_overcommit: 4, reserve: 1GiB, vtep: 198.18.0.1}\n  lab-host-2:\n    memory: 8GiB\n    cpus: 4\n";

    #[test]
    fn parses_hosts_with_defaults() {
        let hosts = parse_hosts(GOOD, "hosts.yaml").expect("valid file");
        assert_eq!(hosts.len(), 2);
        let h1 = &hosts[0];
        assert_eq!(
            (h1.name.as_str(), h1.memory_mib, h1.cpus, h1.reserve_mib),
            ("lab-host-1", 16384, 8, 1024)
        );
        assert!(h1.labels.contains("fast"));
        assert_eq!(h1.vtep, Some("198.18.0.1".parse().expect("ip")));
        assert_eq!(h1.offer().vcpus, 32);
        assert_eq!(hosts[1].cpu_overcommit, DEFAULT_CPU_OVERCOMMIT);
        assert_eq!(hosts[1].offer().memory_mib, 8192 - DEFAULT_RESERVE_MIB);
    }

    fn error_of(text: &str) -> String {
        parse_hosts(text, "h.yaml")
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = error_of("hosts:\n  a:\n    memory: 16GB!\n    cpus: 2\n");
        assert!(
            e.starts_with(
                "h.yaml:3:13: hosts.a.memory: memory \"16GB!\" is not a size like 512MiB"
            ),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 1GiB, cpus: 2, gpus: 1}\n");
        assert!(
            e.contains("h.yaml:2:") && e.contains("hosts.a: unknown key \"gpus\""),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 4GiB}\n");
        assert!(e.contains("hosts.a: missing key \"cpus\""), "{e}");
        let e = error_of("hosts:\n  a: {memory: 4GiB, cpus: 2, vtep: 1.2.3}\n");
        assert!(
            e.contains("hosts.a.vtep: \"1.2.3\" is not an IP address"),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 4GiB, cpus: 2}\n  a: {memory: 4GiB, cpus: 2}\n");
        assert!(
            e.contains("h.yaml:3:") && e.contains("duplicate key \"a\""),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 1GiB, cpus: 2}\n");
        assert!(e.contains("leaves no memory"), "{e}");
        let e = error_of("hosts: [a, b]\n");
        assert!(e.contains("h.yaml:1:8: hosts: expected a mapping"), "{e}");
        let e = error_of("hosts:\n  a: {memory: 4GiB, cpus: zero}\n");
        assert!(e.contains("hosts.a.cpus: \"zero\""), "{e}");
        let e = error_of("hosts:\n  Host_1: {memory: 4GiB, cpus: 2}\n");
        assert!(e.contains("h.yaml:2:3: hosts: invalid member name"), "{e}");
        let e = error_of("# nothing yet\n");
        assert!(e.contains("h.yaml:1:1: the hosts file is empty"), "{e}");
    }

    /// As for a lab file, every problem is reported at once, in file order.
    #[test]
    fn every_problem_is_reported_at_once() {
        let e = error_of(
            "hosts:\n  a: {memory: 4GB, cpus: 2}\n  b: {memory: 4GiB, cpus: 0, vtep: x}\nextra: 1\n",
        );
        let lines: Vec<&str> = e.lines().filter(|l| !l.starts_with("  help:")).collect();
        assert_eq!(lines.len(), 4, "{e}");
        assert!(
            lines[0].starts_with("h.yaml:2:") && lines[0].contains("a.memory"),
            "{e}"
        );
        assert!(lines[1].contains("hosts.b.cpus: \"0\""), "{e}");
        assert!(lines[2].contains("hosts.b.vtep: \"x\""), "{e}");
        assert!(
            lines[3].starts_with("h.yaml:4:1: unknown key \"extra\""),
            "{e}"
        );
    }

    #[test]
    fn sizes_follow_the_lab_file_rule() {
        let memory = |m: &str| {
            parse_hosts(
                &format!("hosts:\n  a: {{memory: {m}, cpus: 2}}\n"),
                "h.yaml",
            )
            .map(|h| h[0].memory_mib)
        };
        assert_eq!(memory("16GiB").ok(), Some(16384));
        assert_eq!(memory("1.5 GiB").ok(), Some(1536));
        assert_eq!(memory("2g").ok(), Some(2048));
        // A plain number is MiB, as in a lab file.
        assert_eq!(memory("2048").ok(), Some(2048));
        for bad in ["16GB", "GiB", "0MiB", "1.5MiB"] {
            assert!(memory(bad).is_err(), "{bad}");
        }
    }
}
