//! Byte-stream requests (console, capture, watch, follow). The leader
//! serves a watch ([`super::watch`]) and a follow ([`super::progress`])
//! itself; for the others it joins the caller's stream to one it opens on
//! the agent's connection (agents only dial out); any other coordinator
//! joins it to one it opens to the leader.
//! Every hop writes one reply frame first, then copies raw bytes both ways.

use std::sync::Arc;

use labspan_proto::msg::{AgentReply, AgentRequest, ErrorKind, ErrorReply, Reply, Request};
use labspan_transport::tls::PeerIdentity;
use labspan_transport::{self as transport, read_message, splice, write_message};
use quinn::{RecvStream, SendStream};

use super::{authz, forbidden, labs, Inner};

/// The other end of a stream: where the caller's bytes go.
type Far = (SendStream, RecvStream);

/// Serves the byte-stream request `req` from `caller` on `send`/`recv`.
pub(super) async fn serve(
    inner: &Arc<Inner>,
    caller: &PeerIdentity,
    req: Request,
    mut send: SendStream,
    recv: RecvStream,
) {
    let far = match origin_of(caller, req) {
        Err(refused) => Err(refused),
        Ok((_, Request::Watch, _)) if inner.is_leader() => {
            if write_message(&mut send, &Reply::Streaming).await.is_ok() {
                super::watch::serve(inner, send).await;
            }
            return;
        }
        Ok((_, Request::Follow { lab }, _)) if inner.is_leader() => {
            return super::progress::follow(inner, lab, send).await;
        }
        Ok((origin, req, may_forward)) => {
            if inner.is_leader() {
                to_agent(inner, &req).await
            } else if may_forward {
                to_leader(inner, &origin, req).await
            } else {
                Err(ErrorReply::new(
                    ErrorKind::NotLeader,
                    "leadership moved while the request was forwarded; retry",
                ))
            }
        }
    };
    match far {
        Ok((far_send, far_recv)) => {
            if write_message(&mut send, &Reply::Streaming).await.is_ok() {
                splice(recv, send, far_recv, far_send).await;
            }
        }
        Err(refused) => {
            let reply = Reply::Error(refused);
            transport::answer(send, recv, &caller.name, &reply).await;
        }
    }
}

/// Who really asks (the caller, or the member a coordinator forwards for),
/// the request itself, and whether it may still be forwarded.
fn origin_of(
    caller: &PeerIdentity,
    req: Request,
) -> Result<(PeerIdentity, Request, bool), ErrorReply> {
    if !authz::may(caller.role, &req) {
        return Err(refusal(forbidden(caller, &req)));
    }
    let Request::Forwarded {
        name,
        role,
        request,
    } = req
    else {
        return Ok((caller.clone(), req, true));
    };
    let origin = PeerIdentity { name, role };
    if !authz::may(role, &request) {
        return Err(refusal(forbidden(&origin, &request)));
    }
    Ok((origin, *request, false))
}

/// Leader: a stream to the agent of the node's host, past its reply.
async fn to_agent(inner: &Arc<Inner>, req: &Request) -> Result<Far, ErrorReply> {
    let (lab, node, ask) = match req {
        Request::Console { lab, node } => (
            lab,
            node,
            AgentRequest::Console {
                lab: lab.clone(),
                node: node.clone(),
            },
        ),
        Request::Capture {
            lab,
            node,
            nic,
            count,
        } => (
            lab,
            node,
            AgentRequest::Capture {
                lab: lab.clone(),
                node: node.clone(),
                nic: nic.clone(),
                count: *count,
            },
        ),
        Request::CheckpointRead {
            lab,
            name,
            node,
            kind,
        } => (
            lab,
            node,
            AgentRequest::CheckpointRead {
                lab: lab.clone(),
                name: name.clone(),
                node: node.clone(),
                kind: kind.clone(),
            },
        ),
        Request::CheckpointWrite {
            lab,
            name,
            node,
            file,
        } => (
            lab,
            node,
            AgentRequest::CheckpointWrite {
                lab: lab.clone(),
                name: name.clone(),
                node: node.clone(),
                file: file.clone(),
            },
        ),
        _ => {
            return Err(ErrorReply::new(
                ErrorKind::Invalid,
                "not a byte-stream request",
            ))
        }
    };
    let host = match req {
        Request::CheckpointRead { name, .. } => super::checkpoints::holder(inner, lab, name, node)?,
        _ => labs::host_of(inner, lab, node)?,
    };
    if let Request::Capture { nic, .. } = req {
        labs::check_nic(inner, lab, node, nic)?;
    }
    let unavailable = |e: String| ErrorReply::new(ErrorKind::Unavailable, e);
    let conn = super::agents::connection(inner, &host).map_err(unavailable)?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| unavailable(format!("agent of host {host:?}: {e}")))?;
    write_message(&mut send, &ask)
        .await
        .map_err(|e| unavailable(format!("agent of host {host:?}: {e}")))?;
    match read_message::<AgentReply>(&mut recv).await {
        Ok(AgentReply::Streaming) => Ok((send, recv)),
        Ok(AgentReply::Error(e)) => Err(e),
        Ok(other) => Err(ErrorReply::new(
            ErrorKind::Internal,
            format!("unexpected agent reply {other:?}"),
        )),
        Err(e) => Err(unavailable(format!("agent of host {host:?}: {e}"))),
    }
}

/// Follower: a stream to the leader, forwarded for `origin`, past its reply.
async fn to_leader(
    inner: &Arc<Inner>,
    origin: &PeerIdentity,
    req: Request,
) -> Result<Far, ErrorReply> {
    let unavailable = |e: String| ErrorReply::new(ErrorKind::Unavailable, e);
    let (_, member) = inner.leader().ok_or_else(|| {
        unavailable("no leader elected (is a majority of coordinators running?)".into())
    })?;
    let (_, conn) = inner
        .peer_connection(&member.addr)
        .await
        .map_err(unavailable)?;
    let forwarded = Request::Forwarded {
        name: origin.name.clone(),
        role: origin.role,
        request: Box::new(req),
    };
    let reach =
        |e: &dyn std::fmt::Display| unavailable(format!("cannot reach the leader {member}: {e}"));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| reach(&e))?;
    write_message(&mut send, &forwarded)
        .await
        .map_err(|e| reach(&e))?;
    match read_message::<Reply>(&mut recv).await {
        Ok(Reply::Streaming) => Ok((send, recv)),
        Ok(other) => Err(refusal(other)),
        Err(e) => Err(reach(&e)),
    }
}

/// The refusal a reply carries (any other reply here is unexpected).
fn refusal(reply: Reply) -> ErrorReply {
    match reply {
        Reply::Error(e) => e,
        other => ErrorReply::new(
            ErrorKind::Internal,
            format!("unexpected reply to a stream request: {other:?}"),
        ),
    }
}
