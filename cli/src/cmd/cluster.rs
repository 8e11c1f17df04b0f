//! `labspan cluster init|token|join|status|remove`: create a cluster, let
//! members in with one-time tokens, see its state, and remove a coordinator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use labspan_coordinator::service::DataDir;
use labspan_proto::msg::{
    Capabilities, ClusterStatus, JoinReply, JoinRequest, Reply, Request, Role,
};
use labspan_transport::client::{self, ClusterFile};
use labspan_transport::tls::{self, CertificateRequest};

use crate::remote::{call, connect};
use crate::InvalidInput;

/// `labspan cluster ...`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a cluster: its CA, the first coordinator's data folder and the
    /// admin credential (DIR/admin.cluster). Start it with `labspan coordinator run`.
    Init(InitArgs),
    /// Make a one-time join token for a new coordinator or agent.
    Token(TokenArgs),
    /// Join a cluster with a token: a coordinator gets its data folder, an
    /// agent its credential (DIR/agent.cluster).
    Join(JoinArgs),
    /// Members, leader, term, commit index, hosts and labs.
    Status(StatusArgs),
    /// Remove a coordinator from the Raft membership (admin only).
    Remove(RemoveArgs),
}

/// Arguments of `labspan cluster init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// The first coordinator's data folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Address the coordinator listens on (API and Raft); joins use port + 1.
    #[arg(long)]
    pub listen: SocketAddr,
    /// This coordinator's name.
    #[arg(long, default_value = "c1")]
    pub name: String,
    /// The cluster's name (in its CA certificate).
    #[arg(long, default_value = "labspan")]
    pub cluster_name: String,
}

/// Arguments of `labspan cluster token`.
#[derive(clap::Args)]
pub struct TokenArgs {
    /// What the new member will be: coordinator, agent, admin or viewer.
    #[arg(long)]
    pub role: Role,
    /// How long the token is valid: 30s, 15m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The cluster file (written by `cluster init`).
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: PathBuf,
}

/// Arguments of `labspan cluster join`.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// The join line `labspan cluster token` printed
    /// (TOKEN@ADDR[,ADDR...]/sha256:FINGERPRINT), or the API address of any
    /// coordinator with --token and --ca-fingerprint.
    #[arg(value_name = "JOIN_LINE|ADDR")]
    pub coordinator: String,
    /// The token, with an address instead of a join line.
    #[arg(long)]
    pub token: Option<String>,
    /// The CA fingerprint (sha256:...), with an address instead of a join line.
    #[arg(long)]
    pub ca_fingerprint: Option<String>,
    /// Data folder of the new member.
    #[arg(long)]
    pub data: PathBuf,
    /// Member name (default: this machine's host name).
    #[arg(long)]
    pub name: Option<String>,
    /// For a coordinator: the address it will listen on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Arguments of `labspan cluster status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The cluster file.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `labspan cluster remove`.
#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The coordinator's name or Raft id (as `cluster status` shows them).
    pub member: String,
    /// The cluster file.
    #[arg(long, env = "LABSPAN_CLUSTER")]
    pub cluster: PathBuf,
}

/// Runs `labspan cluster ...`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    match cmd {
        Command::Init(a) => init(a),
        Command::Token(a) => rt.block_on(token(a)),
        Command::Join(a) => rt.block_on(join(a)),
        Command::Status(a) => rt.block_on(status(a)),
        Command::Remove(a) => rt.block_on(remove(a)),
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = DataDir::at(&a.data);
    let admin = dir
        .init(&a.cluster_name, &a.name, a.listen)
        .map_err(|e| InvalidInput(format!("error: {e}")))?;
    let ca = tls::cert_from_pem(&admin.ca_pem, "the cluster CA")?;
    println!("cluster CA fingerprint: {}", tls::ca_fingerprint(&ca));
    println!("admin credential:       {}", dir.admin_file().display());
    println!(
        "\nnext:\n  labspan coordinator run --data {}",
        a.data.display()
    );
    println!("  export LABSPAN_CLUSTER={}", dir.admin_file().display());
    println!("  labspan cluster token --role coordinator   # or --role agent");
    Ok(ExitCode::SUCCESS)
}

