//! The rules for names users give: labs, nodes, NICs, LANs, images,
//! cluster members and hosts. Every reader of such a name (the lab parser,
//! the image store, certificates, the hosts file) checks it here, so a name
//! one of them accepts is never refused by another later on.

use std::fmt;

/// A name that does not follow its rule: what is wrong, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// What is wrong: `node name "R1" cannot be used`.
    pub why: String,
    /// The rule, as advice: `use lowercase letters, ...`.
    pub help: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.why, self.help)
    }
}

impl std::error::Error for NameError {}

/// Longest lab name.
pub const MAX_LAB: usize = 32;
/// Longest node name: a DNS label, since nodes become guest hostnames.
pub const MAX_NODE: usize = 63;
/// Longest NIC name: the guest's IFNAMSIZ - 1.
pub const MAX_NIC: usize = 15;
/// Longest LAN name.
pub const MAX_LAN: usize = 32;
/// Longest image name.
pub const MAX_IMAGE: usize = 64;
/// Longest member (and host) name: a DNS label.
pub const MAX_MEMBER: usize = 63;

fn lower_or_digit(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn starts_with(name: &str, ok: fn(u8) -> bool) -> bool {
    name.bytes().next().is_some_and(ok)
}

/// A lab: lowercase letters, digits and '-', starting with a letter or
/// digit; it names folders, interface aliases and Raft records.
pub fn lab(name: &str) -> Result<(), NameError> {
    let ok = name.len() <= MAX_LAB
        && starts_with(name, lower_or_digit)
        && name.bytes().all(|b| lower_or_digit(b) || b == b'-');
    ok.then_some(()).ok_or_else(|| NameError {
        why: format!("lab name \"{name}\" cannot be used"),
        help: format!("use lowercase letters, digits and '-', 1 to {MAX_LAB} characters"),
    })
}

/// A node, NIC or LAN (`kind`, at most `max` bytes): lowercase letters,
/// digits, '-' and '_', starting with a letter or digit; they end up in
/// guest interface names, hostnames and host-side identifiers.
fn lab_object(kind: &str, name: &str, max: usize) -> Result<(), NameError> {
    let ok = name.len() <= max
        && starts_with(name, lower_or_digit)
        && name
            .bytes()
            .all(|b| lower_or_digit(b) || b == b'-' || b == b'_');
    if ok {
        return Ok(());
    }
    let why = if name.len() > max {
        format!(
            "{kind} name \"{name}\" is {} bytes long; the limit is {max}",
            name.len()
        )
    } else {
        format!("{kind} name \"{name}\" cannot be used")
    };
    let help = format!(
        "use lowercase letters, digits, '-' and '_', starting with a letter or digit, at most {max} bytes"
    );
    Err(NameError { why, help })
}

/// Longest checkpoint name.
pub const MAX_CHECKPOINT: usize = 32;

/// A checkpoint of a lab: it names files on every host of the lab.
pub fn checkpoint(name: &str) -> Result<(), NameError> {
    lab_object("checkpoint", name, MAX_CHECKPOINT)
}

/// A node of a lab.
pub fn node(name: &str) -> Result<(), NameError> {
    lab_object("node", name, MAX_NODE)
}

/// A NIC of a node.
pub fn nic(name: &str) -> Result<(), NameError> {
    lab_object("NIC", name, MAX_NIC)
}

/// A LAN of a lab.
pub fn lan(name: &str) -> Result<(), NameError> {
    lab_object("LAN", name, MAX_LAN)
}

/// An image: letters, digits, '-', '_' and '.', not starting with '.'; it
/// names a folder in the image store, so "." and ".." are never names.
pub fn image(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IMAGE
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then_some(()).ok_or_else(|| NameError {
        why: format!("image name \"{name}\" cannot be used"),
        help: format!(
            "use letters, digits, '-', '_' and '.', not starting with '.', at most {MAX_IMAGE} characters (see `labspan image list`)"
        ),
    })
}

/// A cluster member (coordinator, agent, admin): lowercase letters, digits
/// and '-'; it goes into certificate URIs, file names and messages. A
/// host is the agent that runs on it, so hosts follow the same rule.
pub fn member(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_MEMBER
        && name.bytes().all(|b| lower_or_digit(b) || b == b'-');
    ok.then_some(()).ok_or_else(|| NameError {
        why: format!("invalid member name {name:?}"),
        help: format!("use 1 to {MAX_MEMBER} of a-z, 0-9 and '-'"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_keeps_its_alphabet() {
        assert!(lab("sip-2").is_ok() && lab("sip_2").is_err() && lab("-x").is_err());
        assert!(node("r1_a").is_ok() && node("R1").is_err() && node("").is_err());
        assert!(nic("eth0").is_ok() && nic("a-nic-name-too-long").is_err());
        assert!(image("debian-12.1_x").is_ok() && image("Tiny").is_ok());
        assert!(member("lab-host-1").is_ok() && member("Lab.Host").is_err());
    }

    #[test]
    fn an_image_name_is_never_a_path() {
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", &"x".repeat(65)] {
            assert!(image(bad).is_err(), "{bad:?}");
        }
    }
}
