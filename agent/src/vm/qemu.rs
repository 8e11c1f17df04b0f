//! The QEMU command line for one VM, built from a launch spec. Pure: the
//! spec says everything, this only spells it the way QEMU 7.2 wants.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A concrete accelerator (`auto` is resolved before launch; see `accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// One guest NIC backed by a host tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// Host tap interface; it must exist before launch.
    pub tap: String,
    pub mac: [u8; 6],
}

/// The files of a VM's state folder that QEMU uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPaths {
    pub pidfile: PathBuf,
    pub qmp: PathBuf,
    pub console: PathBuf,
    /// Everything the serial console printed (boot log included).
    pub console_log: PathBuf,
    pub qga: PathBuf,
}

/// Everything QEMU needs to start one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub name: String,
    pub memory_mib: u64,
    pub cpus: u32,
    pub accel: Accel,
    /// Kernel to boot directly; `None` boots `disk` through the firmware.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Kernel command line (only with `kernel`).
    pub cmdline: String,
    /// The VM's qcow2 overlay, if the image has a disk.
    pub disk: Option<PathBuf>,
    pub nics: Vec<NicSpec>,
    pub paths: VmPaths,
    /// Started to receive a guest moved from another host (`-incoming
    /// defer`) rather than to boot one.
    #[serde(default)]
    pub incoming: bool,
    /// The guest stays paused once it arrived (`-S`): a checkpoint's
    /// guests all resume together.
    #[serde(default)]
    pub start_paused: bool,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    labspan_proto::names::mac_string(mac)
}

/// The full argument list (without the program name) for
/// `qemu-system-x86_64`.
pub fn command_line(spec: &LaunchSpec) -> Vec<OsString> {
    let mut a = Args::default();
    a.push("-name")
        .push(format!("{},process=qemu-{}", spec.name, spec.name));
    a.push("-machine").push("q35");
    match spec.accel {
        // -cpu host gives the guest the host's features; it needs KVM.
        Accel::Kvm => a.push("-accel").push("kvm").push("-cpu").push("host"),
        // TCG keeps QEMU's default CPU model (qemu64): the baseline every
        // Debian amd64 binary runs on, and the fastest to emulate.
        Accel::Tcg => a.push("-accel").push("tcg"),
    };
    a.push("-m").push(format!("{}M", spec.memory_mib));
    a.push("-smp").push(spec.cpus.to_string());
    // Only the devices asked for: no default NIC, VGA, floppy or CD-ROM.
    a.push("-nodefaults").push("-display").push("none");
    if let Some(k) = &spec.kernel {
        a.push("-kernel").path(k);
        if let Some(i) = &spec.initrd {
            a.push("-initrd").path(i);
        }
        a.push("-append").push(spec.cmdline.clone());
    }
    if let Some(d) = &spec.disk {
        a.push("-drive")
            .joined("file=", d, ",if=virtio,format=qcow2,cache=writeback");
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        a.push("-netdev").push(format!(
            "tap,id=net{i},ifname={},script=no,downscript=no",
            nic.tap
        ));
        a.push("-device").push(format!(
            "virtio-net-pci,netdev=net{i},mac={}",
            mac_string(&nic.mac)
        ));
    }
    let p = &spec.paths;
    a.push("-chardev")
        .push(chardev_socket("serial0", &p.console, Some(&p.console_log)));
    a.push("-serial").push("chardev:serial0");
    a.push("-chardev")
        .push(chardev_socket("qmp0", &p.qmp, None));
    a.push("-mon").push("chardev=qmp0,mode=control");
    a.push("-device").push("virtio-serial-pci,id=vser0");
    a.push("-chardev")
        .push(chardev_socket("qga0", &p.qga, None));
    a.push("-device")
        .push("virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0");
    // A guest's panic (pvpanic), reboot or power-off leaves QEMU running
    // with the guest stopped, in a run state the agent reads (QMP
    // `query-status`) even after its own restart; the agent then decides to
    // restart the guest or leave it for a post-mortem.
    a.push("-device").push("pvpanic");
    a.push("-action")
        .push("reboot=shutdown,shutdown=pause,panic=pause");
    if spec.incoming {
        a.push("-incoming").push("defer");
    }
    if spec.start_paused {
        a.push("-S");
    }
    a.push("-pidfile").path(&p.pidfile);
    a.push("-daemonize");
    a.0
}

/// A unix-socket chardev that QEMU serves without waiting for a client.
fn chardev_socket(id: &str, path: &std::path::Path, log: Option<&std::path::Path>) -> String {
    let mut s = format!(
        "socket,id={id},path={},server=on,wait=off",
        escape_commas(&path.to_string_lossy())
    );
    if let Some(l) = log {
        s.push_str(&format!(
            ",logfile={},logappend=on",
            escape_commas(&l.to_string_lossy())
        ));
    }
    s
}

