//! Booting a failed-over machine of the local target with qemu: the VM spec the local
//! target writes (`<root>/vms/<vm>.json`, format 1) turned into a `qemu-system-x86_64`
//! command line (`lifeboat-appliance qemu-command`).
//!
//! - Disks in the spec's order, raw, on virtio; the first is the boot disk.
//! - Firmware: SeaBIOS for `bios`; for `uefi`, OVMF (Debian's `ovmf` package) as
//!   read-only pflash.
//! - Interfaces: virtio-net with the spec's MAC. An isolated VM (test failover) gets
//!   qemu's user network with `restrict=on` (no way out of the guest); network `default`
//!   gets the user network; any other network name is a host bridge of that name
//!   (`-netdev bridge`: the bridge must exist and `/etc/qemu/bridge.conf` must
//!   `allow` it). `--user-net` puts every interface on the user network instead.
//! - The serial console is the command's standard output (`-nographic`).

use crate::master_target::MasterError;
use serde::Deserialize;

/// Where Debian's `ovmf` package puts the UEFI firmware.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";

/// A VM spec as the local target writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalVmSpec {
    /// Format of the file; 1.
    pub format: u32,
    /// VM name.
    pub name: String,
    /// `bios` or `uefi`.
    pub firmware: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Test failover: no network way out.
    pub isolated: bool,
    /// Disk image paths, boot disk first.
    pub disks: Vec<String>,
    /// Interfaces.
    pub nics: Vec<LocalNic>,
}

/// An interface in a local VM spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalNic {
    /// Target network.
    pub network: String,
    /// MAC address.
    pub mac: Option<String>,
    /// Address the guest is to take (re-addressing); qemu does not set it, the guest does.
    pub ip: Option<String>,
}

/// Parses and checks a spec file's text.
pub fn parse_spec(text: &str) -> Result<LocalVmSpec, MasterError> {
    let spec: LocalVmSpec = serde_json::from_str(text)?;
    if spec.format != 1 {
        return Err(MasterError::msg(format!(
            "VM spec format {} is not known (this build reads 1)",
            spec.format
        )));
    };
    lifeboat_api::check_firmware(&spec.firmware)
        .map_err(|e| MasterError::msg(format!("firmware: {e}")))?;
    if !(1..=256).contains(&spec.cpus) {
        return Err(MasterError::msg("cpus: expected 1 to 256"));
    };
    if !(16..=(4 << 20)).contains(&spec.memory_mib) {
        return Err(MasterError::msg("memory_mib: expected 16 to 4194304"));
    };
    if spec.disks.is_empty() {
        return Err(MasterError::msg("disks: a VM needs a boot disk"));
    };
    for (i, d) in spec.disks.iter().enumerate() {
        if !d.starts_with('/') || d.contains(',') {
            return Err(MasterError::msg(format!(
                "disks[{i}]: expected an absolute path without commas"
            )));
        };
    }
    for (i, n) in spec.nics.iter().enumerate() {
        lifeboat_api::check_network(&n.network)
            .map_err(|e| MasterError::msg(format!("nics[{i}].network: {e}")))?;
        if let Some(m) = &n.mac {
            lifeboat_api::check_mac(m)
                .map_err(|e| MasterError::msg(format!("nics[{i}].mac: {e}")))?;
        }
    }
    Ok(spec)
}

/// The qemu command line (program first) that boots `spec`, with accelerator `accel`
/// (`tcg` or `kvm`). `user_net` puts every interface on qemu's user network instead of
/// its mapped bridge (a host without the target networks, such as a lab or a test).
pub fn qemu_args(
    spec: &LocalVmSpec,
    accel: &str,
    user_net: bool,
) -> Result<Vec<String>, MasterError> {
    if !matches!(accel, "tcg" | "kvm") {
        return Err(MasterError::msg(format!("accel: expected tcg or kvm, not {accel:?}")));
    };
    let mut a: Vec<String> = vec!["qemu-system-x86_64".into()];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &spec.name, "-accel", accel, "-nographic", "-no-reboot"]);
    push(&["-smp", &spec.cpus.to_string(), "-m", &spec.memory_mib.to_string()]);
    if spec.firmware == "uefi" {
        if !std::path::Path::new(OVMF_CODE).exists() {
            return Err(MasterError::msg(format!(
                "the VM boots with UEFI and {OVMF_CODE} is missing: install Debian's ovmf package"
            )));
        };
        push(&["-drive", &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}")]);
    }
    for (i, d) in spec.disks.iter().enumerate() {
        push(&["-drive", &format!("file={d},format=raw,if=none,id=disk{i}")]);
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        push(&["-device", &format!("virtio-blk-pci,drive=disk{i}{boot}")]);
    }
    if spec.nics.is_empty() {
        push(&["-nic", "none"]);
    }
    for (i, n) in spec.nics.iter().enumerate() {
        let netdev = if spec.isolated {
            format!("user,id=net{i},restrict=on")
        } else if n.network == "default" || user_net {
            format!("user,id=net{i}")
        } else {
            // The name goes into a qemu option string: a bridge name only.
            lifeboat_api::check_bridge(&n.network)
                .map_err(|e| MasterError::msg(format!("nics[{i}].network: {e}")))?;
            format!("bridge,id=net{i},br={}", n.network)
        };
        push(&["-netdev", &netdev]);
        let mac = n.mac.as_deref().map(|m| format!(",mac={m}")).unwrap_or_default();
        push(&["-device", &format!("virtio-net-pci,netdev=net{i}{mac}")]);
    }
    Ok(a)
}

