//! The agent daemon: joins the cluster's leader, registers this host,
//! heartbeats, and serves what the leader asks on the agent's own connection
//! (agents only dial out): apply a host plan with [`Agent::apply`], run a
//! command in a guest. When the leader changes or goes away it finds the
//! new one by itself.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use labspan_proto::files::FileStore;
use labspan_proto::msg::{
    AgentReply, AgentRequest, Capabilities, ErrorKind, ErrorReply, ExecResult, Reply, Request,
    VmReport,
};
use labspan_proto::plan::HostPlan;
use labspan_transport::client::{Client, ClusterFile};
use labspan_transport::{expect_end, read_message, write_frame};
use quinn::Connection;

use crate::fence::Fence;
use crate::net::capabilities;

use crate::progress::{self, Outbox};
use crate::reconcile::{Agent, Event, Report};
use crate::{stream, supervise};
use labspan_image::service::ImageService;
use labspan_image::transfer::CheckpointFiles;
use labspan_proto::health::GuestHealth;

/// How often the agent tells the leader it is alive until the leader says
/// (each `Reply::Lease` carries the interval).
pub const HEARTBEAT_INTERVAL: Duration = crate::fence::DEFAULT_HEARTBEAT;
/// While fenced, the agent registers again (which makes the leader send its
/// plan) at most once per this many heartbeats.
const REREGISTER_EVERY: u32 = 5;
/// Pause before trying the coordinators again when none answered.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// What the daemon announces about its host.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// This host's VXLAN tunnel endpoint address.
    pub vtep: IpAddr,
    /// MTU of the network between hosts.
    pub underlay_mtu: u32,
    pub memory_mib: u64,
    pub cpus: u32,
    /// vCPUs offered per CPU (lab guests mostly idle).
    pub cpu_overcommit: f64,
    /// Where to serve this host's images to the other hosts (`None`: not
    /// served; this host still fetches what it lacks).
    pub image_listen: Option<std::net::SocketAddr>,
}

/// vCPUs per CPU a host offers unless told otherwise (as in hosts files).
pub const DEFAULT_CPU_OVERCOMMIT: f64 = 4.0;

impl HostInfo {
    /// vCPUs this host offers to labs: its CPUs × its overcommit.
    pub fn vcpus(&self) -> u64 {
        // The product of a u32 and a ratio in (0, 64] fits; floor as the
        // hosts file does.
        (f64::from(self.cpus) * self.cpu_overcommit)
            .floor()
            .max(1.0) as u64
    }

    /// This machine's memory and CPUs, with the given fabric settings.
    pub fn of_this_machine(vtep: IpAddr, underlay_mtu: u32) -> std::io::Result<HostInfo> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(HostInfo {
            vtep,
            underlay_mtu,
            memory_mib: kib / 1024,
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            cpu_overcommit: DEFAULT_CPU_OVERCOMMIT,
            image_listen: None,
        })
    }
}

/// Why one session with a coordinator ended (the daemon then reconnects).
enum SessionEnd {
    /// Go to this coordinator, the leader.
    Leader(String),
    /// Try the known coordinators again.
    Retry(String),
}

/// What a program running the daemon in-process (the CLI's embedded
/// default) may observe of it; `Hooks::default()` for a standalone daemon.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Held while a host plan is applied: lock it to wait out an apply in flight.
    pub apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// Counts the host plans applied (whether every VM came up or not).
    pub applied: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    /// Receives the agent's progress events as they happen.
    pub events: Option<Arc<dyn Fn(Event) + Send + Sync>>,
    /// Pause every VM when the lease lapses (see [`crate::fence`]): a
    /// standalone daemon does; the embedded default, alone on its machine,
    /// has no other host its nodes could move to.
    pub fence: bool,
}

/// Runs the daemon until the process is stopped.
pub async fn run(cluster: ClusterFile, host: HostInfo, agent: Arc<Agent>) {
    let hooks = Hooks {
        fence: true,
        ..Hooks::default()
    };
    run_with(cluster, host, agent, hooks).await;
}

