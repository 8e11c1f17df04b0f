//! Network namespaces for the kernel tests: made by the test, entered by a
//! thread that runs the code under test, removed on drop even on failure.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::Command;

use serde_json::Value;

/// Runs `f` in a thread that has entered the namespace `name` (netlink
/// sockets it opens and processes it starts live there).
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(format!("/run/netns/{name}")).expect("open the netns");
            // SAFETY: `ns` is an open netns file for the duration of the
            // call; setns only changes this (spawned) thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {name}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    })
}

/// Runs the future `make` returns on a current-thread runtime inside the
/// namespace `name`.
pub fn block_on_in<T: Send, Fut: Future<Output = T>>(
    name: &str,
    make: impl FnOnce() -> Fut + Send,
) -> T {
    run_in(name, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(make())
    })
}

/// A network namespace that lives as long as the value.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add lstest-TAG-PID`. Panics when that is refused (the
    /// kernel tests need root).
    pub fn new(tag: &str) -> Netns {
        let name = format!("lstest-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "`ip netns add {name}` failed: the network tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)");
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` in a thread that has entered this namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.name, f)
    }

    /// Runs the future `make` returns on a current-thread runtime, in a
    /// thread that has entered this namespace.
    pub fn block_on<T: Send, Fut: Future<Output = T>>(
        &self,
        make: impl FnOnce() -> Fut + Send,
    ) -> T {
        block_on_in(&self.name, make)
    }

    /// `ip -n NS ARGS`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.run("ip", &[&["-n", &self.name], args].concat())
    }

    /// `ip netns exec NS PROGRAM ARGS`; whether it exited 0.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> bool {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .output()
            .expect("run iproute2");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every interface, as `ip -j -d link show` describes it.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-j", "-d", "link", "show"])).expect("ip -j output")
    }

    /// One interface, if it exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    /// Names of the interfaces labspan could have made (`ls` prefix).
    pub fn labspan_names(&self) -> Vec<String> {
        let names = self
            .links()
            .into_iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string));
        names.filter(|n| n.starts_with("ls")).collect()
    }

    /// Destinations of the all-zeros `self` FDB entries of `dev`.
    pub fn zero_fdb(&self, dev: &str) -> Vec<String> {
        let out = self.run(
            "bridge",
            &["-n", &self.name, "-j", "fdb", "show", "dev", dev],
        );
        let entries: Vec<Value> = serde_json::from_str(&out).expect("bridge -j output");
        let mut dsts: Vec<String> = entries
            .iter()
            .filter(|e| e["mac"] == "00:00:00:00:00:00")
            .filter(|e| {
                e["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "self"))
            })
            .filter_map(|e| e["dst"].as_str().map(str::to_string))
            .collect();
        dsts.sort();
        dsts
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes every interface in it; a missing
        // namespace is fine (idempotent).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
