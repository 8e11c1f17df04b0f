//! Persistent tap devices, made with the TUNSETIFF ioctl: the kernel refuses
//! to create taps over rtnetlink.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

/// Creates the persistent tap `name` in the calling thread's network
/// namespace, without packet information (what QEMU's `-netdev tap` opens).
pub fn create(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    let mut req = ifreq_zeroed();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a valid interface name",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `tun` is an open /dev/net/tun descriptor for the whole call and
    // `req` is a valid, NUL-terminated `ifreq` that TUNSETIFF reads and may
    // write back (the final name); it outlives the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: same descriptor, now attached to the tap; TUNSETPERSIST takes
    // its argument by value, no memory is passed.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Closing the descriptor leaves the persistent tap behind, detached.
    Ok(())
}

fn ifreq_zeroed() -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (a byte array and a union of
    // integers and plain structs) for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}
