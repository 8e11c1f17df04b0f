//! Topologies written for these tests in containerlab's documented format
//! (docs/manual/topo-def-file.md, nodes.md, network.md).

use super::*;
use crate::lab::units::docker_size_mib as docker_mib;
use crate::lab::RestartPolicy;

fn opts(images: &[(&str, &str)]) -> Options {
    Options {
        file: "t.clab.yml".into(),
        name: None,
        images: images
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn ok(text: &str, images: &[(&str, &str)]) -> Imported {
    match import(text, &opts(images)) {
        Ok(i) => i,
        Err(d) => panic!("import failed:\n{d}"),
    }
}

fn errors(text: &str, images: &[(&str, &str)]) -> String {
    match import(text, &opts(images)) {
        Ok(i) => panic!("import should fail, gave:\n{}", i.text),
        Err(d) => d.to_string(),
    }
}

fn ep(node: &str, nic: &str) -> Endpoint {
    Endpoint {
        node: node.into(),
        nic: nic.into(),
    }
}

#[test]
fn linux_nodes_and_short_links_become_a_lab_that_validates() {
    let text = r#"
name: srl01
topology:
  nodes:
    h1:
      kind: linux
      image: alpine:3.20
      exec:
        - ip addr add 198.19.1.1/24 dev eth1
    h2:
      kind: linux
      image: alpine:3.20
  links:
    - endpoints: ["h1:eth1", "h2:eth1"]
    - endpoints: ["h1:eth2", "h2:eth2"]
      mtu: 1400
"#;
    let got = ok(text, &[]);
    assert_eq!(got.lab.name, "srl01");
    let h1 = &got.lab.nodes["h1"];
    assert_eq!(h1.image, DEFAULT_LINUX_IMAGE);
    assert_eq!((h1.memory_mib, h1.cpus), (LINUX_MEMORY_MIB, LINUX_CPUS));
    assert_eq!(h1.exec, vec!["ip addr add 198.19.1.1/24 dev eth1"]);
    assert_eq!(
        h1.nics.keys().collect::<Vec<_>>(),
        vec!["eth0", "eth1", "eth2"]
    );
    assert_eq!(h1.nics["eth2"].mtu, Some(1400));
    assert_eq!(got.lab.nodes["h2"].nics["eth2"].mtu, Some(1400));
    assert_eq!(got.lab.links.len(), 2);
    assert_eq!(
        got.lab.links[0].endpoints,
        [ep("h1", "eth1"), ep("h2", "eth1")]
    );
    // The text is a lab file that gives back the same lab.
    let back = lab::parse("out", &got.text).expect("the output validates");
    assert_eq!(back, got.lab);
}

#[test]
fn fields_are_inherited_node_over_group_over_kind_over_defaults() {
    let text = r#"
name: inherit
topology:
  defaults:
    kind: linux
    memory: 300Mb
    cpu: 1
    env: {A: "1"}
    exec: ["echo defaults"]
  kinds:
    linux:
      memory: 400Mb
      cpu: 2
      image: deb:kind
      exec: ["echo kind"]
  groups:
    spine:
      memory: 500Mb
      image: deb:group
      exec: ["echo group"]
  nodes:
    plain: {}
    grouped:
      group: spine
    own:
      group: spine
      memory: 1Gb
      cpu: 1.5
      image: deb:own
      exec: ["echo own", "echo kind"]
"#;
    let images = [
        ("deb:kind", "k-img"),
        ("deb:group", "g-img"),
        ("deb:own", "o-img"),
    ];
    // `env` other than vrnetlab's has no VM meaning: refused, with the
    // defaults' path named, since that is where it was written.
    let e = errors(text, &images);
    assert!(e.contains("topology.defaults.env.A"), "{e}");
    assert!(e.contains("node \"plain\""), "{e}");

    let text = text.replace("    env: {A: \"1\"}\n", "");
    let got = ok(&text, &images);
    let n = |name: &str| got.lab.nodes[name].clone();
    // kind over defaults
    assert_eq!((n("plain").memory_mib, n("plain").cpus), (400, 2));
    assert_eq!(n("plain").image, "k-img");
    // group over kind; cpu still from the kind
    assert_eq!((n("grouped").memory_mib, n("grouped").cpus), (500, 2));
    assert_eq!(n("grouped").image, "g-img");
    // node over group; a fractional CPU needs a whole one
    assert_eq!((n("own").memory_mib, n("own").cpus), (1024, 2));
    assert_eq!(n("own").image, "o-img");
    // exec lists join, defaults first, each line once
    assert_eq!(n("plain").exec, vec!["echo defaults", "echo kind"]);
    assert_eq!(
        n("own").exec,
        vec!["echo defaults", "echo kind", "echo group", "echo own"]
    );
}

#[test]
fn the_kind_comes_from_the_group_or_the_defaults() {
    let text = r#"
name: kinds
topology:
  defaults: {kind: linux}
  groups:
    routers: {kind: juniper_vmx}
  nodes:
    r1: {group: routers}
    h1: {}
  links:
    - endpoints: [r1:eth1, h1:eth1]
"#;
    let got = ok(text, &[("juniper_vmx", "vmx-23")]);
    assert_eq!(got.lab.nodes["r1"].image, "vmx-23");
    assert_eq!(got.lab.nodes["h1"].image, DEFAULT_LINUX_IMAGE);
}

#[test]
fn vrnetlab_kinds_use_the_named_image_and_keep_eth0_for_management() {
    let text = r#"
name: vr
topology:
  kinds:
    nokia_sros:
      image: vrnetlab/nokia_sros:23.10
      env: {QEMU_MEMORY: "6144", QEMU_SMP: "4,sockets=1"}
  nodes:
    sr1: {kind: nokia_sros, type: sr-1}
    sr2: {kind: vr-sros, image: vrnetlab/nokia_sros:24.3}
    csr: {kind: cisco_csr1000v, memory: 4Gb, cpu: 2}
    veos: {kind: arista_veos, env: {CONNECTION_MODE: tc}}
    vm: {kind: generic_vm, image: vrnetlab/ubuntu:jammy}
  links:
    - endpoints: [sr1:eth1, sr2:eth1]
    - endpoints: [sr1:eth2, csr:eth1]
    - endpoints: [veos:eth1, vm:eth1]
"#;
    let images = [
        ("nokia_sros", "sros-23"),
        ("vrnetlab/nokia_sros:24.3", "sros-24"),
        ("vr-sros", "not-this-one"),
        ("cisco_csr1000v", "csr"),
        ("csr", "csr-node"),
        ("arista_veos", "veos"),
        ("vrnetlab/ubuntu:jammy", "ubuntu"),
    ];
    let got = ok(text, &images);
    let n = |name: &str| got.lab.nodes[name].clone();
    // by kind; vrnetlab's QEMU variables size the VM
    assert_eq!(n("sr1").image, "sros-23");
    assert_eq!((n("sr1").memory_mib, n("sr1").cpus), (6144, 4));
    // a containerlab image is a closer match than the kind
    assert_eq!(n("sr2").image, "sros-24");
    // a node name is the closest match of all
    assert_eq!(n("csr").image, "csr-node");
    assert_eq!((n("csr").memory_mib, n("csr").cpus), (4096, 2));
    // nothing says: a size a network OS boots in
    assert_eq!(
        (n("veos").memory_mib, n("veos").cpus),
        (VM_MEMORY_MIB, VM_CPUS)
    );
    assert_eq!(n("vm").image, "ubuntu");
    for node in got.lab.nodes.values() {
        assert!(node.nics.contains_key("eth0"), "eth0 is management");
    }
    assert!(
        got.notes.iter().any(|n| n.contains("type")),
        "{:?}",
        got.notes
    );
    assert!(
        got.notes.iter().any(|n| n.contains("CONNECTION_MODE")),
        "{:?}",
        got.notes
    );
    lab::parse("out", &got.text).expect("the output validates");
}

#[test]
fn a_vm_without_an_image_names_the_flag_to_give() {
    let text = "name: x\ntopology:\n  nodes:\n    r1: {kind: juniper_vmx}\n";
    let e = errors(text, &[]);
    assert!(e.contains("node \"r1\" of kind juniper_vmx"), "{e}");
    assert!(e.contains("--image juniper_vmx=NAME"), "{e}");
}

#[test]
fn extended_veth_links_carry_addresses_and_mtu() {
    let text = r#"
name: ext
topology:
  nodes:
    a: {kind: linux}
    b: {kind: linux}
  links:
    - type: veth
      mtu: 9000
      endpoints:
        - node: a
          interface: eth1
          ipv4: 198.19.1.1/24
          ipv6: 2001:db8::1/64
        - node: b
          interface: eth1
          ipv4: 198.19.1.2/24
"#;
    let got = ok(text, &[]);
    let a = &got.lab.nodes["a"].nics["eth1"];
    assert_eq!(
        a.ip.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        vec!["198.19.1.1/24", "2001:db8::1/64"]
    );
    assert_eq!(a.mtu, Some(9000));
    assert_eq!(
        got.lab.links[0].endpoints,
        [ep("a", "eth1"), ep("b", "eth1")]
    );
    lab::parse("out", &got.text).expect("the output validates");
}

#[test]
fn bridges_become_lans_and_dummy_links_unconnected_nics() {
    let text = r#"
name: br
topology:
  nodes:
    br-core: {kind: bridge}
    h1: {kind: linux}
    h2: {kind: linux}
    h3: {kind: linux}
  links:
    - endpoints: [h1:eth1, br-core:h1port]
    - endpoints: [br-core:h2port, h2:eth1]
    - type: veth
      endpoints: [{node: h3, interface: eth1}, {node: br-core, interface: h3port}]
    - type: dummy
      endpoint: {node: h1, interface: eth5}
"#;
    let got = ok(text, &[]);
    assert!(!got.lab.nodes.contains_key("br-core"), "a bridge is no VM");
    assert_eq!(
        got.lab.lans["br-core"].members,
        vec![ep("h1", "eth1"), ep("h2", "eth1"), ep("h3", "eth1")]
    );
    assert!(got.lab.links.is_empty());
    assert!(got.lab.nodes["h1"].nics.contains_key("eth5"));
    lab::parse("out", &got.text).expect("the output validates");
}

#[test]
fn container_only_things_are_refused_naming_node_and_field() {
    let text = r#"
name: refused
topology:
  groups:
    edge:
      mgmt-ipv4: 172.20.20.5
  nodes:
    srl: {kind: nokia_srlinux}
    h1:
      kind: linux
      mgmt-ipv4: 172.20.20.10
      binds: [/tmp:/tmp]
    h2: {kind: linux, group: edge}
    r1: {kind: juniper_vmx, exec: ["echo hi"]}
"#;
    let e = errors(text, &[("juniper_vmx", "vmx")]);
    assert!(
        e.contains("kind \"nokia_srlinux\" runs only as a container"),
        "{e}"
    );
    assert!(e.contains("t.clab.yml:11:18: topology.nodes.h1.mgmt-ipv4: node \"h1\": `mgmt-ipv4` cannot be imported"), "{e}");
    assert!(e.contains("topology.nodes.h1.binds: node \"h1\""), "{e}");
    // inherited: the group is where it was written
    assert!(
        e.contains("topology.groups.edge.mgmt-ipv4: node \"h2\""),
        "{e}"
    );
    assert!(
        e.contains("topology.nodes.r1.exec: node \"r1\": `exec`"),
        "{e}"
    );
}

#[test]
fn wrong_links_are_reported_each_with_its_path() {
    let text = r#"
name: links
topology:
  nodes:
    a: {kind: linux}
    b: {kind: linux}
    r: {kind: arista_veos}
  links:
    - endpoints: [a:eth0, b:eth0]
    - endpoints: [a:eth1, c:eth1]
    - endpoints: [a:eth2, r:Ethernet1]
    - endpoints: [a:eth3, b:eth3]
    - endpoints: [a:eth3, b:eth4]
    - type: vxlan
      endpoint: {node: a, interface: eth9}
      remote: 198.18.0.2
      vni: 100
    - endpoints: [a:eth6, host:a-eth6]
    - type: veth
      endpoints:
        - {node: a, interface: eth7, mac: "02:00:00:00:00:01"}
        - {node: b, interface: eth7}
    - endpoints: [a:eth8, b:eth8, r:eth8]
    - endpoint: [a:eth9]
"#;
    let e = errors(text, &[("arista_veos", "veos")]);
    for want in [
        "topology.links[0].endpoints[0]: a:eth0 is the management interface",
        "topology.links[1].endpoints[1]: node \"c\" does not exist",
        "topology.links[2].endpoints[1]: interface \"Ethernet1\" of node \"r\"",
        "topology.links[4].endpoints[0]: a:eth3 is already used by topology.links[3].endpoints[0]",
        "topology.links[5].type: link type \"vxlan\" cannot be imported",
        "node \"host\" does not exist\n  help: links to the host machine",
        "topology.links[6].endpoints[1]: node \"host\" does not exist",
        "topology.links[7].endpoints[0].mac: `mac` cannot be imported",
        "topology.links[8]: a link has exactly two endpoints, this one has 3",
        "topology.links[9]: a link needs `endpoints`",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn unknown_kinds_fields_and_names_get_a_suggestion() {
    let text = r#"
name: My_Lab
topology:
  nodes:
    r1: {kind: juniper_vmxx}
    h1: {kind: linux, imgae: alpine}
    h2: {kind: linux, group: leafs}
    H3: {kind: linux}
    h4: {image: alpine}
"#;
    let e = errors(text, &[]);
    for want in [
        "name: lab name \"My_Lab\" cannot be used",
        "--name",
        "unknown kind \"juniper_vmxx\"",
        "did you mean \"juniper_vmx\"?",
        "unknown node field \"imgae\"",
        "did you mean \"image\"?",
        "group \"leafs\" is not under topology.groups",
        "node name \"H3\" cannot be used",
        "node \"h4\" has no kind",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // --name replaces a name labspan cannot use
    let text = "name: My_Lab\ntopology:\n  nodes:\n    a: {kind: linux}\n";
    let mut o = opts(&[]);
    o.name = Some("my-lab".into());
    assert_eq!(
        import(text, &o).map(|i| i.lab.name).ok().as_deref(),
        Some("my-lab")
    );
}

#[test]
fn a_bridge_with_one_member_is_refused() {
    let text = r#"
name: br
topology:
  nodes:
    br1: {kind: bridge}
    h1: {kind: linux}
  links:
    - endpoints: [h1:eth1, br1:p1]
"#;
    let e = errors(text, &[]);
    assert!(e.contains("bridge \"br1\" has 1 link(s)"), "{e}");
}

#[test]
fn bad_yaml_and_bad_sizes_are_reported() {
    assert!(errors("", &[]).contains("empty"));
    assert!(errors("name: [\n", &[]).contains("YAML syntax error"));
    let dup = "name: a\nname: b\ntopology: {nodes: {a: {kind: linux}}}\n";
    assert!(errors(dup, &[]).contains("duplicate key \"name\""));
    let anchors = "name: a\ntopology:\n  nodes:\n    a: &x {kind: linux}\n    b: *x\n";
    assert!(errors(anchors, &[]).contains("anchors"));
    let sizes = r#"
name: sizes
topology:
  nodes:
    a: {kind: linux, memory: lots}
    b: {kind: linux, cpu: -1}
    c: {kind: juniper_vsrx, env: {QEMU_MEMORY: 4G}}
    d: {kind: linux, memory: 8Mb}
"#;
    let e = errors(sizes, &[("juniper_vsrx", "vsrx")]);
    for want in [
        "memory \"lots\" is not a size",
        "cpu \"-1\" is not a positive number",
        "QEMU_MEMORY \"4G\" is not a number of MB",
        "memory 8 MiB is outside",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn docker_sizes_are_binary() {
    assert_eq!(docker_mib("512Mb"), Some(512));
    assert_eq!(docker_mib("1Gb"), Some(1024));
    assert_eq!(docker_mib("1.5g"), Some(1536));
    assert_eq!(docker_mib("2GiB"), Some(2048));
    assert_eq!(docker_mib("1048576"), Some(1));
    assert_eq!(docker_mib("12 parsecs"), None);
    assert_eq!(docker_mib(""), None);
}

#[test]
fn restart_policies_map_onto_labspan_ones() {
    let text = r#"
name: rp
topology:
  nodes:
    a: {kind: linux, restart-policy: "no"}
    b: {kind: linux, restart-policy: unless-stopped}
    c: {kind: linux}
"#;
    let got = ok(text, &[]);
    assert_eq!(got.lab.nodes["a"].restart, RestartPolicy::Never);
    assert_eq!(got.lab.nodes["b"].restart, RestartPolicy::Always);
    assert_eq!(got.lab.nodes["c"].restart, RestartPolicy::OnFailure);
}
