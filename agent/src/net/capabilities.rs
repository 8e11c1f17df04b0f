//! What this host's kernel can do for labs, found out by trying it on a
//! throw-away dummy interface: the netem and tbf qdiscs (link impairments)
//! and VXLAN devices (segments across hosts). Some kernels lack netem
//! (`Specified qdisc kind is unknown`); the leader then places impaired
//! links elsewhere, or refuses the lab before anything starts.

use labspan_proto::msg::Capabilities;
use labspan_proto::names;
use labspan_tool::{self as tool, ToolError};
use tokio::process::Command;

/// Capabilities named here (comma separated) are reported as missing
/// whatever the kernel can do: for tests of what happens on such a host.
pub const MASK_ENV: &str = "LABSPAN_MASK_CAPABILITIES";

/// This host's network capabilities (`kvm` is the caller's to fill in, and
/// [`MASK_ENV`] is applied by the caller with [`mask`]).
pub async fn probe() -> Capabilities {
    let dummy = names::probe("d");
    let mut caps = Capabilities::default();
    if ip(&["link", "add", &dummy, "type", "dummy"]).await {
        caps.netem = tc(&[
            "qdisc", "add", "dev", &dummy, "root", "netem", "delay", "1ms",
        ])
        .await;
        tc(&["qdisc", "del", "dev", &dummy, "root"]).await;
        caps.tbf = tc(&[
            "qdisc", "add", "dev", &dummy, "root", "tbf", "rate", "1mbit", "burst", "32kbit",
            "latency", "100ms",
        ])
        .await;
        ip(&["link", "del", &dummy]).await;
    }
    let vxlan = names::probe("v");
    // The largest VNI, no local address: nothing else on the host is disturbed.
    caps.vxlan = ip(&[
        "link",
        "add",
        &vxlan,
        "type",
        "vxlan",
        "id",
        "16777215",
        "dstport",
        "0",
        "nolearning",
    ])
    .await;
    if caps.vxlan {
        ip(&["link", "del", &vxlan]).await;
    }
    caps
}

/// `caps` with the capabilities named in `masked` (comma separated) off.
pub fn mask(mut caps: Capabilities, masked: Option<&str>) -> Capabilities {
    for name in masked.unwrap_or_default().split(',').map(str::trim) {
        match name {
            "netem" => caps.netem = false,
            "tbf" => caps.tbf = false,
            "vxlan" => caps.vxlan = false,
            "kvm" => caps.kvm = Some(false),
            _ => {}
        }
    }
    caps
}

async fn ip(args: &[&str]) -> bool {
    succeeds("ip", args).await
}

async fn tc(args: &[&str]) -> bool {
    succeeds("tc", args).await
}

async fn succeeds(program: &str, args: &[&str]) -> bool {
    match tool::run_async(Command::new(program).args(args)).await {
        Ok(_) => true,
        Err(e @ ToolError::Failed { .. }) => {
            tracing::debug!(error = %e, "capability probe: refused");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "capability probe: cannot run");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_turns_named_capabilities_off() {
        let all = Capabilities {
            netem: true,
            tbf: true,
            vxlan: true,
            kvm: Some(true),
        };
        let masked = mask(all, Some("netem, kvm"));
        assert_eq!(
            masked,
            Capabilities {
                netem: false,
                kvm: Some(false),
                ..all
            }
        );
        assert_eq!(mask(all, None), all);
    }
}