async fn token(a: TokenArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.cluster).await?;
    let req = Request::CreateToken {
        role: a.role,
        ttl_secs: a.ttl.as_secs(),
    };
    let Reply::Token {
        token,
        ca_fingerprint,
        ..
    } = call(&client, &req).await?
    else {
        bail!("unexpected reply to CreateToken");
    };
    let coordinators = ClusterFile::load(&a.cluster)?.coordinators;
    client.close().await;
    let line = JoinLine {
        token: token.clone(),
        coordinators: coordinators.clone(),
        ca_fingerprint: ca_fingerprint.clone(),
    };
    println!("token:          {token}");
    println!("ca fingerprint: {ca_fingerprint}");
    println!("join line:      {line}");
    println!(
        "valid for {} s, once. On the new {}:",
        a.ttl.as_secs(),
        a.role
    );
    let listen = if a.role == Role::Coordinator {
        " --listen ADDR:PORT"
    } else {
        ""
    };
    println!("  labspan cluster join {line} --data DIR{listen}");
    Ok(ExitCode::SUCCESS)
}

/// Everything a new member needs to join, in one word a user can paste:
/// `TOKEN@ADDR[,ADDR...]/sha256:HEX`. The addresses are the coordinators'
/// API addresses, tried in order; the fingerprint is the cluster CA's, checked
/// before the token is sent.
#[derive(Debug, Clone, PartialEq)]
struct JoinLine {
    token: String,
    coordinators: Vec<String>,
    ca_fingerprint: String,
}

impl std::fmt::Display for JoinLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs = self.coordinators.join(",");
        write!(f, "{}@{addrs}/{}", self.token, self.ca_fingerprint)
    }
}

impl JoinLine {
    fn parse(text: &str) -> Result<JoinLine, String> {
        let text = text.trim();
        let shape = "a join line is TOKEN@ADDR[,ADDR...]/sha256:FINGERPRINT, as `labspan cluster token` prints it";
        let (token, rest) = text
            .split_once('@')
            .ok_or_else(|| format!("\"{text}\" has no '@': {shape}"))?;
        let (addrs, fingerprint) = rest
            .rsplit_once('/')
            .ok_or_else(|| format!("\"{text}\" has no '/' before the fingerprint: {shape}"))?;
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(format!(
                "the join line's token \"{token}\" is empty or has spaces: {shape}"
            ));
        }
        let hex = fingerprint.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the join line's fingerprint \"{fingerprint}\" is not sha256: and 64 hex digits: {shape}"
            ));
        }
        let coordinators = addrs
            .split(',')
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map(|_| a.to_string())
                    .map_err(|_| format!("the join line's address \"{a}\" is not IP:PORT: {shape}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JoinLine {
            token: token.to_string(),
            coordinators,
            ca_fingerprint: fingerprint.to_string(),
        })
    }

    /// The join line, or the old form: an address with --token and --ca-fingerprint.
    fn from_args(a: &JoinArgs) -> Result<JoinLine, String> {
        match (&a.token, &a.ca_fingerprint) {
            (None, None) => JoinLine::parse(&a.coordinator),
            (Some(token), Some(fp)) => {
                a.coordinator.parse::<SocketAddr>().map_err(|_| {
                    format!("\"{}\" is not a coordinator's IP:PORT (with --token, give an address, not a join line)", a.coordinator)
                })?;
                Ok(JoinLine {
                    token: token.clone(),
                    coordinators: vec![a.coordinator.clone()],
                    ca_fingerprint: fp.clone(),
                })
            }
            _ => Err("give both --token and --ca-fingerprint with an address, or neither with a join line".into()),
        }
    }
}

