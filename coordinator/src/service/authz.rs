//! Who may ask what: the one table, checked before a request runs.

use labspan_proto::msg::{Request, Role};

/// True when a member of `role` may send `req`.
///
/// Coordinators run Raft, forward requests to the leader (which checks the
/// original caller's role again) and join; agents register and heartbeat;
/// admins do everything a user can; viewers only read.
pub fn may(role: Role, req: &Request) -> bool {
    use Request as R;
    match req {
        R::Ping { .. } | R::WhoAmI => true,
        R::Raft(_) | R::AddCoordinator { .. } | R::UseToken { .. } | R::Forwarded { .. } => {
            role == Role::Coordinator
        }
        R::Status | R::GetLab { .. } | R::Watch | R::Follow { .. } | R::CheckpointList { .. } => {
            matches!(role, Role::Admin | Role::Viewer)
        }
        R::CreateToken { .. }
        | R::DeployLab { .. }
        | R::PutFile { .. }
        | R::DeleteLab { .. }
        | R::Exec { .. }
        | R::RestartNode { .. }
        | R::MoveNode { .. }
        | R::Cordon { .. }
        | R::CheckpointCreate { .. }
        | R::CheckpointDelete { .. }
        | R::Reset { .. }
        | R::CheckpointImport { .. } => role == Role::Admin,
        R::StoreFile { .. } => role == Role::Coordinator,
        // Guest files are lab input: the hosts that run them, the
        // coordinators that hold copies, and an admin saving the lab.
        R::GetFile { .. } => matches!(role, Role::Agent | Role::Coordinator | Role::Admin),
        R::RemoveCoordinator { .. } => role == Role::Admin,
        R::RegisterHost { .. }
        | R::Heartbeat
        | R::ImageInventory { .. }
        | R::GuestHealth { .. }
        | R::HostCapabilities(_) => role == Role::Agent,
        // Agents report their VMs' steps; an admin's `up` its checks.
        R::Progress { .. } => matches!(role, Role::Agent | Role::Admin),
        R::ImageHosts => role == Role::Admin,
        // A console is a root shell; a capture shows every packet.
        R::Console { .. } | R::Capture { .. } => role == Role::Admin,
        // A checkpoint holds the guests' RAM: their secrets too.
        R::CheckpointRead { .. } | R::CheckpointWrite { .. } => role == Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> Request {
        Request::DeployLab {
            bundle: vec![],
            source: Default::default(),
            replace: false,
        }
    }

    #[test]
    fn agents_and_viewers_may_not_change_labs() {
        assert!(may(Role::Admin, &deploy()));
        for role in [Role::Agent, Role::Viewer, Role::Coordinator] {
            assert!(!may(role, &deploy()), "{role}");
            assert!(
                !may(
                    role,
                    &Request::CreateToken {
                        role: Role::Admin,
                        ttl_secs: 60
                    }
                ),
                "{role}"
            );
        }
    }

    #[test]
    fn only_coordinators_send_raft_and_forward() {
        for role in [Role::Agent, Role::Admin, Role::Viewer] {
            assert!(!may(role, &Request::Raft(vec![])), "{role}");
            let fwd = Request::Forwarded {
                name: "x".into(),
                role: Role::Admin,
                request: Box::new(deploy()),
            };
            assert!(!may(role, &fwd), "{role}");
        }
        assert!(may(Role::Coordinator, &Request::Raft(vec![])));
    }

    #[test]
    fn agents_report_images_and_admins_find_image_hosts() {
        let inventory = Request::ImageInventory {
            addr: None,
            images: vec![],
        };
        for role in Role::ALL {
            assert_eq!(may(role, &inventory), role == Role::Agent, "{role}");
            assert_eq!(
                may(role, &Request::ImageHosts),
                role == Role::Admin,
                "{role}"
            );
        }
    }

    #[test]
    fn only_admins_remove_coordinators() {
        let remove = Request::RemoveCoordinator {
            member: "c2".into(),
        };
        assert!(may(Role::Admin, &remove));
        for role in [Role::Agent, Role::Viewer, Role::Coordinator] {
            assert!(!may(role, &remove), "{role}");
        }
    }

    #[test]
    fn viewers_read_agents_heartbeat() {
        assert!(may(Role::Viewer, &Request::Status));
        assert!(!may(Role::Agent, &Request::Status));
        assert!(may(Role::Agent, &Request::Heartbeat));
        let health = Request::GuestHealth { guests: vec![] };
        assert!(may(Role::Agent, &health));
        assert!(!may(Role::Admin, &health));
        let restart = Request::RestartNode {
            lab: "l".into(),
            node: "n".into(),
        };
        assert!(may(Role::Admin, &restart));
        assert!(!may(Role::Viewer, &restart) && !may(Role::Agent, &restart));
        assert!(!may(Role::Admin, &Request::Heartbeat));
    }
}