/// [`run`], reporting to `hooks`; runs until its task is dropped.
pub async fn run_with(cluster: ClusterFile, host: HostInfo, agent: Arc<Agent>, hooks: Hooks) {
    let announce = host.image_listen.map(|l| {
        std::net::SocketAddr::new(
            if l.ip().is_unspecified() {
                host.vtep
            } else {
                l.ip()
            },
            l.port(),
        )
    });
    let state = agent.state().to_path_buf();
    let checkpoints: CheckpointFiles = Arc::new(move |lab, name, node, kind| {
        crate::stream::checkpoint_file(&state, lab, name, node, kind)
    });
    let images = ImageService::start(
        &cluster,
        agent.images().clone(),
        Some(checkpoints),
        host.image_listen,
        announce,
    );
    if let Some(fetcher) = images.fetcher() {
        agent.set_fetcher(fetcher);
    }
    let outbox = Arc::new(Outbox::default());
    let events = hooks.events.clone();
    let supervisor_events: Arc<dyn Fn(Event) + Send + Sync> = {
        let outbox = outbox.clone();
        Arc::new(move |e: Event| {
            tracing::info!(event = ?e, "supervise");
            outbox.push(progress::events_of(&e, None));
            if let Some(events) = &events {
                events(e);
            }
        })
    };
    // Aborted with this task: the supervisor lives as long as the daemon.
    let supervisor = AbortOnDrop(tokio::spawn(supervise::run(
        agent.clone(),
        hooks.apply_lock.clone(),
        supervisor_events,
    )));
    let _supervisor = supervisor;
    let found = Capabilities {
        kvm: crate::vm::accel::kvm_works(agent.state()),
        ..capabilities::probe().await
    };
    let capabilities =
        capabilities::mask(found, std::env::var(capabilities::MASK_ENV).ok().as_deref());
    tracing::info!(%capabilities, "this host's capabilities");
    agent.set_move_credentials(crate::vm::migrate::Credentials {
        ca_pem: cluster.ca_pem.clone(),
        cert_pem: cluster.cert_pem.clone(),
        key_pem: cluster.key_pem.clone(),
    });
    let fence = Arc::new(Fence::new(agent.state(), &cluster.ca_pem, hooks.fence));
    let watch = {
        let fence = fence.clone();
        tokio::spawn(async move { fence.watch().await })
    };
    let _stop_watch = AbortOnDrop(watch);
    let mut hint: Option<String> = None;
    // Not a `Poll`: the agent dials its coordinators again for as long as
    // it runs, with no deadline, pausing after every failed dial or lost
    // session.
    loop {
        let targets = match hint.take() {
            Some(leader) => vec![leader],
            None => cluster.coordinators.clone(),
        };
        let client = match Client::connect_to(&cluster, &targets).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no coordinator answered; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let server = tokio::spawn(serve(
            client.connection().clone(),
            agent.clone(),
            hooks.clone(),
            fence.clone(),
            outbox.clone(),
        ));
        let forwarder = {
            let (outbox, conn) = (outbox.clone(), client.connection().clone());
            AbortOnDrop(tokio::spawn(async move { outbox.forward(conn).await }))
        };
        let end = session(&client, &host, capabilities, &images, &agent, &fence).await;
        drop(forwarder);
        server.abort();
        client.close().await;
        match end {
            SessionEnd::Leader(addr) => {
                tracing::info!(leader = addr, "following the leader");
                hint = Some(addr);
            }
            SessionEnd::Retry(why) => {
                tracing::warn!(reason = why, "lost the coordinator; reconnecting");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Registers, then heartbeats until the coordinator stops being the leader
/// or the connection breaks. Each answered heartbeat renews the lease; a
/// fenced host registers again now and then, which makes the leader send it
/// its plan (that plan lifts the fence).
async fn session(
    client: &Client,
    host: &HostInfo,
    capabilities: Capabilities,
    images: &ImageService,
    agent: &Agent,
    fence: &Fence,
) -> SessionEnd {
    // The inventory and the capabilities go first: a lab deployed right
    // after registration must find this host's images, and know what it can do.
    if let Some(end) = report_images(client, images, true).await {
        return end;
    }
    match client
        .request(&Request::HostCapabilities(capabilities))
        .await
    {
        Ok(Reply::Done) => {}
        Ok(Reply::NotLeader { leader: Some(addr) }) => return SessionEnd::Leader(addr),
        Ok(Reply::NotLeader { leader: None }) => {
            return SessionEnd::Retry("no leader elected yet".into())
        }
        Ok(other) => return SessionEnd::Retry(format!("unexpected reply {other:?}")),
        Err(e) => return SessionEnd::Retry(e.to_string()),
    }
    let register = Request::RegisterHost {
        memory_mib: host.memory_mib,
        cpus: host.cpus,
        vcpus: host.vcpus(),
        vtep: host.vtep,
        underlay_mtu: host.underlay_mtu,
    };
    let mut req = register.clone();
    let mut health_sent = None;
    let mut beats_fenced = 0u32;
    loop {
        let sent = Instant::now();
        // An answer later than the lease renews nothing: ask again.
        let reply = tokio::time::timeout(fence.lease(), client.request(&req)).await;
        match reply {
            Err(_) => tracing::warn!(request = ?req, "no answer within the lease; asking again"),
            Ok(Ok(Reply::Lease {
                heartbeat_ms,
                lease_ms,
            })) => {
                fence.renew(
                    sent,
                    Duration::from_millis(heartbeat_ms),
                    Duration::from_millis(lease_ms),
                );
                beats_fenced = if fence.fenced() { beats_fenced + 1 } else { 0 };
                req = if beats_fenced >= REREGISTER_EVERY {
                    beats_fenced = 0;
                    register.clone()
                } else {
                    Request::Heartbeat
                };
            }
            Ok(Ok(Reply::NotLeader { leader: Some(addr) })) => return SessionEnd::Leader(addr),
            Ok(Ok(Reply::NotLeader { leader: None })) => {
                return SessionEnd::Retry("no leader elected yet".into())
            }
            // The leader does not know this host (a new leader before it applied the registration): register again.
            Ok(Ok(Reply::Error(e))) if e.kind == ErrorKind::NotFound => req = register.clone(),
            // A leader that cannot confirm its quorum grants no lease; it
            // may get it back, or lose the leadership and say so.
            Ok(Ok(Reply::Error(e))) if e.kind == ErrorKind::Unavailable => {
                tracing::warn!(error = %e, "no lease granted");
            }
            Ok(Ok(other)) => return SessionEnd::Retry(format!("unexpected reply {other:?}")),
            Ok(Err(e)) => return SessionEnd::Retry(e.to_string()),
        }
        images.pause(fence.heartbeat()).await;
        if let Some(end) = report_images(client, images, false).await {
            return end;
        }
        if let Some(end) = report_health(client, agent, &mut health_sent).await {
            return end;
        }
    }
}

/// Sends how this host's guests are doing when it changed since `sent`.
async fn report_health(
    client: &Client,
    agent: &Agent,
    sent: &mut Option<Vec<GuestHealth>>,
) -> Option<SessionEnd> {
    let guests = agent.guest_health();
    if sent.as_ref() == Some(&guests) {
        return None;
    }
    let req = Request::GuestHealth {
        guests: guests.clone(),
    };
    match client.request(&req).await {
        Ok(Reply::Done) => {
            *sent = Some(guests);
            None
        }
        Ok(Reply::NotLeader { leader: Some(addr) }) => Some(SessionEnd::Leader(addr)),
        Ok(Reply::NotLeader { leader: None }) => {
            Some(SessionEnd::Retry("no leader elected yet".into()))
        }
        Ok(other) => {
            tracing::warn!(reply = ?other, "the leader did not take the guests' health");
            *sent = Some(guests);
            None
        }
        Err(e) => Some(SessionEnd::Retry(e.to_string())),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends this host's image inventory when it changed (or `always`).
async fn report_images(client: &Client, images: &ImageService, always: bool) -> Option<SessionEnd> {
    let req = images.report(always).await?;
    match client.request(&req).await {
        Ok(Reply::Done) => {
            images.sent(&req);
            None
        }
        Ok(Reply::NotLeader { leader: Some(addr) }) => Some(SessionEnd::Leader(addr)),
        Ok(Reply::NotLeader { leader: None }) => {
            Some(SessionEnd::Retry("no leader elected yet".into()))
        }
        // An older leader that does not know the request: run without.
        Ok(other) => {
            tracing::warn!(reply = ?other, "the leader did not take the image inventory");
            images.sent(&req);
            None
        }
        Err(e) => Some(SessionEnd::Retry(e.to_string())),
    }
}

/// Serves the coordinator's requests on the agent's connection.
async fn serve(
    conn: Connection,
    agent: Arc<Agent>,
    hooks: Hooks,
    fence: Arc<Fence>,
    outbox: Arc<Outbox>,
) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (agent, hooks, fence, conn, outbox) = (
            agent.clone(),
            hooks.clone(),
            fence.clone(),
            conn.clone(),
            outbox.clone(),
        );
        tokio::spawn(async move {
            // A byte stream (console, capture) stays open after its request.
            let request = match read_message::<AgentRequest>(&mut recv).await {
                Ok(
                    r @ (AgentRequest::Console { .. }
                    | AgentRequest::Capture { .. }
                    | AgentRequest::CheckpointRead { .. }
                    | AgentRequest::CheckpointWrite { .. }),
                ) => Ok(r),
                Ok(r) => expect_end(&mut recv).await.map(|()| r),
                Err(e) => Err(e),
            };
            let reply = match request {
                Ok(AgentRequest::Console { lab, node }) => {
                    return stream::console(agent.state(), &lab, &node, send, recv).await;
                }
                Ok(AgentRequest::Capture {
                    lab,
                    node,
                    nic,
                    count,
                }) => return stream::capture(&lab, &node, &nic, count, send, recv).await,
                Ok(AgentRequest::CheckpointRead {
                    lab,
                    name,
                    node,
                    kind,
                }) => {
                    let what = (lab.as_str(), name.as_str(), node.as_str(), kind.as_str());
                    return stream::checkpoint_read(agent.state(), what, send).await;
                }
                Ok(AgentRequest::CheckpointWrite {
                    lab,
                    name,
                    node,
                    file,
                }) => {
                    let what = (lab.as_str(), name.as_str(), node.as_str());
                    return stream::checkpoint_write(agent.state(), what, &file, send, recv).await;
                }
                Ok(AgentRequest::Restart { lab, node }) => {
                    let _one_plan_at_a_time = hooks.apply_lock.lock().await;
                    let plan = agent.last_plan();
                    let log = |e: Event| {
                        tracing::info!(event = ?e, "restart");
                        outbox.push(progress::events_of(&e, plan.as_ref()));
                        if let Some(events) = hooks.events.as_deref() {
                            events(e);
                        }
                    };
                    let reply = match agent.restart(&lab, &node, &log).await {
                        Ok(report) => AgentReply::Applied(vm_reports("", report)),
                        Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                    };
                    report_not_up(&outbox, &reply);
                    outbox.flush().await;
                    reply
                }
                Ok(AgentRequest::ApplyPlan(plan)) => {
                    // The fence before the apply lock: lifting it resumes
                    // the VMs that an apply still in flight (pushed by a
                    // leader that died) waits on to boot.
                    let admitted = match fence.admit(&plan).await {
                        Ok(()) => {
                            let one_plan_at_a_time = hooks.apply_lock.lock().await;
                            // A newer plan may have been admitted while this
                            // one waited for the lock.
                            fence.still_current(&plan).map(|()| one_plan_at_a_time)
                        }
                        Err(refusal) => Err(refusal),
                    };
                    let reply = match admitted {
                        Ok(_one_plan_at_a_time) => {
                            fetch_files(&conn, agent.files(), &plan).await;
                            let reply =
                                apply(&agent, &plan, hooks.events.as_deref(), &outbox).await;
                            report_not_up(&outbox, &reply);
                            // Followers see every step before the leader
                            // hears the apply is done.
                            outbox.flush().await;
                            reply
                        }
                        Err(refusal) => {
                            tracing::warn!(generation = plan.generation, %refusal, "host plan refused");
                            AgentReply::Error(ErrorReply::new(
                                refusal.kind(),
                                format!("host {}: {refusal}", plan.host),
                            ))
                        }
                    };
                    if let Some(applied) = &hooks.applied {
                        applied.send_modify(|n| *n += 1);
                    }
                    reply
                }
                Ok(AgentRequest::Exec {
                    lab,
                    node,
                    cmd,
                    timeout_secs,
                }) => {
                    match agent
                        .exec(&lab, &node, &cmd, Duration::from_secs(timeout_secs))
                        .await
                    {
                        Ok(out) => AgentReply::Exec(ExecResult {
                            exit_code: out.exit_code,
                            stdout: out.stdout,
                            stderr: out.stderr,
                        }),
                        Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                    }
                }
                Ok(AgentRequest::MigrateOut {
                    lab,
                    node,
                    to,
                    port,
                    host,
                }) => {
                    let to = crate::vm::migrate::Endpoint {
                        addr: to,
                        port,
                        peer: host,
                    };
                    let progress = |p| {
                        tracing::info!(lab, node, progress = ?p, "moving");
                        outbox.push(vec![progress::of_move(&lab, &node, &p)]);
                    };
                    let moved = agent.migrate_out(&lab, &node, &to, &progress).await;
                    // The move's steps reach the leader before its answer.
                    outbox.flush().await;
                    match moved {
                        Ok(figures) => AgentReply::Migrated(figures),
                        Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                    }
                }
                Ok(AgentRequest::MoveStatus { lab, node }) => {
                    AgentReply::MoveStatus(agent.move_status(&lab, &node).await)
                }
                Ok(AgentRequest::CheckpointSave {
                    lab,
                    name,
                    pause_at_unix_ms,
                }) => {
                    // No plan applies (and no supervisor restarts) meanwhile.
                    let _one_at_a_time = hooks.apply_lock.lock().await;
                    match agent.checkpoint_save(&lab, &name, pause_at_unix_ms).await {
                        Ok(share) => AgentReply::CheckpointSaved {
                            nodes: share.nodes,
                            paused_at_unix_ms: share.paused_at_unix_ms,
                            resumed_at_unix_ms: share.resumed_at_unix_ms,
                        },
                        Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                    }
                }
                Ok(AgentRequest::CheckpointCopy {
                    lab,
                    name,
                    node,
                    files,
                    from,
                }) => {
                    let copied = match agent.fetcher() {
                        Some(f) => {
                            let what = (lab.as_str(), name.as_str(), node.as_str());
                            let state = agent.state();
                            stream::checkpoint_copy(state, f.endpoint(), what, &files, &from).await
                        }
                        None => Err("this host cannot reach other hosts' image endpoints".into()),
                    };
                    match copied {
                        Ok(bytes) => AgentReply::CheckpointCopied { bytes },
                        Err(why) => AgentReply::Error(ErrorReply::new(
                            ErrorKind::Unavailable,
                            format!("copying node {node:?}'s share of checkpoint {name:?} of lab {lab:?}: {why}"),
                        )),
                    }
                }
                Ok(AgentRequest::CheckpointKeep { labs }) => match agent.checkpoint_keep(&labs) {
                    Ok(()) => AgentReply::Resumed {
                        clock_not_set: Vec::new(),
                    },
                    Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                },
                Ok(AgentRequest::CheckpointDrop { lab, name }) => {
                    match agent.checkpoint_drop(&lab, &name) {
                        Ok(()) => AgentReply::Resumed {
                            clock_not_set: Vec::new(),
                        },
                        Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                    }
                }
                Ok(AgentRequest::CheckpointLoad { lab, name, nodes }) => {
                    let _one_at_a_time = hooks.apply_lock.lock().await;
                    match agent.checkpoint_load(&lab, &name, &nodes).await {
                        Ok(()) => AgentReply::Resumed {
                            clock_not_set: Vec::new(),
                        },
                        Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                    }
                }
                Ok(AgentRequest::CheckpointResume {
                    lab,
                    resume_at_unix_ms,
                }) => match agent.checkpoint_resume(&lab, resume_at_unix_ms).await {
                    Ok(clock_not_set) => AgentReply::Resumed { clock_not_set },
                    Err(e) => AgentReply::Error(ErrorReply::new(e.kind(), e.to_string())),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable request from the coordinator");
                    return;
                }
            };
            if let Err(e) = write_frame(&mut send, &reply).await {
                tracing::warn!(error = %e, "cannot answer the coordinator");
            }
        });
    }
}

/// Brings the plan's guest files this host lacks from the coordinator, by
/// hash. One that cannot be had is logged here and reported by the VM that
/// needs it (its lab fails with the reason); the other labs go on.
async fn fetch_files(conn: &Connection, store: &FileStore, plan: &HostPlan) {
    let wanted: BTreeSet<&str> = plan
        .labs
        .iter()
        .flat_map(|l| &l.vms)
        .flat_map(|vm| &vm.config.files)
        .map(|f| f.file.sha256.as_str())
        .filter(|sha| !store.has(sha))
        .collect();
    for sha256 in wanted {
        let req = Request::GetFile {
            sha256: sha256.to_string(),
        };
        let reply: Result<Reply, _> = labspan_transport::request(conn, &req).await;
        let stored = match reply {
            Ok(Reply::File { contents }) => {
                // Hash, write and fsync off the runtime threads.
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.put(&contents)).await {
                    Ok(Ok(f)) if f.sha256 == sha256 => Ok(()),
                    Ok(Ok(f)) => Err(format!(
                        "the coordinator sent contents hashing to {}",
                        f.sha256
                    )),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(Reply::Error(e)) => Err(e.message),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = stored {
            tracing::warn!(sha256, error = why, "cannot fetch a guest file");
        }
    }
}

/// Queues a failed step for each VM that the reply says is not up.
fn report_not_up(outbox: &Outbox, reply: &AgentReply) {
    if let AgentReply::Applied(vms) = reply {
        let failed = vms
            .iter()
            .filter_map(|v| (v.error.as_deref()).map(|why| progress::not_up(&v.lab, &v.vm, why)));
        outbox.push(failed.collect());
    }
}

async fn apply(
    agent: &Agent,
    plan: &HostPlan,
    events: Option<&(dyn Fn(Event) + Send + Sync)>,
    outbox: &Outbox,
) -> AgentReply {
    tracing::info!(
        host = plan.host,
        labs = plan.labs.len(),
        "applying the host plan"
    );
    match agent
        .apply(plan, &|e| {
            tracing::info!(event = ?e, "reconcile");
            outbox.push(progress::events_of(&e, Some(plan)));
            if let Some(events) = events {
                events(e);
            }
        })
        .await
    {
        Ok(report) => AgentReply::Applied(vm_reports(&plan.host, report)),
        // The coordinator names the host; the error stays one line.
        Err(e) => AgentReply::Error(ErrorReply::new(
            ErrorKind::Internal,
            e.to_string().replace('\n', " "),
        )),
    }
}

fn vm_reports(host: &str, report: Report) -> Vec<VmReport> {
    report
        .vms
        .into_iter()
        .map(|v| VmReport {
            host: host.to_string(),
            lab: v.lab,
            vm: v.vm,
            pid: v.pid,
            error: v.error,
        })
        .collect()
}
