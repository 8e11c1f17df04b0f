//! Why the host's interfaces could not be brought to the plan.

use std::io;

/// A network reconcile or removal failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The host plan cannot be carried out as written.
    #[error("host plan, lab \"{lab}\": {reason}")]
    InvalidPlan { lab: String, reason: String },
    /// Two objects of the plan want one interface name.
    #[error(
        "host plan: interface \"{name}\" is wanted twice on this host, by \"{first}\" and by \"{second}\"; \
         the coordinator must name them apart"
    )]
    NameClash {
        name: String,
        first: String,
        second: String,
    },
    /// Interfaces the plan wants exist and are not labspan's.
    #[error("{}", foreign_message(names))]
    Foreign { names: Vec<String> },
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket to manage interfaces: {0}")]
    Connect(io::Error),
    /// A netlink request was refused.
    #[error("{what} {object} failed: {cause}{hint}")]
    Netlink {
        what: &'static str,
        object: String,
        /// What to do about it, when the error code says.
        hint: &'static str,
        /// Boxed: rtnetlink's error carries a whole netlink message.
        cause: Box<rtnetlink::Error>,
    },
    /// A system call or program failed.
    #[error("{what} {object} failed: {cause}")]
    Io {
        what: &'static str,
        object: String,
        cause: io::Error,
    },
    /// `tc` refused an impairment.
    #[error("impairment on {object}: {detail}")]
    Tc { object: String, detail: String },
}

fn foreign_message(names: &[String]) -> String {
    match names {
        [one] => format!(
            "interface {one} exists and is not labspan's (no labspan alias); remove it or rename the lab"
        ),
        many => format!(
            "interfaces {} exist and are not labspan's (no labspan alias); remove them or rename the lab",
            many.join(", ")
        ),
    }
}

impl NetError {
    /// A refused netlink request on `object`.
    pub fn netlink(what: &'static str, object: &str, cause: rtnetlink::Error) -> NetError {
        let hint = match &cause {
            rtnetlink::Error::NetlinkError(msg) => match -msg.raw_code() {
                libc::EPERM | libc::EACCES => ": the agent needs CAP_NET_ADMIN (run it as root)",
                libc::EEXIST => ": an interface of that name, or a VXLAN device with the same VNI and port, exists",
                libc::EADDRINUSE => ": another VXLAN device already uses this VNI, local address and port",
                libc::ERANGE | libc::EINVAL if what.contains("mtu") => {
                    ": the MTU is out of range for this device (a VXLAN device carries at most the underlay MTU minus 50)"
                }
                _ => "",
            },
            _ => "",
        };
        NetError::Netlink {
            what,
            object: object.to_string(),
            hint,
            cause: Box::new(cause),
        }
    }
}
