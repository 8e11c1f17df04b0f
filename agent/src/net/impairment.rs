//! Link impairments on a tap's root qdisc, through the `tc` program
//! (rtnetlink has no netem or tbf options): netem for delay, jitter and
//! loss (with its own rate), tbf when only a rate is asked for.

use std::collections::BTreeMap;

use labspan_proto::lab::Impairment;
use serde_json::Value;
use tokio::process::Command;

use super::NetError;
use labspan_tool::{self as tool, ToolError};

/// Bytes of burst a tbf gets at least: enough for a GSO packet of a guest.
const MIN_BURST: u64 = 16 * 1024;

/// The `tc` arguments that put `imp` on `dev` (or remove it when none).
pub fn tc_args(dev: &str, imp: &Impairment) -> Vec<String> {
    let mut args: Vec<String> = ["qdisc", "replace", "dev", dev, "root"]
        .map(String::from)
        .to_vec();
    let nz = |v: Option<u64>| v.filter(|v| *v > 0);
    let loss = imp.loss_percent.filter(|l| *l > 0.0);
    let (delay, jitter, rate) = (nz(imp.delay_us), nz(imp.jitter_us), nz(imp.rate_kbit));
    // One rule for which qdisc, shared with the capability check.
    if labspan_proto::lab::qdisc_for(imp) != Some("netem") {
        match rate {
            None => {
                return ["qdisc", "del", "dev", dev, "root"]
                    .map(String::from)
                    .to_vec()
            }
            Some(kbit) => {
                let burst = (kbit * 1000 / 8 / 100).max(MIN_BURST);
                args.extend(["tbf".into(), "rate".into(), format!("{kbit}kbit")]);
                args.extend([
                    "burst".into(),
                    burst.to_string(),
                    "latency".into(),
                    "100ms".into(),
                ]);
                return args;
            }
        }
    }
    args.push("netem".into());
    if delay.is_some() || jitter.is_some() {
        args.extend(["delay".into(), format!("{}us", delay.unwrap_or(0))]);
        if let Some(j) = jitter {
            args.push(format!("{j}us"));
        }
    }
    if let Some(l) = loss {
        args.extend(["loss".into(), format!("{l}%")]);
    }
    if let Some(kbit) = rate {
        args.extend(["rate".into(), format!("{kbit}kbit")]);
    }
    args
}

/// The impairment on every device that `tc -j qdisc show` lists, by device
/// (a device missing from the map has none: its root qdisc is neither a
/// netem nor a tbf).
pub fn parse_show(json: &str) -> Result<BTreeMap<String, Impairment>, String> {
    let qdiscs: Vec<Value> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let roots = qdiscs.iter().filter(|q| q["root"] == Value::Bool(true));
    let named = roots.filter_map(|q| Some((q["dev"].as_str()?.to_string(), of_root(q))));
    Ok(named.filter(|(_, imp)| !imp.is_none()).collect())
}

/// The impairment a root qdisc applies.
fn of_root(root: &Value) -> Impairment {
    let opts = &root["options"];
    let rate_kbit = |v: &Value| v.as_u64().filter(|r| *r > 0).map(|bytes| bytes * 8 / 1000);
    let micros = |v: &Value| {
        v.as_f64()
            .map(|s| (s * 1e6).round() as u64)
            .filter(|us| *us > 0)
    };
    match root["kind"].as_str() {
        Some("tbf") => Impairment {
            rate_kbit: rate_kbit(&opts["rate"]),
            ..Default::default()
        },
        Some("netem") => Impairment {
            delay_us: micros(&opts["delay"]["delay"]),
            jitter_us: micros(&opts["delay"]["jitter"]),
            loss_percent: opts["loss-random"]["loss"]
                .as_f64()
                .map(|f| f * 100.0)
                .filter(|l| *l > 0.0),
            rate_kbit: rate_kbit(&opts["rate"]["rate"]),
        },
        _ => Impairment::default(),
    }
}

/// Puts `imp` on the root qdisc of `dev` (in the calling thread's
/// namespace), the tap of the lab's NIC `nic` (`node:nic`, what errors name).
pub async fn apply(dev: &str, nic: &str, imp: &Impairment) -> Result<(), NetError> {
    let args = tc_args(dev, imp);
    let stderr = match run_tc(nic, &args).await? {
        Ok(_) => return Ok(()),
        Err(stderr) => stderr,
    };
    let deleting = args.get(1).is_some_and(|a| a == "del");
    // Nothing to delete is what was asked for.
    if deleting && stderr.contains("handle of zero") {
        return Ok(());
    }
    let hint = match args.get(5).map(String::as_str) {
        Some(kind) if stderr.contains("kind is unknown") => format!(
            " (this kernel has no {kind} qdisc: build it with CONFIG_NET_SCH_{}, or drop the impairment)",
            kind.to_uppercase()
        ),
        _ => String::new(),
    };
    Err(NetError::Tc {
        object: format!("the link end {nic}"),
        detail: format!("{}{hint}", stderr.trim()),
    })
}

