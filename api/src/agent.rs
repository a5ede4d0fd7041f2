//! What agents send the appliance: registration, hello, batches' acknowledgements, progress, points, group points, churn reports, and the facts of their machine.

use serde::{Deserialize, Serialize};

/// An agent's first contact: it proves it may join with the passphrase and sends a CSR
/// for the key it generated (the key never leaves the agent).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The one-time registration passphrase the administrator gave the agent.
    pub passphrase: String,
    /// The machine's host name, for people.
    pub hostname: String,
    /// Protocol versions the agent speaks.
    pub protocol_versions: Vec<u16>,
    /// PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
}

/// What a registered agent needs from then on.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The identity the appliance assigned (UUID).
    pub machine_id: String,
    /// The agent's client certificate (PEM), signed by the appliance CA.
    pub cert_pem: String,
    /// The appliance CA (PEM): trust anchor for every later connection.
    pub ca_pem: String,
    /// The protocol version chosen.
    pub protocol_version: u16,
    /// Where to send data (`https://host:9443`).
    pub process_server_url: String,
}

/// One protected disk as the agent describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskDescriptor {
    /// Position of the disk in the machine (0 = boot disk).
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device or image path on the source, for people.
    pub path: String,
}

/// Sent at every (re)connection to the process server.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol versions the agent speaks.
    pub protocol_versions: Vec<u16>,
    /// The machine's disks now.
    pub disks: Vec<DiskDescriptor>,
    /// What the agent found out about the machine (firmware, CPUs, memory, network
    /// interfaces), so a failover can build a VM like it. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
}

/// Most network interfaces in a [`SystemInfo`].
pub const MAX_NICS: usize = 64;

/// The source machine as a failover needs to rebuild it as a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemInfo {
    /// `bios` or `uefi`: how the machine booted (`/sys/firmware/efi` on Linux).
    pub firmware: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Network interfaces, loopback left out.
    pub nics: Vec<NicInfo>,
}

/// A network interface of the source machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicInfo {
    /// Interface name (`eth0`).
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Addresses in CIDR form (`192.0.2.10/24`).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Whether `s` is a firmware name a VM spec knows.
pub fn check_firmware(s: &str) -> Result<(), String> {
    match s {
        "bios" | "uefi" => Ok(()),
        _ => Err(format!("{s:?} is not a firmware: expected \"bios\" or \"uefi\"")),
    }
}

/// Whether `s` is a MAC address `aa:bb:cc:dd:ee:ff` (hex, either case).
pub fn check_mac(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not a MAC address: expected six hex pairs like 52:54:00:12:34:56"))
    }
}

/// Whether `s` is an address with a prefix length (`192.0.2.10/24`, `2001:db8::5/64`).
pub fn check_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an address in CIDR form like 192.0.2.10/24");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok(())
}

/// Whether `s` names a target network: 1 to 80 characters (a vSphere port group name, such
/// as `VM Network`; an Azure `<vnet>/<subnet>`), none of them a control character, with no
/// space at either end.
pub fn check_network(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.chars().count() <= 80 && !s.chars().any(char::is_control) && s.trim() == s
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a network name: 1 to 80 characters, no control characters, no space at either end"
        ))
    }
}

/// Whether `s` can name a host bridge on a qemu command line: 1 to 15 ASCII letters,
/// digits, `.`, `_`, `-` (Linux interface names).
pub fn check_bridge(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 15
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not a bridge name: 1 to 15 letters, digits, '.', '_', '-'"))
    }
}

impl SystemInfo {
    /// Range checks (the hello comes from an agent; a bad one is refused with the field).
    pub fn check(&self) -> Result<(), String> {
        check_firmware(&self.firmware).map_err(|e| format!("system.firmware: {e}"))?;
        if !(1..=4096).contains(&self.cpus) {
            return Err("system.cpus: expected 1 to 4096".into());
        }
        if !(1..=(1 << 26)).contains(&self.memory_mib) {
            return Err("system.memory_mib: expected 1 MiB to 64 TiB".into());
        }
        if self.nics.len() > MAX_NICS {
            return Err(format!("system.nics: more than {MAX_NICS}"));
        }
        for (i, n) in self.nics.iter().enumerate() {
            if n.name.is_empty() || n.name.len() > 64 || n.name.chars().any(char::is_control) {
                return Err(format!(
                    "system.nics[{i}].name: expected 1 to 64 printable characters"
                ));
            }
            check_mac(&n.mac).map_err(|e| format!("system.nics[{i}].mac: {e}"))?;
            if n.addresses.len() > 64 {
                return Err(format!("system.nics[{i}].addresses: more than 64"));
            }
            for (j, a) in n.addresses.iter().enumerate() {
                check_cidr(a).map_err(|e| format!("system.nics[{i}].addresses[{j}]: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Where the appliance stands for one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskCursor {
    /// Disk index.
    pub index: u32,
    /// The sequence number the appliance expects next (everything before it is durable
    /// on the appliance).
    pub next_sequence: u64,
}

/// The answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HelloResponse {
    /// The protocol version chosen.
    pub protocol_version: u16,
    /// One cursor per disk of the hello.
    pub disks: Vec<DiskCursor>,
}

/// The answer to a batch: it is durable on the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchAck {
    /// Disk index.
    pub disk: u32,
    /// The sequence acknowledged.
    pub sequence: u64,
    /// True when the appliance already had it (a re-send after a lost answer).
    pub duplicate: bool,
    /// The appliance asks the agent to wait this long before the next batch (its cache is
    /// above the high-water mark); 0 normally.
    pub slow_down_ms: u64,
}

/// Initial-copy and cycle progress of one disk, for the dashboard.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Disk index.
    pub disk: u32,
    /// What the agent is doing: `initial-copy`, `delta` or `resync`.
    pub phase: String,
    /// Bytes of the disk examined so far in this cycle.
    pub done_bytes: u64,
    /// Size of the disk.
    pub total_bytes: u64,
    /// Bytes found changed and sent so far in this cycle.
    pub sent_bytes: u64,
}

/// A recovery point as the appliance lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointSummary {
    /// Point id at the target.
    pub id: String,
    /// The agent's point number (the consistency tag's point id).
    pub point: u64,
    /// How consistent it is.
    pub kind: crate::PointKind,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Disk indexes it covers.
    pub disks: Vec<u32>,
    /// Consistency groups whose recorded point this is part of (a `group` point); empty
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// `GET …/points`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointList {
    /// Points, oldest first.
    pub points: Vec<PointSummary>,
}

/// Sent by a consistency group's coordinator once every member recorded point `point`
/// (the same number on every member): the appliance lists it as a group point when every
/// member's point `point` is at the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPoint {
    /// The group's name: 1 to 64 ASCII letters, digits, `-`, `_`.
    pub group: String,
    /// The point number every member tagged.
    pub point: u64,
    /// Every member's machine id, the caller's included.
    pub members: Vec<String>,
}