async fn join(a: JoinArgs) -> anyhow::Result<ExitCode> {
    let line = JoinLine::from_args(&a).map_err(|e| InvalidInput(format!("error: {e}")))?;
    let name = a.name.clone().unwrap_or_else(host_name);
    // This member's key is made here and never sent: the cluster signs a
    // request for it.
    let request = CertificateRequest::generate(&name)
        .map_err(|e| InvalidInput(format!("error: member name: {e}")))?;
    let req = JoinRequest::Join {
        token: line.token.clone(),
        name: name.clone(),
        csr_pem: request.csr_pem.clone(),
    };
    let reply = join_any(&line, &req).await?;
    let grant = match reply {
        JoinReply::Joined(g) => g,
        JoinReply::Error(e) => {
            return Err(InvalidInput(format!("error: join refused: {}", e.message)).into())
        }
    };
    std::fs::create_dir_all(&a.data).with_context(|| format!("creating {}", a.data.display()))?;
    if grant.role == Role::Coordinator {
        let Some(listen) = a.listen else {
            return Err(InvalidInput("error: this token is for a coordinator: give --listen ADDR:PORT (the token is now used; ask for a new one)".into()).into());
        };
        DataDir::at(&a.data).save_grant(&name, listen, &grant, &request)?;
        println!(
            "coordinator {name} joined; start it:\n  labspan coordinator run --data {}",
            a.data.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let credential = request
        .credential(&grant.cert_pem)
        .context("reading the certificate the cluster granted")?;
    let file = ClusterFile {
        coordinators: grant.coordinators,
        ca_pem: grant.ca_pem,
        cert_pem: credential.cert_pem(),
        key_pem: credential.key_pem(),
    };
    let path = a.data.join(format!("{}.cluster", grant.role));
    file.save(&path)?;
    println!(
        "{name} joined as {}; credential in {}",
        grant.role,
        path.display()
    );
    if grant.role == Role::Agent {
        println!(
            "start it:\n  labspan agent run --data {} --vtep ADDRESS",
            a.data.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks each coordinator of the line in turn until one answers: a
/// coordinator that is down or unreachable must not stop a join.
async fn join_any(line: &JoinLine, req: &JoinRequest) -> anyhow::Result<JoinReply> {
    let mut failures = Vec::new();
    for addr in &line.coordinators {
        let api: SocketAddr = addr
            .parse()
            .map_err(|_| InvalidInput(format!("error: \"{addr}\" is not IP:PORT")))?;
        match client::join(api, &line.ca_fingerprint, req).await {
            Ok(reply) => return Ok(reply),
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    bail!("no coordinator answered the join: {}", failures.join("; "))
}

async fn remove(a: RemoveArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.cluster).await?;
    let req = Request::RemoveCoordinator {
        member: a.member.clone(),
    };
    let reply = call(&client, &req).await;
    client.close().await;
    match reply? {
        Reply::Done => {
            println!(
                "coordinator {} removed; stop its process (`labspan cluster status` lists the members)",
                a.member
            );
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected reply to RemoveCoordinator: {other:?}"),
    }
}

async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&a.cluster).await?;
    let Reply::Status(s) = call(&client, &Request::Status).await? else {
        bail!("unexpected reply to Status");
    };
    client.close().await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
    } else {
        print_status(&s);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(s: &ClusterStatus) {
    let commit = s.commit_index.map_or("-".to_string(), |i| i.to_string());
    println!(
        "leader: {}   term: {}   commit index: {commit}",
        s.leader.map_or("none".into(), |l| l.to_string()),
        s.term
    );
    println!(
        "\n{:<4} {:<12} {:<22} {:<8} ROLE",
        "ID", "MEMBER", "ADDRESS", "VOTER"
    );
    for m in &s.members {
        let role = if Some(m.id) == s.leader {
            "leader"
        } else {
            "follower"
        };
        let role = if m.voter { role } else { "learner" };
        println!(
            "{:<4} {:<12} {:<22} {:<8} {role}",
            m.id,
            m.name,
            m.addr,
            if m.voter { "yes" } else { "no" }
        );
    }
    println!(
        "\n{:<16} {:<16} {:>10} {:>6}  {:<14} CAPABILITIES",
        "HOST", "VTEP", "MEMORY", "CPUS", "STATE"
    );
    for h in &s.hosts {
        println!(
            "{:<16} {:<16} {:>7} MiB {:>6}  {:<14} {}",
            h.name,
            h.vtep.to_string(),
            h.memory_mib,
            h.vcpus,
            match (h.up, h.cordoned) {
                (true, false) => "up",
                (true, true) => "up, cordoned",
                (false, false) => "DOWN",
                (false, true) => "DOWN, cordoned",
            },
            capabilities(h.capabilities.as_ref())
        );
    }
    if !s.labs.is_empty() {
        println!("\n{:<16} STATUS", "LAB");
        for (lab, st) in &s.labs {
            // One line per lab: the reasons of a failure can span lines.
            let st = st.to_string();
            let st = st.split_whitespace().collect::<Vec<_>>().join(" ");
            println!("{lab:<16} {st}");
        }
    }
}

/// A host's capabilities as `cluster status` shows them.
fn capabilities(c: Option<&Capabilities>) -> String {
    c.map_or("not reported yet".into(), ToString::to_string)
}

fn status_json(s: &ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "leader": s.leader,
        "term": s.term,
        "commit_index": s.commit_index,
        "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "name": m.name, "addr": m.addr, "voter": m.voter})).collect::<Vec<_>>(),
        "hosts": s.hosts.iter().map(|h| serde_json::json!({"name": h.name, "vtep": h.vtep, "memory_mib": h.memory_mib, "cpus": h.vcpus, "up": h.up, "cordoned": h.cordoned, "capabilities": h.capabilities.map(|c| serde_json::json!({"netem": c.netem, "tbf": c.tbf, "vxlan": c.vxlan, "kvm": c.kvm}))})).collect::<Vec<_>>(),
        "labs": s.labs.iter().map(|(l, st)| serde_json::json!({"name": l, "status": st.to_string()})).collect::<Vec<_>>(),
    })
}

/// `30s`, `15m`, `1h`, `2d`, or plain seconds.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: use e.g. 30s, 15m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}: use s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// This machine's name, the default member name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::{parse_ttl, JoinArgs, JoinLine};
    use std::time::Duration;

    #[test]
    fn a_join_line_carries_token_addresses_and_fingerprint() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        let line = JoinLine {
            token: "lsj_0123abcd".into(),
            coordinators: vec!["198.18.0.1:7100".into(), "[2001:db8::2]:7100".into()],
            ca_fingerprint: fp.clone(),
        };
        let text = line.to_string();
        assert_eq!(
            text,
            format!("lsj_0123abcd@198.18.0.1:7100,[2001:db8::2]:7100/{fp}")
        );
        assert_eq!(JoinLine::parse(&format!(" {text}\n")), Ok(line));
        for bad in [
            format!("lsj_x198.18.0.1:7100/{fp}"),
            "lsj_x@198.18.0.1:7100".to_string(),
            format!("@198.18.0.1:7100/{fp}"),
            format!("lsj_x@198.18.0.1/{fp}"),
            format!("lsj_x@198.18.0.1:7100,/{fp}"),
            "lsj_x@198.18.0.1:7100/sha256:abc".to_string(),
            format!("lsj_x@198.18.0.1:7100/{}", "ab".repeat(32)),
        ] {
            assert!(JoinLine::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_old_form_still_joins_through_one_address() {
        let args = |coordinator: &str, token: Option<&str>, fp: Option<&str>| JoinArgs {
            coordinator: coordinator.into(),
            token: token.map(Into::into),
            ca_fingerprint: fp.map(Into::into),
            data: "/tmp/x".into(),
            name: None,
            listen: None,
        };
        let old = JoinLine::from_args(&args("198.18.0.1:7100", Some("lsj_1"), Some("sha256:ab")));
        assert_eq!(
            old,
            Ok(JoinLine {
                token: "lsj_1".into(),
                coordinators: vec!["198.18.0.1:7100".into()],
                ca_fingerprint: "sha256:ab".into(),
            })
        );
        assert!(JoinLine::from_args(&args("198.18.0.1:7100", Some("lsj_1"), None)).is_err());
        assert!(JoinLine::from_args(&args(
            "lsj_1@198.18.0.1:7100/sha256:ab",
            Some("t"),
            Some("f")
        ))
        .is_err());
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
