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

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use labspan_proto::lab::units::parse_size_mib;
use labspan_proto::names::valid;

use crate::placement::HostOffer;

/// Memory kept for the host itself when the file does not say (MiB).
pub const DEFAULT_RESERVE_MIB: u64 = 1024;
/// vCPUs per physical CPU when the file does not say: lab guests mostly idle.
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;

/// One lab host.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
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

impl Host {
    /// A host with the defaults for everything but its size.
    pub fn new(name: &str, memory_mib: u64, cpus: u32) -> Host {
        Host {
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
    /// The file is not a valid hosts file.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Reads and parses a hosts file.
pub fn load_hosts(path: &Path) -> Result<Vec<Host>, HostsError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|cause| HostsError::Read {
        file: file.clone(),
        cause,
    })?;
    parse_hosts(&text, &file)
}

/// Parses the text of a hosts file; `file` is used in errors.
pub fn parse_hosts(text: &str, file: &str) -> Result<Vec<Host>, HostsError> {
    let p = Parser { file };
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let root =
        marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| p.load_error(e))?;
    let root = p.mapping(&root, "the file")?;
    p.only_keys(root, &["hosts"], "the top level")?;
    let hosts_node = root.get_node("hosts").ok_or_else(|| {
        p.err(
            root.span(),
            "no `hosts:` key: list the lab hosts under `hosts:`".into(),
        )
    })?;
    let hosts = p.mapping(hosts_node, "hosts")?;
    if hosts.is_empty() {
        return Err(p.err(hosts_node.span(), "hosts: no host listed".into()));
    }
    let mut out: Vec<Host> = hosts
        .iter()
        .map(|(k, v)| p.host(k, v))
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
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

struct Parser<'a> {
    file: &'a str,
}