/// `lifeboat-appliance qemu-command`: prints the command for the spec file at `path`,
/// shell-quoted, or as a JSON array.
pub fn print_command(
    path: &std::path::Path,
    accel: &str,
    user_net: bool,
    json: bool,
) -> Result<(), MasterError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MasterError::msg(format!("cannot read {}: {e}", path.display())))?;
    let spec =
        parse_spec(&text).map_err(|e| MasterError::msg(format!("{}: {e:#}", path.display())))?;
    let args = qemu_args(&spec, accel, user_net)?;
    if json {
        println!("{}", serde_json::to_string(&args)?);
    } else {
        let quoted: Vec<String> = args
            .iter()
            .map(|s| {
                if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=,./:".contains(&b)) {
                    s.clone()
                } else {
                    format!("'{}'", s.replace('\'', r"'\''"))
                }
            })
            .collect();
        println!("{}", quoted.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"format":1,"name":"fo-m","firmware":"bios","cpus":2,"memory_mib":512,
        "isolated":false,"disks":["/t/disks/a.img","/t/disks/b.img"],
        "nics":[{"network":"default","mac":"52:54:00:12:34:56","ip":null},{"network":"br-dr","mac":null,"ip":"10.0.0.5/24"}]}"#;

    #[test]
    fn a_spec_becomes_a_command() {
        let spec = parse_spec(SPEC).unwrap();
        let a = qemu_args(&spec, "tcg", false).unwrap().join(" ");
        assert!(a.contains("-smp 2 -m 512"), "{a}");
        assert!(a.contains("file=/t/disks/a.img,format=raw,if=none,id=disk0"), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=disk0,bootindex=0"), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=disk1 "), "{a}");
        assert!(a.contains("-netdev user,id=net0 "), "{a}");
        assert!(a.contains("mac=52:54:00:12:34:56"), "{a}");
        assert!(a.contains("-netdev bridge,id=net1,br=br-dr"), "{a}");
        let isolated =
            parse_spec(&SPEC.replace("\"isolated\":false", "\"isolated\":true")).unwrap();
        let a = qemu_args(&isolated, "tcg", false).unwrap().join(" ");
        assert!(
            a.contains("user,id=net0,restrict=on") && a.contains("user,id=net1,restrict=on"),
            "{a}"
        );
        let a = qemu_args(&spec, "tcg", true).unwrap().join(" ");
        assert!(a.contains("-netdev user,id=net1 ") && !a.contains("bridge"), "{a}");
        assert!(qemu_args(&spec, "xen", false).is_err());
    }

    #[test]
    fn malformed_specs_are_refused() {
        for bad in [
            "",
            "{}",
            "[1]",
            &SPEC.replace("\"format\":1", "\"format\":2"),
            &SPEC.replace("\"bios\"", "\"coreboot\""),
            &SPEC.replace("\"cpus\":2", "\"cpus\":0"),
            &SPEC.replace("\"memory_mib\":512", "\"memory_mib\":-1"),
            &SPEC.replace("/t/disks/a.img", "relative.img"),
            &SPEC.replace("/t/disks/a.img", "/a,b.img"),
            &SPEC.replace("\"br-dr\"", "\"br\\u0001dr\""),
            &SPEC.replace("52:54:00:12:34:56", "52:54:00"),
            &SPEC.replace("\"isolated\":false", "\"isolated\":false,\"extra\":1"),
            &SPEC.replace("[\"/t/disks/a.img\",\"/t/disks/b.img\"]", "[]"),
        ] {
            assert!(parse_spec(bad).is_err(), "accepted {bad}");
        }
        // A port group's name is a fine network name, but not a bridge for qemu's options
        // (unless every interface goes on the user network).
        let spec = parse_spec(&SPEC.replace("\"br-dr\"", "\"VM Network,x=1\"")).unwrap();
        assert!(qemu_args(&spec, "tcg", false).is_err());
        assert!(qemu_args(&spec, "tcg", true).is_ok());
    }
}
