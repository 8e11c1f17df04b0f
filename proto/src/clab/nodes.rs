//! The nodes of a containerlab topology: each node's fields looked up
//! through its layers (the node, its group, its kind, the defaults), and
//! what they become: its flavour, image, NICs, `env`, size and `exec`.

use std::collections::BTreeMap;

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node as Yaml;

use super::{join, scalar, Cx, Flavour, Found, Layer, Options};
use super::{BRIDGE_KINDS, CONTAINER_KINDS, REFUSED_FIELDS, VRNETLAB_KINDS};
use super::{DEFAULT_LINUX_IMAGE, LINUX_CPUS, LINUX_MEMORY_MIB, VM_CPUS, VM_MEMORY_MIB};
use crate::lab::{Nic, Node, RestartPolicy};
use crate::names::valid;
use crate::suggest::closest;

impl Cx<'_> {
    /// One node: its flavour, and the labspan node (none for a bridge).
    pub(super) fn node(
        &mut self,
        key: &MarkedScalarNode,
        stack: &Stack<'_, '_>,
        opts: &Options,
    ) -> Option<(Flavour, Option<Node>)> {
        let name = key.as_str();
        let path = &stack.own.path;
        let at = Yaml::Scalar(key.clone());
        let kind = match stack.kind() {
            Some(f) => self.string(f.value, &f.path)?,
            None => {
                self.error(
                    &at,
                    path,
                    format!("node \"{name}\" has no kind"),
                    Some("set `kind:` on the node, its group, or topology.defaults".into()),
                );
                return None;
            }
        };
        let flavour = if kind == "linux" {
            Flavour::Linux
        } else if kind == "generic_vm" || VRNETLAB_KINDS.contains(&kind.as_str()) {
            Flavour::Vm
        } else if BRIDGE_KINDS.contains(&kind.as_str()) {
            Flavour::Bridge
        } else if CONTAINER_KINDS.contains(&kind.as_str()) {
            self.error(&at, &join(path, "kind"), format!("node \"{name}\": kind \"{kind}\" runs only as a container; labspan runs VMs"), Some("use the vrnetlab (VM) kind of this system with its qcow2 image, or a `linux` node".into()));
            return None;
        } else {
            let all = VRNETLAB_KINDS
                .iter()
                .chain(CONTAINER_KINDS)
                .chain(BRIDGE_KINDS)
                .chain(&["linux", "generic_vm"])
                .copied();
            let help = closest(&kind, all).map(|g| format!("did you mean \"{g}\"?"));
            self.error(
                &at,
                &join(path, "kind"),
                format!("node \"{name}\": unknown kind \"{kind}\""),
                help,
            );
            return None;
        };
        if let Some(g) = stack.own.fields.get("group").and_then(|g| scalar(g)) {
            if !stack.groups.contains_key(g) {
                let help = closest(g, stack.groups.keys().map(String::as_str))
                    .map(|c| format!("did you mean \"{c}\"?"));
                self.error(
                    &at,
                    &join(path, "group"),
                    format!("node \"{name}\": group \"{g}\" is not under topology.groups"),
                    help,
                );
            }
        }
        let name_ok = match valid::node(name) {
            Ok(()) => true,
            Err(e) => {
                self.error(&at, path, e.why, Some(e.help));
                false
            }
        };
        if flavour == Flavour::Bridge {
            if let Err(e) = valid::lan(name) {
                self.error(&at, path, format!("bridge: {}", e.why), Some(e.help));
            }
            return Some((flavour, None));
        }

        let mut ok = name_ok;
        for (field, why) in REFUSED_FIELDS {
            if let Some(f) = stack.get(field) {
                self.error(
                    f.value,
                    &f.path,
                    format!("node \"{name}\": `{field}` cannot be imported: {why}"),
                    Some(format!("remove `{field}`")),
                );
                ok = false;
            }
        }
        if let Some(f) = stack.get("type") {
            self.notes.push(format!(
                "{}: left out (the image you name decides the variant of node \"{name}\")",
                f.path
            ));
        }
        let env = self.env(stack, name, flavour);
        let clab_image = match stack.get("image") {
            Some(f) => self.string(f.value, &f.path),
            None => None,
        };
        let image = [Some(name), clab_image.as_deref(), Some(kind.as_str())]
            .into_iter()
            .flatten()
            .find_map(|k| opts.images.get(k).cloned())
            .or_else(|| (flavour == Flavour::Linux).then(|| DEFAULT_LINUX_IMAGE.to_string()));
        let image = match image {
            Some(i) => i,
            None => {
                let what =
                    clab_image.map_or(String::new(), |i| format!(" (containerlab image {i})"));
                self.error(&at, path, format!("node \"{name}\" of kind {kind}{what} has no labspan image"), Some(format!("name its qcow2 image: --image {kind}=NAME (an image from `labspan image list`, or a .qcow2 file)")));
                return None;
            }
        };
        let (memory, cpus) = self.size(stack, name, flavour, &env)?;
        let exec = self.exec(stack, name, flavour);
        let restart = match stack.get("restart-policy") {
            None => RestartPolicy::default(),
            Some(f) => match self.string(f.value, &f.path)?.as_str() {
                "no" => RestartPolicy::Never,
                "on-failure" => RestartPolicy::OnFailure,
                "always" | "unless-stopped" => RestartPolicy::Always,
                other => {
                    self.error(f.value, &f.path, format!("node \"{name}\": restart-policy \"{other}\" is not one of no, on-failure, always, unless-stopped"), None);
                    return None;
                }
            },
        };
        let mut nics = BTreeMap::new();
        // vrnetlab (and containerlab for every node) keeps eth0 for
        // management: the guest's first NIC, joined to nothing here.
        nics.insert("eth0".to_string(), Nic::default());
        let node = Node {
            image,
            memory_mib: memory,
            cpus,
            nics,
            exec: exec?,
            files: BTreeMap::new(),
            restart,
        };
        ok.then_some((flavour, Some(node)))
    }

    /// The node's merged `env` (defaults < kind < group < node), with the
    /// variables labspan cannot honour refused.
    fn env<'y>(
        &mut self,
        stack: &Stack<'_, 'y>,
        name: &str,
        flavour: Flavour,
    ) -> BTreeMap<String, (String, String)> {
        let mut env = BTreeMap::new();
        for layer in stack.lowest_first() {
            let Some(y) = layer.fields.get("env") else {
                continue;
            };
            let path = join(&layer.path, "env");
            let Some(Some(m)) = self.mapping(y, &path) else {
                continue;
            };
            for (k, v) in m.iter() {
                let p = join(&path, k.as_str());
                if let Some(text) = self.string(v, &p) {
                    env.insert(k.as_str().to_string(), (text, p, v));
                }
            }
        }
        let vm_vars = ["QEMU_SMP", "QEMU_MEMORY"];
        let ignored = [
            "CONNECTION_MODE",
            "CLAB_MGMT_PASSTHROUGH",
            "USERNAME",
            "PASSWORD",
        ];
        let mut keep = BTreeMap::new();
        for (k, (v, p, at)) in env {
            if flavour == Flavour::Vm && vm_vars.contains(&k.as_str()) {
                keep.insert(k, (v, p));
            } else if flavour == Flavour::Vm && ignored.contains(&k.as_str()) {
                self.notes.push(format!("{p}: left out (vrnetlab's launcher setting; labspan wires the NICs and does not log in)"));
            } else {
                let why = if flavour == Flavour::Vm {
                    "of the vrnetlab variables only QEMU_SMP and QEMU_MEMORY have a labspan equivalent"
                } else {
                    "a VM has no container environment"
                };
                self.error(
                    at,
                    &p,
                    format!("node \"{name}\": env variable {k} cannot be imported: {why}"),
                    Some(format!("remove {k}")),
                );
            }
        }
        keep
    }

    /// Memory (MiB) and CPUs: vrnetlab's QEMU_MEMORY / QEMU_SMP first, then
    /// containerlab's `memory` / `cpu`, then a default for the flavour.
    fn size(
        &mut self,
        stack: &Stack<'_, '_>,
        name: &str,
        flavour: Flavour,
        env: &BTreeMap<String, (String, String)>,
    ) -> Option<(u64, u32)> {
        let (mut memory, mut cpus) = match flavour {
            Flavour::Linux => (LINUX_MEMORY_MIB, LINUX_CPUS),
            _ => (VM_MEMORY_MIB, VM_CPUS),
        };
        let mut ok = true;
        if let Some((v, p)) = env.get("QEMU_MEMORY") {
            match v.trim().parse::<u64>() {
                Ok(m) => memory = m,
                Err(_) => {
                    self.push(
                        p,
                        format!("node \"{name}\": QEMU_MEMORY \"{v}\" is not a number of MB"),
                    );
                    ok = false;
                }
            }
        } else if let Some(f) = stack.get("memory") {
            let text = self.string(f.value, &f.path)?;
            match crate::lab::units::docker_size_mib(&text) {
                Some(m) => memory = m,
                None => {
                    self.error(
                        f.value,
                        &f.path,
                        format!("node \"{name}\": memory \"{text}\" is not a size"),
                        Some("write it as containerlab does: 512Mb, 2Gb".into()),
                    );
                    ok = false;
                }
            }
        }
        if let Some((v, p)) = env.get("QEMU_SMP") {
            // QEMU_SMP may carry a topology too: "4,sockets=1,cores=4".
            match v
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .parse::<u32>()
            {
                Ok(c) => cpus = c,
                Err(_) => {
                    self.push(
                        p,
                        format!(
                            "node \"{name}\": QEMU_SMP \"{v}\" does not start with a CPU count"
                        ),
                    );
                    ok = false;
                }
            }
        } else if let Some(f) = stack.get("cpu") {
            let text = self.string(f.value, &f.path)?;
            match text.trim().parse::<f64>() {
                // A fractional CPU limit still needs a whole virtual CPU.
                Ok(c) if c > 0.0 && c <= 1024.0 => cpus = c.ceil() as u32,
                _ => {
                    self.error(
                        f.value,
                        &f.path,
                        format!("node \"{name}\": cpu \"{text}\" is not a positive number"),
                        None,
                    );
                    ok = false;
                }
            }
        }
        if !(32..=1024 * 1024).contains(&memory) {
            self.push(
                &stack.own.path,
                format!("node \"{name}\": memory {memory} MiB is outside 32 MiB ..= 1 TiB"),
            );
            ok = false;
        }
        if !(1..=64).contains(&cpus) {
            self.push(
                &stack.own.path,
                format!("node \"{name}\": {cpus} CPUs is outside 1 ..= 64"),
            );
            ok = false;
        }
        ok.then_some((memory, cpus))
    }

    /// `exec` lines, joined defaults first; only a `linux` node runs them in
    /// its guest (containerlab runs a VM kind's in the launcher container).
    fn exec(&mut self, stack: &Stack<'_, '_>, name: &str, flavour: Flavour) -> Option<Vec<String>> {
        let mut lines: Vec<String> = Vec::new();
        let mut ok = true;
        for layer in stack.lowest_first() {
            let Some(y) = layer.fields.get("exec") else {
                continue;
            };
            let path = join(&layer.path, "exec");
            if flavour != Flavour::Linux {
                self.error(y, &path, format!("node \"{name}\": `exec` cannot be imported: containerlab runs it in the vrnetlab launcher container, not in the VM"), Some("remove `exec`".into()));
                ok = false;
                continue;
            }
            match y {
                Yaml::Sequence(s) => {
                    for (i, line) in s.iter().enumerate() {
                        if let Some(l) = self.string(line, &format!("{path}[{i}]")) {
                            if !lines.contains(&l) {
                                lines.push(l);
                            }
                        }
                    }
                }
                _ => {
                    self.error(y, &path, "expected a list of commands".into(), None);
                    ok = false;
                }
            }
        }
        ok.then_some(lines)
    }
}