/// The impairment on the root qdisc of every device, by device (one `tc`
/// run for the whole host).
pub async fn observe_all() -> Result<BTreeMap<String, Impairment>, NetError> {
    let args: Vec<String> = ["-j", "qdisc", "show"].map(String::from).to_vec();
    let fail = |detail: String| NetError::Tc {
        object: "every device".to_string(),
        detail,
    };
    let out = run_tc("every device", &args)
        .await?
        .map_err(|stderr| fail(format!("`tc -j qdisc show`: {stderr}")))?;
    parse_show(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| fail(format!("unreadable `tc -j qdisc show` output: {e}")))
}

/// Runs `tc ARGS` ([`tool`]): its output, or what it said on stderr when
/// it failed (some failures are answers: nothing to delete).
async fn run_tc(
    dev: &str,
    args: &[String],
) -> Result<Result<std::process::Output, String>, NetError> {
    match tool::run_async(Command::new("tc").args(args)).await {
        Ok(out) => Ok(Ok(out)),
        Err(ToolError::Failed { stderr, .. }) => Ok(Err(stderr)),
        Err(ToolError::Spawn { cause, .. }) => Err(NetError::Io {
            what: "running `tc` (from iproute2) on",
            object: dev.to_string(),
            cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imp(
        delay: Option<u64>,
        jitter: Option<u64>,
        loss: Option<f64>,
        rate: Option<u64>,
    ) -> Impairment {
        Impairment {
            delay_us: delay,
            jitter_us: jitter,
            loss_percent: loss,
            rate_kbit: rate,
        }
    }

    #[test]
    fn no_impairment_deletes_the_root_qdisc() {
        assert_eq!(
            tc_args("t", &Impairment::default()).join(" "),
            "qdisc del dev t root"
        );
        assert_eq!(
            tc_args("t", &imp(Some(0), None, Some(0.0), Some(0))).join(" "),
            "qdisc del dev t root"
        );
    }

    #[test]
    fn rate_alone_is_a_tbf() {
        assert_eq!(
            tc_args("t", &imp(None, None, None, Some(1000))).join(" "),
            "qdisc replace dev t root tbf rate 1000kbit burst 16384 latency 100ms"
        );
        assert!(tc_args("t", &imp(None, None, None, Some(100_000)))
            .join(" ")
            .contains("burst 125000 "));
    }

    #[test]
    fn delay_loss_and_rate_are_one_netem() {
        assert_eq!(
            tc_args("t", &imp(Some(10_000), Some(2_000), Some(1.5), Some(512))).join(" "),
            "qdisc replace dev t root netem delay 10000us 2000us loss 1.5% rate 512kbit"
        );
        assert_eq!(
            tc_args("t", &imp(None, Some(5), None, None)).join(" "),
            "qdisc replace dev t root netem delay 0us 5us"
        );
    }

    #[test]
    fn show_output_parses_back() {
        let one = |json: &str| parse_show(json).map(|m| m.get("t0").copied().unwrap_or_default());
        let tbf = r#"[{"kind":"tbf","handle":"8004:","dev":"t0","root":true,"refcnt":2,"options":{"rate":125000,"burst":12500,"lat":50000}}]"#;
        assert_eq!(one(tbf), Ok(imp(None, None, None, Some(1000))));
        let netem = r#"[{"kind":"netem","handle":"8001:","dev":"t0","root":true,"refcnt":2,"options":{"limit":1000,
            "delay":{"delay":0.01,"jitter":0.002,"correlation":0},"loss-random":{"loss":0.015,"correlation":0},
            "rate":{"rate":64000,"packetoverhead":0,"cellsize":0,"celloverhead":0},"ecn":false,"gap":0}}]"#;
        let got = one(netem).expect("netem json");
        assert!(
            crate::net::state::same_impairment(
                &got,
                &imp(Some(10_000), Some(2_000), Some(1.5), Some(512))
            ),
            "{got:?}"
        );
        assert_eq!(one("[]"), Ok(Impairment::default()));
        let fifo = r#"[{"kind":"pfifo_fast","handle":"0:","dev":"t0","root":true,"options":{}},
            {"kind":"tbf","handle":"1:","dev":"t1","root":true,"options":{"rate":1000}}]"#;
        assert_eq!(
            parse_show(fifo).map(|m| m.len()),
            Ok(1),
            "only impaired devices are listed"
        );
        assert_eq!(one(fifo), Ok(Impairment::default()));
        assert!(parse_show("qdisc noqueue").is_err());
    }
}