/// QEMU option values use ',' as a separator; a literal comma is doubled.
fn escape_commas(s: &str) -> String {
    s.replace(',', ",,")
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: impl Into<OsString>) -> &mut Self {
        self.0.push(s.into());
        self
    }
    fn path(&mut self, p: &std::path::Path) -> &mut Self {
        self.0.push(p.as_os_str().to_os_string());
        self
    }
    fn joined(&mut self, pre: &str, p: &std::path::Path, post: &str) -> &mut Self {
        self.0
            .push(format!("{pre}{}{post}", escape_commas(&p.to_string_lossy())).into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        let d = PathBuf::from("/s/vm");
        LaunchSpec {
            name: "r1".into(),
            memory_mib: 256,
            cpus: 2,
            accel: Accel::Tcg,
            kernel: Some("/img/vmlinuz".into()),
            initrd: Some("/img/initrd.img".into()),
            cmdline: "console=ttyS0 labspan.hostname=r1".into(),
            disk: None,
            nics: vec![
                NicSpec {
                    tap: "lsT1".into(),
                    mac: [0x52, 0x54, 0, 1, 2, 3],
                },
                NicSpec {
                    tap: "lsT2".into(),
                    mac: [0x52, 0x54, 0, 1, 2, 4],
                },
            ],
            paths: VmPaths {
                pidfile: d.join("qemu.pid"),
                qmp: d.join("qmp.sock"),
                console: d.join("console.sock"),
                console_log: d.join("console.log"),
                qga: d.join("qga.sock"),
            },
            incoming: false,
            start_paused: false,
        }
    }

    fn strings(spec: &LaunchSpec) -> Vec<String> {
        command_line(spec)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    /// The value following `flag`, for each occurrence.
    fn values(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn nics_become_tap_netdevs_in_order() {
        let a = strings(&spec());
        assert_eq!(
            values(&a, "-netdev"),
            vec![
                "tap,id=net0,ifname=lsT1,script=no,downscript=no",
                "tap,id=net1,ifname=lsT2,script=no,downscript=no"
            ]
        );
        let devices = values(&a, "-device");
        assert!(devices.contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:01:02:03".to_string()));
        assert!(devices.contains(&"virtio-net-pci,netdev=net1,mac=52:54:00:01:02:04".to_string()));
    }

    #[test]
    fn sockets_pidfile_and_daemon() {
        let a = strings(&spec());
        let chardevs = values(&a, "-chardev");
        assert!(chardevs.contains(
            &"socket,id=serial0,path=/s/vm/console.sock,server=on,wait=off,logfile=/s/vm/console.log,logappend=on"
                .to_string()
        ));
        assert!(
            chardevs.contains(&"socket,id=qmp0,path=/s/vm/qmp.sock,server=on,wait=off".to_string())
        );
        assert!(
            chardevs.contains(&"socket,id=qga0,path=/s/vm/qga.sock,server=on,wait=off".to_string())
        );
        assert!(values(&a, "-device")
            .iter()
            .any(|d| d.contains("name=org.qemu.guest_agent.0")));
        assert_eq!(values(&a, "-pidfile"), vec!["/s/vm/qemu.pid"]);
        assert!(a.contains(&"-daemonize".to_string()));
        assert_eq!(values(&a, "-display"), vec!["none"]);
        assert_eq!(values(&a, "-m"), vec!["256M"]);
        assert_eq!(values(&a, "-smp"), vec!["2"]);
    }

    #[test]
    fn a_failed_guest_is_held_for_the_agent() {
        let a = strings(&spec());
        assert!(values(&a, "-device").contains(&"pvpanic".to_string()));
        assert_eq!(
            values(&a, "-action"),
            vec!["reboot=shutdown,shutdown=pause,panic=pause"]
        );
    }

    #[test]
    fn accel_and_boot_source() {
        let mut s = spec();
        let a = strings(&s);
        assert_eq!(values(&a, "-accel"), vec!["tcg"]);
        assert!(values(&a, "-cpu").is_empty());
        assert_eq!(values(&a, "-kernel"), vec!["/img/vmlinuz"]);
        assert_eq!(
            values(&a, "-append"),
            vec!["console=ttyS0 labspan.hostname=r1"]
        );
        assert!(values(&a, "-drive").is_empty());
        assert!(values(&a, "-incoming").is_empty());
        s.incoming = true;
        assert_eq!(values(&strings(&s), "-incoming"), vec!["defer"]);
        assert!(!strings(&s).contains(&"-S".to_string()));
        s.start_paused = true;
        assert!(strings(&s).contains(&"-S".to_string()));

        s.accel = Accel::Kvm;
        s.kernel = None;
        s.disk = Some("/s/vm,x/overlay.qcow2".into());
        let a = strings(&s);
        assert_eq!(values(&a, "-accel"), vec!["kvm"]);
        assert_eq!(values(&a, "-cpu"), vec!["host"]);
        assert!(values(&a, "-kernel").is_empty() && values(&a, "-append").is_empty());
        assert_eq!(
            values(&a, "-drive"),
            vec!["file=/s/vm,,x/overlay.qcow2,if=virtio,format=qcow2,cache=writeback"]
        );
    }
}