/// A node's layers, looked up as containerlab does.
pub(super) struct Stack<'l, 'y> {
    pub(super) own: Layer<'y>,
    pub(super) defaults: &'l Layer<'y>,
    pub(super) kinds: &'l BTreeMap<String, Layer<'y>>,
    pub(super) groups: &'l BTreeMap<String, Layer<'y>>,
}

impl<'y> Stack<'_, 'y> {
    fn group(&self) -> Option<&Layer<'y>> {
        let g = self
            .own
            .fields
            .get("group")
            .or_else(|| self.defaults.fields.get("group"))?;
        self.groups.get(scalar(g)?)
    }

    /// The kind: the node's, else its group's, else the defaults'.
    fn kind(&self) -> Option<Found<'y>> {
        let layers = [Some(&self.own), self.group(), Some(self.defaults)];
        layers.into_iter().flatten().find_map(|l| found(l, "kind"))
    }

    fn kind_layer(&self) -> Option<&Layer<'y>> {
        self.kinds.get(scalar(self.kind()?.value)?)
    }

    /// A field: the node's, else its group's, else its kind's, else the defaults'.
    fn get(&self, field: &str) -> Option<Found<'y>> {
        self.highest_first()
            .into_iter()
            .find_map(|l| found(l, field))
    }

    fn highest_first(&self) -> Vec<&Layer<'y>> {
        [
            Some(&self.own),
            self.group(),
            self.kind_layer(),
            Some(self.defaults),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn lowest_first(&self) -> Vec<&Layer<'y>> {
        let mut v = self.highest_first();
        v.reverse();
        v
    }
}

fn found<'y>(l: &Layer<'y>, field: &str) -> Option<Found<'y>> {
    l.fields.get(field).map(|v| Found {
        value: v,
        path: join(&l.path, field),
    })
}