/// Most disks in a [`ChurnReport`].
pub const MAX_CHURN_DISKS: usize = 64;

/// Most samples per disk in a [`ChurnReport`].
pub const MAX_CHURN_SAMPLES: usize = 10_000;

/// A write-churn profile measured by `lifeboat-agent churn --report`, before or during
/// protection, so the appliance can tell whether a link and process server keep up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChurnReport {
    /// Seconds measured.
    pub seconds: f64,
    /// One entry per disk.
    pub disks: Vec<DiskChurn>,
}

/// One disk's churn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskChurn {
    /// Disk index.
    pub index: u32,
    /// Device path, for people.
    pub path: String,
    /// Mean megabytes (10^6) per second written.
    pub mean_mb_per_s: f64,
    /// Highest sample's MB/s.
    pub peak_mb_per_s: f64,
    /// Mean write requests per second.
    pub mean_iops: f64,
    /// Highest sample's IOPS.
    pub peak_iops: f64,
    /// Requests by size: ≤4K, ≤16K, ≤64K, ≤256K, larger.
    pub sizes: [u64; 5],
    /// MB/s of each sample, in order.
    pub samples_mb_per_s: Vec<f64>,
    /// IOPS of each sample, in order.
    pub samples_iops: Vec<f64>,
}

impl ChurnReport {
    /// Checks ranges: finite, non-negative numbers, at most [`MAX_CHURN_DISKS`] disks of at
    /// most [`MAX_CHURN_SAMPLES`] samples, distinct indexes. The error names the field.
    pub fn check(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(self.seconds) || self.seconds == 0.0 {
            return Err("seconds: expected a positive number".into());
        }
        if self.disks.is_empty() || self.disks.len() > MAX_CHURN_DISKS {
            return Err(format!("disks: expected 1 to {MAX_CHURN_DISKS} disks"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if self.disks[..i].iter().any(|o| o.index == d.index) {
                return Err(format!("disks[{i}].index: {} appears twice", d.index));
            }
            for (name, v) in [
                ("mean_mb_per_s", d.mean_mb_per_s),
                ("peak_mb_per_s", d.peak_mb_per_s),
                ("mean_iops", d.mean_iops),
                ("peak_iops", d.peak_iops),
            ] {
                if !ok(v) {
                    return Err(format!("disks[{i}].{name}: expected a finite number >= 0"));
                }
            }
            for (name, s) in
                [("samples_mb_per_s", &d.samples_mb_per_s), ("samples_iops", &d.samples_iops)]
            {
                if s.len() > MAX_CHURN_SAMPLES {
                    return Err(format!("disks[{i}].{name}: at most {MAX_CHURN_SAMPLES} samples"));
                }
                if let Some(j) = s.iter().position(|v| !ok(*v)) {
                    return Err(format!("disks[{i}].{name}[{j}]: expected a finite number >= 0"));
                }
            }
            if d.path.len() > 4096 {
                return Err(format!("disks[{i}].path: longer than 4096 bytes"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{check_bridge, check_network};

    #[test]
    fn network_names_take_port_group_names_and_bridges_stay_interface_names() {
        for ok in ["VM Network", "dr-lan", "vnet1/subnet-a", "DPortGroup (VLAN 20)", "é"] {
            assert!(check_network(ok).is_ok(), "{ok:?}");
        }
        let long = "n".repeat(81);
        for bad in ["", " lead", "trail ", "tab\there", "nl\n", long.as_str()] {
            assert!(check_network(bad).is_err(), "{bad:?}");
        }
        assert!(check_bridge("br-dr").is_ok());
        for bad in ["VM Network", "br,x=1", "a-very-long-bridge-name", ""] {
            assert!(check_bridge(bad).is_err(), "{bad:?}");
        }
    }
}