impl Parser<'_> {
    fn err(&self, span: &Span, message: String) -> HostsError {
        let (line, column) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        HostsError::Invalid {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }

    fn load_error(&self, e: LoadError) -> HostsError {
        let (marker, message) = match &e {
            LoadError::DuplicateKey(d) => (
                d.key.span().start().copied(),
                format!("key \"{}\" appears twice", d.key.as_str()),
            ),
            LoadError::ScanError(m, s) => (Some(*m), format!("not valid YAML: {}", s.info())),
            LoadError::TopLevelMustBeMapping(m) => (
                Some(*m),
                "the file must be a mapping with a `hosts:` key".into(),
            ),
            LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "keys must be plain names".into()),
            LoadError::UnexpectedAnchor(m)
            | LoadError::UnexpectedTag(m)
            | LoadError::TopLevelMustBeSequence(m) => {
                (Some(*m), "anchors and tags are not supported".into())
            }
        };
        let (line, column) = marker.map_or((0, 0), |m| (m.line(), m.column()));
        HostsError::Invalid {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }

    fn mapping<'n>(&self, node: &'n Node, what: &str) -> Result<&'n MarkedMappingNode, HostsError> {
        node.as_mapping().ok_or_else(|| {
            self.err(
                node.span(),
                format!("{what}: expected a mapping of `key: value`"),
            )
        })
    }

    fn scalar<'n>(&self, node: &'n Node, what: &str) -> Result<&'n MarkedScalarNode, HostsError> {
        node.as_scalar()
            .ok_or_else(|| self.err(node.span(), format!("{what}: expected a single value")))
    }

    fn only_keys(
        &self,
        map: &MarkedMappingNode,
        allowed: &[&str],
        what: &str,
    ) -> Result<(), HostsError> {
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                let msg = format!(
                    "{what}: unknown key \"{}\" (known: {})",
                    k.as_str(),
                    allowed.join(", ")
                );
                return Err(self.err(k.span(), msg));
            }
        }
        Ok(())
    }

    fn host(&self, key: &MarkedScalarNode, node: &Node) -> Result<Host, HostsError> {
        let name = key.as_str();
        // A host is the agent that runs on it: its name is a member name.
        if valid::member(name).is_err() {
            return Err(self.err(
                key.span(),
                format!(
                    "host \"{name}\": a host name is a member name, 1 to 63 of a-z, 0-9 and '-'"
                ),
            ));
        }
        let at = format!("hosts.{name}");
        let map = self.mapping(node, &at)?;
        self.only_keys(map, HOST_KEYS, &at)?;
        let need = |k: &str| {
            map.get_node(k)
                .ok_or_else(|| self.err(map.span(), format!("{at}: `{k}` is missing")))
        };
        let mut host = Host::new(
            name,
            self.size(need("memory")?, &format!("{at}.memory"))?,
            0,
        );
        let cpus = self.scalar(need("cpus")?, &format!("{at}.cpus"))?;
        host.cpus = cpus.as_u32().filter(|&c| c > 0).ok_or_else(|| {
            self.err(
                cpus.span(),
                format!(
                    "{at}.cpus: \"{}\" is not a whole number of CPUs above 0",
                    cpus.as_str()
                ),
            )
        })?;
        if let Some(n) = map.get_node("reserve") {
            host.reserve_mib = self.size(n, &format!("{at}.reserve"))?;
        }
        if let Some(n) = map.get_node("cpu_overcommit") {
            let s = self.scalar(n, &format!("{at}.cpu_overcommit"))?;
            host.cpu_overcommit = s
                .as_f64()
                .filter(|r| r.is_finite() && *r > 0.0 && *r <= 64.0)
                .ok_or_else(|| {
                    self.err(
                        s.span(),
                        format!(
                            "{at}.cpu_overcommit: \"{}\" is not a ratio in (0, 64], e.g. 4 or 1.5",
                            s.as_str()
                        ),
                    )
                })?;
        }
        if let Some(n) = map.get_node("labels") {
            host.labels = self.labels(n, &at)?;
        }
        if let Some(n) = map.get_node("vtep") {
            let s = self.scalar(n, &format!("{at}.vtep"))?;
            let ip = s.as_str().parse().map_err(|_| {
                self.err(
                    s.span(),
                    format!("{at}.vtep: \"{}\" is not an IP address", s.as_str()),
                )
            })?;
            host.vtep = Some(ip);
        }
        if host.reserve_mib >= host.memory_mib {
            let msg = format!(
                "{at}.reserve: the reserve ({} MiB) leaves no memory of {} MiB for VMs",
                host.reserve_mib, host.memory_mib
            );
            return Err(self.err(map.span(), msg));
        }
        Ok(host)
    }

    fn labels(&self, node: &Node, at: &str) -> Result<BTreeSet<String>, HostsError> {
        let seq = node.as_sequence().ok_or_else(|| {
            self.err(
                node.span(),
                format!("{at}.labels: expected a list, e.g. [fast, edge]"),
            )
        })?;
        let mut out = BTreeSet::new();
        for item in seq.iter() {
            let s = self.scalar(item, &format!("{at}.labels"))?;
            let l = s.as_str();
            if l.is_empty()
                || !l
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(self.err(
                    s.span(),
                    format!("{at}.labels: \"{l}\" is not a label (letters, digits, '-', '_')"),
                ));
            }
            out.insert(l.to_string());
        }
        Ok(out)
    }

    fn size(&self, node: &Node, at: &str) -> Result<u64, HostsError> {
        let s = self.scalar(node, at)?;
        match parse_size_mib(at, s.as_str()) {
            Ok(0) => Err(self.err(s.span(), format!("{at}: a size of 0 leaves no room"))),
            Ok(mib) => Ok(mib),
            Err(why) => Err(self.err(s.span(), why)),
        }
    }
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
            e.starts_with("h.yaml:3:13: hosts.a.memory \"16GB!\" is not a size like 512MiB"),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 1GiB, cpus: 2, gpus: 1}\n");
        assert!(
            e.contains("h.yaml:2:") && e.contains("unknown key \"gpus\""),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 4GiB}\n");
        assert!(e.contains("hosts.a: `cpus` is missing"), "{e}");
        let e = error_of("hosts:\n  a: {memory: 4GiB, cpus: 2, vtep: 1.2.3}\n");
        assert!(
            e.contains("hosts.a.vtep: \"1.2.3\" is not an IP address"),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 4GiB, cpus: 2}\n  a: {memory: 4GiB, cpus: 2}\n");
        assert!(
            e.contains("h.yaml:3:") && e.contains("appears twice"),
            "{e}"
        );
        let e = error_of("hosts:\n  a: {memory: 1GiB, cpus: 2}\n");
        assert!(e.contains("leaves no memory"), "{e}");
        let e = error_of("hosts: [a, b]\n");
        assert!(e.contains("h.yaml:1:8: hosts: expected a mapping"), "{e}");
        let e = error_of("hosts:\n  a: {memory: 4GiB, cpus: zero}\n");
        assert!(e.contains("hosts.a.cpus: \"zero\""), "{e}");
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
