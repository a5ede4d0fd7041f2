//! What a failover needs to know about the source machine to rebuild it as a VM: how it
//! boots (BIOS or UEFI), its CPUs and memory, and its network interfaces with their MAC
//! addresses and IP addresses. Sent in every hello (`lifeboat_api::SystemInfo`);
//! the appliance keeps the last one and the administrator maps the interfaces to target
//! networks (`lifeboat vm-spec`).

use std::collections::BTreeMap;
use std::path::Path;

use lifeboat_api::{MAX_NICS, NicInfo, SystemInfo};

/// Detects the machine's firmware, CPUs, memory and interfaces. `firmware` overrides the
/// detection (`bios` or `uefi`), for a machine whose disks boot differently from how the
/// agent's host booted (an image file protected from another host).
pub fn detect(firmware: Option<&str>) -> SystemInfo {
    let firmware =
        firmware.map(str::to_owned).unwrap_or_else(|| detect_firmware(Path::new("/sys")));
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total_mib(&t))
        .unwrap_or(1024);
    SystemInfo { firmware, cpus: cpus.clamp(1, 4096), memory_mib, nics: nics() }
}

/// `uefi` when the kernel was booted by UEFI firmware (it then exposes `firmware/efi`).
fn detect_firmware(sys: &Path) -> String {
    if sys.join("firmware/efi").is_dir() { "uefi" } else { "bios" }.to_owned()
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024).max(1))
}

/// Interfaces with a MAC address (loopback and the like left out), by name.
fn nics() -> Vec<NicInfo> {
    let mut by_name: BTreeMap<String, NicInfo> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut ips: Vec<(String, String)> = Vec::new();
    for a in addrs {
        let name = a.interface_name.clone();
        if let Some(link) = a.address.as_ref().and_then(|s| s.as_link_addr())
            && let Some(mac) = link.addr()
            && mac != [0; 6]
        {
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            by_name.entry(name.clone()).or_insert(NicInfo { name, mac, addresses: Vec::new() });
            continue;
        }
        let (Some(addr), Some(mask)) = (a.address.as_ref(), a.netmask.as_ref()) else {
            continue;
        };
        if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let len = u32::from(m.ip()).count_ones();
            ips.push((name, format!("{}/{len}", ip.ip())));
        } else if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let len = u128::from(m.ip()).count_ones();
            ips.push((name, format!("{}/{len}", ip.ip())));
        }
    }
    for (name, cidr) in ips {
        if let Some(n) = by_name.get_mut(&name)
            && n.addresses.len() < 64
        {
            n.addresses.push(cidr);
        }
    }
    by_name.into_values().take(MAX_NICS).filter(|n| n.name.len() <= 64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_is_uefi_only_with_an_efi_directory() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(detect_firmware(d.path()), "bios");
        std::fs::create_dir_all(d.path().join("firmware/efi")).unwrap();
        assert_eq!(detect_firmware(d.path()), "uefi");
    }

    #[test]
    fn memory_comes_from_memtotal() {
        let m = "MemFree:  100 kB\nMemTotal:       24576000 kB\n";
        assert_eq!(mem_total_mib(m), Some(24000));
        assert_eq!(mem_total_mib("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total_mib(""), None);
    }

    #[test]
    fn the_detected_machine_passes_the_appliances_checks() {
        let s = detect(None);
        s.check().unwrap();
        assert!(s.nics.iter().all(|n| n.name != "lo"), "{s:?}");
        assert_eq!(detect(Some("uefi")).firmware, "uefi");
    }
}
