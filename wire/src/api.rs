//! The JSON bodies of the agent ↔ appliance HTTP API, protocol version 1.
//!
//! | endpoint | server | auth | body → answer |
//! | --- | --- | --- | --- |
//! | `POST /api/v1/register` | configuration server (443) | one-time passphrase | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `POST /api/v1/hello` | process server (9443) | client certificate | [`Hello`] → [`HelloResponse`] |
//! | `PUT /api/v1/batches` | process server | client certificate | an encoded batch → [`BatchAck`] |
//! | `POST /api/v1/progress` | process server | client certificate | [`Progress`] → `{}` |
//! | `GET /api/v1/machines/<id>/points` | process server | client certificate (own machine) | → [`PointList`] |
//! | `POST /api/v1/groups/points` | process server | client certificate (a member) | [`GroupPoint`] → `{}` |
//! | `POST /api/v1/churn` | process server | client certificate | [`ChurnReport`] → `{}` |
//! | `POST /api/v1/agent-alerts` | process server | client certificate | [`AgentAlert`] → `{}` |
//! | `GET /api/v1/trust` | process server | client certificate | → [`TrustAnswer`] |
//! | `POST /api/v1/renew` | process server | client certificate | [`RenewRequest`] → [`RenewAnswer`] |
//! | `GET /api/v1/reverse` | process server | client certificate | → [`ReverseStatus`] |
//! | `POST /api/v1/reverse/diff` | process server | client certificate | [`ReverseDiff`] → a batch (wire format v1) of the blocks that differ |
//! | `POST /api/v1/reverse/done` | process server | client certificate | [`ReverseDone`] → `{}` |
//!
//! The administrator API on the configuration server is described by its OpenAPI document
//! (`GET /api/v1/openapi.json`, `appliance/openapi.json`); its bodies are the types below
//! from [`SetupStatus`] on.
//!
//! Errors are `{"error": "...", "code": "..."}` with an HTTP status. A full cache answers
//! `429` with `Retry-After`; a batch out of sequence answers `409` with code
//! `sequence-gap` and the sequence the appliance expects. New fields are added with
//! `#[serde(default)]` so both sides of a minor upgrade understand each other; anything
//! incompatible is a new protocol version, agreed on in `register` and `hello`.

use serde::{Deserialize, Serialize};

/// An agent's first contact: it proves it may join with the passphrase and sends a CSR
/// for the key it generated (the key never leaves the agent).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Whether `s` names a target network: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
pub fn check_network(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{s:?} is not a network name: 1 to 64 letters, digits, '.', '_', '-'"))
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskCursor {
    /// Disk index.
    pub index: u32,
    /// The sequence number the appliance expects next (everything before it is durable
    /// on the appliance).
    pub next_sequence: u64,
}

/// The answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloResponse {
    /// The protocol version chosen.
    pub protocol_version: u16,
    /// One cursor per disk of the hello.
    pub disks: Vec<DiskCursor>,
}

/// The answer to a batch: it is durable on the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointSummary {
    /// Point id at the target.
    pub id: String,
    /// The agent's point number (the consistency tag's point id).
    pub point: u64,
    /// `crash` or `app`.
    pub kind: String,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointList {
    /// Points, oldest first.
    pub points: Vec<PointSummary>,
}

/// Sent by a consistency group's coordinator once every member recorded point `point`
/// (the same number on every member): the appliance lists it as a group point when every
/// member's point `point` is at the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnReport {
    /// Seconds measured.
    pub seconds: f64,
    /// One entry per disk.
    pub disks: Vec<DiskChurn>,
}

/// One disk's churn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `GET /api/v1/setup`: whether the first-run setup is still to be done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupStatus {
    /// No administrator exists yet.
    pub needed: bool,
}

/// `POST /api/v1/setup` and `POST /api/v1/login`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Account name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Password, at least 12 characters.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A session: answered by setup and login (with its token) and by `GET /api/v1/session`
/// (without).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInfo {
    /// The bearer token for `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The administrator.
    pub name: String,
    /// When the session ends, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

/// A protected machine as the administrator API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSummary {
    /// Machine id.
    pub id: String,
    /// Host name the agent gave at registration.
    pub hostname: String,
    /// When it registered.
    pub registered_unix_ms: u64,
    /// Its disks as (index, size in bytes).
    pub disks: Vec<DiskSize>,
    /// Its newest recovery point, if any.
    pub last_point: Option<PointSummary>,
    /// `initial-copy` (no point yet), `protected`, `resyncing` (an agent compares a disk
    /// whole again), `failing-over`, `failed-over`, `failover-failed`, `committed`,
    /// `reprotecting`, `reprotected` or `failing-back`.
    #[serde(default)]
    pub state: String,
    /// The achieved RPO: seconds since the newest point was made, if there is one.
    #[serde(default)]
    pub rpo_secs: Option<u64>,
    /// The machine's policy.
    #[serde(default)]
    pub policy: String,
    /// When the machine's agent was last heard from.
    #[serde(default)]
    pub last_seen_unix_ms: Option<u64>,
    /// During the initial copy: how much of the disks was copied, 0 to 1.
    #[serde(default)]
    pub initial_copy: Option<f64>,
    /// `normal`, `warning` or `critical`: the worst alert about the machine.
    #[serde(default)]
    pub health: String,
    /// Consistency groups the machine is recorded in.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Batches received but not applied to the replica yet, over its disks.
    #[serde(default)]
    pub backlog_batches: u64,
    /// Mean write churn of its disks in MB/s, from its newest churn report, if any.
    #[serde(default)]
    pub churn_mb_per_s: Option<f64>,
}

/// A loaded or refused plugin (`GET /api/v1/plugins`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// `codec`, `cipher`, `target`, `quiescer`, `action`; empty for a refused one.
    pub kind: String,
    /// Its version.
    pub version: String,
    /// `pinned`, `signed` or `unsigned`; `refused` with the reason in `message`.
    pub trust: String,
    /// Why it was refused.
    pub message: Option<String>,
}

/// `GET /api/v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginList {
    /// Loaded ones by name, then refused ones.
    pub plugins: Vec<PluginInfo>,
}

/// A consistency group's recorded point (`GET /api/v1/groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPointInfo {
    /// The point number every member shares.
    pub point: u64,
    /// Each member's point id, or none while it is not at the target yet.
    pub point_ids: Vec<Option<String>>,
    /// Every member's point is at the target: it can be failed over to.
    pub complete: bool,
    /// When the coordinator recorded it.
    pub created_unix_ms: u64,
}

/// `PUT /api/v1/groups/{name}`: a consistency group as the administrator defines it. The
/// appliance owns membership: agents learn it ([`TrustAnswer::group`]), only the
/// coordinator may record the group's points, and a point counts only once every member
/// reported recording it ([`MemberPoint`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDefinition {
    /// The member that runs the rounds (one of `members`).
    pub coordinator: String,
    /// 2 to 64 registered machines, each in no other group.
    pub members: Vec<String>,
}

/// This machine's group, as the appliance defines it (in [`TrustAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAssignment {
    /// The group's name.
    pub name: String,
    /// Its coordinator.
    pub coordinator: String,
    /// Every member, sorted.
    pub members: Vec<String>,
}

/// `POST /api/v1/groups/member-points` (process server, agent certificate): this member
/// recorded the group's point `point`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberPoint {
    /// The group's name.
    pub group: String,
    /// The point number.
    pub point: u64,
}

/// A consistency group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Its coordinator, when the group is defined (groups whose definition was deleted
    /// keep their recorded points listed, without one).
    #[serde(default)]
    pub coordinator: Option<String>,
    /// Member machine ids (the definition's; else as in its newest recorded point).
    pub members: Vec<String>,
    /// Its points, oldest first.
    pub points: Vec<GroupPointInfo>,
}

/// `GET /api/v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupList {
    /// By name.
    pub groups: Vec<GroupInfo>,
}

/// A disk's index and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSize {
    /// Disk index.
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
}

/// `GET /api/v1/machines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineList {
    /// Machines, by id.
    pub machines: Vec<MachineSummary>,
}

/// `POST /api/v1/machines/{id}/test-failover` and `POST /api/v1/machines/{id}/failover`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFailoverRequest {
    /// Which point: `latest` (the default: first process everything already received,
    /// then the newest point), `latest-processed` (the newest point at the target now),
    /// `latest-app` (the newest app-consistent point), `latest-group` (the newest point
    /// of a complete consistency-group point) or a point id from the points list.
    #[serde(default)]
    pub point: Option<String>,
}

/// The VM a failover of a machine makes (`GET`/`PUT /api/v1/machines/{id}/vm-spec`):
/// what the agent detected, with the administrator's settings over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpecInfo {
    /// `bios` or `uefi`.
    pub firmware: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk indexes in the VM's order, boot disk first.
    pub disks: Vec<u32>,
    /// Network interfaces with their target networks.
    pub nics: Vec<NicMapping>,
    /// What the agent reported, if it did.
    pub detected: Option<SystemInfo>,
}

/// A source interface mapped to a target network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicMapping {
    /// The source interface's name (as detected), or a name for a new interface.
    pub source: String,
    /// The target network it attaches to.
    pub network: String,
    /// MAC address at the target; absent: the source's (or one the target picks).
    #[serde(default)]
    pub mac: Option<String>,
    /// Re-addressing: the static address (CIDR) the guest gets at the target.
    #[serde(default)]
    pub ip: Option<String>,
}

/// `PUT /api/v1/machines/{id}/vm-spec`: settings over what the agent detected. Every
/// field is optional; a field left out keeps the detected value (or the default).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpecSettings {
    /// `bios` or `uefi`.
    #[serde(default)]
    pub firmware: Option<String>,
    /// 1 to 256.
    #[serde(default)]
    pub cpus: Option<u32>,
    /// 128 MiB to 4 TiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The disk index the VM boots from.
    #[serde(default)]
    pub boot_disk: Option<u32>,
    /// The whole network mapping (replaces the default: every detected interface on
    /// network `default` with its own MAC).
    #[serde(default)]
    pub nics: Option<Vec<NicMapping>>,
}

impl VmSpecSettings {
    /// Range and format checks, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if let Some(f) = &self.firmware {
            check_firmware(f).map_err(|e| format!("firmware: {e}"))?;
        }
        if self.cpus.is_some_and(|c| !(1..=256).contains(&c)) {
            return Err("cpus: expected 1 to 256".into());
        }
        if self.memory_mib.is_some_and(|m| !(128..=(4 << 20)).contains(&m)) {
            return Err("memory_mib: expected 128 to 4194304 (4 TiB)".into());
        }
        if let Some(nics) = &self.nics {
            if nics.len() > MAX_NICS {
                return Err(format!("nics: more than {MAX_NICS}"));
            }
            for (i, n) in nics.iter().enumerate() {
                if n.source.is_empty()
                    || n.source.len() > 64
                    || n.source.chars().any(char::is_control)
                {
                    return Err(format!("nics[{i}].source: expected 1 to 64 printable characters"));
                }
                check_network(&n.network).map_err(|e| format!("nics[{i}].network: {e}"))?;
                if let Some(m) = &n.mac {
                    check_mac(m).map_err(|e| format!("nics[{i}].mac: {e}"))?;
                }
                if let Some(a) = &n.ip {
                    check_cidr(a).map_err(|e| format!("nics[{i}].ip: {e}"))?;
                }
                if nics[..i].iter().any(|o| o.source == n.source) {
                    return Err(format!("nics[{i}].source: {:?} is mapped twice", n.source));
                }
            }
        }
        Ok(())
    }
}

/// A replication policy (`PUT /api/v1/policies/{name}`); machines use `default` until
/// given another (`PUT /api/v1/machines/{id}/policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// An alert (warning) once a machine's newest point is older than this. Default 900.
    #[serde(default = "default_rpo_warning")]
    pub rpo_warning_secs: u64,
    /// A critical alert past this. Default 1800.
    #[serde(default = "default_rpo_critical")]
    pub rpo_critical_secs: u64,
    /// An alert once the machine's agent has not been heard from for this long. Default 900.
    #[serde(default = "default_silent")]
    pub silent_secs: u64,
    /// Tiered thinning of recovery points, youngest tier first: of the points younger than
    /// a tier's `for_secs` (and older than the tier before), one per `every_secs` slot is
    /// kept (0: every point) — a consistency-group point first, then an app-consistent one,
    /// then the oldest. Older than the last tier: deleted. The newest point is always kept.
    /// Absent: the appliance's `keep_points`/`keep_hours`.
    #[serde(default)]
    pub retention: Option<Vec<RetentionTier>>,
    /// Seconds between crash-consistent points (the agent's cycle interval), 1 to 86400.
    /// Absent: the agent's own `interval_secs`. Agents take it at their next check.
    #[serde(default)]
    pub crash_interval_secs: Option<u64>,
    /// The codec level the process server compresses the machine's data with (zstd: -7
    /// to 22). Absent: the process server's `codec_level`.
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Seconds between app-consistent points (0: every cut). Absent: the agent's own
    /// `quiesce.interval_secs`. Only for agents with quiescers.
    #[serde(default)]
    pub app_interval_secs: Option<u64>,
    /// The network bandwidth schedule the machine's agent sends under (the shape of the
    /// agent's `[bandwidth]`). Absent: the agent's own.
    #[serde(default)]
    pub bandwidth: Option<PolicyBandwidth>,
    /// Whether the machine's data is sealed by the cipher on its way to and at the target.
    /// Absent: yes. `false` is refused for a target that requires it.
    #[serde(default)]
    pub encryption: Option<bool>,
}

/// A bandwidth schedule in a policy: megabits per second outside the windows (absent:
/// unlimited), and windows of local time with their own limit (0 pauses sending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBandwidth {
    /// Megabits per second outside every window.
    #[serde(default)]
    pub mbps: Option<f64>,
    /// Windows; the first that matches wins.
    #[serde(default)]
    pub schedule: Vec<PolicyWindow>,
}

/// A window of a [`PolicyBandwidth`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyWindow {
    /// Days it starts on (`mon` … `sun`); absent: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Local start, `HH:MM`.
    pub from: String,
    /// Local end, `HH:MM` (before `from`: past midnight).
    pub to: String,
    /// Megabits per second; 0 pauses sending.
    pub mbps: f64,
}

impl PolicyBandwidth {
    /// Shape checks, naming the field (the agent checks again when it applies it).
    pub fn check(&self) -> Result<(), String> {
        let rate =
            |v: f64, zero_ok: bool| v.is_finite() && v <= 1e6 && (v > 0.0 || (zero_ok && v == 0.0));
        if self.mbps.is_some_and(|m| !rate(m, false)) {
            return Err("bandwidth.mbps: expected more than 0 and at most 1000000".into());
        }
        if self.schedule.len() > 32 {
            return Err("bandwidth.schedule: more than 32 windows".into());
        }
        let hhmm = |t: &str| {
            t.split_once(':').is_some_and(|(h, m)| {
                h.len() == 2
                    && m.len() == 2
                    && h.parse::<u8>().is_ok_and(|h| h < 24)
                    && m.parse::<u8>().is_ok_and(|m| m < 60)
            })
        };
        for (i, w) in self.schedule.iter().enumerate() {
            for (field, t) in [("from", &w.from), ("to", &w.to)] {
                if !hhmm(t) {
                    return Err(format!("bandwidth.schedule[{i}].{field}: {t:?} is not HH:MM"));
                }
            }
            if !rate(w.mbps, true) {
                return Err(format!("bandwidth.schedule[{i}].mbps: expected 0 to 1000000"));
            }
            if let Some(days) = &w.days {
                const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
                if days.is_empty() || days.iter().any(|d| !DAYS.contains(&d.as_str())) {
                    return Err(format!(
                        "bandwidth.schedule[{i}].days: expected days among mon … sun"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_rpo_warning() -> u64 {
    900
}
fn default_rpo_critical() -> u64 {
    1800
}
fn default_silent() -> u64 {
    900
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rpo_warning_secs: default_rpo_warning(),
            rpo_critical_secs: default_rpo_critical(),
            silent_secs: default_silent(),
            retention: None,
            crash_interval_secs: None,
            compression_level: None,
            app_interval_secs: None,
            bandwidth: None,
            encryption: None,
        }
    }
}

/// One tier of a retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionTier {
    /// Keep one point per this many seconds (0: every point).
    pub every_secs: u64,
    /// Up to this age, in seconds.
    pub for_secs: u64,
}

/// Ten years, the longest a retention tier or a threshold may be.
pub const MAX_POLICY_SECS: u64 = 10 * 366 * 86_400;

impl Policy {
    /// Range and order checks, naming the field.
    pub fn check(&self) -> Result<(), String> {
        let secs = |name: &str, v: u64| {
            if (1..=MAX_POLICY_SECS).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}: expected 1 to {MAX_POLICY_SECS} seconds"))
            }
        };
        secs("rpo_warning_secs", self.rpo_warning_secs)?;
        secs("rpo_critical_secs", self.rpo_critical_secs)?;
        secs("silent_secs", self.silent_secs)?;
        if self.rpo_critical_secs < self.rpo_warning_secs {
            return Err("rpo_critical_secs: must not be below rpo_warning_secs".into());
        }
        if self.crash_interval_secs.is_some_and(|i| !(1..=86_400).contains(&i)) {
            return Err("crash_interval_secs: expected 1 to 86400".into());
        }
        if self.compression_level.is_some_and(|l| !(-7..=22).contains(&l)) {
            return Err("compression_level: expected -7 to 22 (zstd levels)".into());
        }
        if self.app_interval_secs.is_some_and(|i| i > 7 * 86_400) {
            return Err("app_interval_secs: expected 0 to 604800".into());
        }
        if let Some(b) = &self.bandwidth {
            b.check()?;
        }
        if let Some(tiers) = &self.retention {
            if tiers.is_empty() || tiers.len() > 8 {
                return Err("retention: expected 1 to 8 tiers".into());
            }
            for (i, t) in tiers.iter().enumerate() {
                secs(&format!("retention[{i}].for_secs"), t.for_secs)?;
                if t.every_secs >= t.for_secs {
                    return Err(format!("retention[{i}].every_secs: must be below for_secs"));
                }
                if let Some(prev) = i.checked_sub(1).map(|j| tiers[j]) {
                    if t.for_secs <= prev.for_secs {
                        return Err(format!(
                            "retention[{i}].for_secs: tiers go from young to old (above {})",
                            prev.for_secs
                        ));
                    }
                    if t.every_secs < prev.every_secs {
                        return Err(format!(
                            "retention[{i}].every_secs: older tiers keep fewer points (at least {})",
                            prev.every_secs
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A named policy (`GET /api/v1/policies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPolicy {
    /// Its name.
    pub name: String,
    /// The policy.
    pub policy: Policy,
    /// Machines using it.
    pub machines: Vec<String>,
}

/// `GET /api/v1/policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyList {
    /// By name; `default` always exists.
    pub policies: Vec<NamedPolicy>,
}

/// `PUT /api/v1/machines/{id}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyAssignment {
    /// The policy's name.
    pub policy: String,
}

/// An alert (`GET /api/v1/alerts`): a condition that holds now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// `rpo`, `agent-silent`, `cache`, `cpu`, `memory`, `plugin`.
    pub kind: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The machine it is about, if any.
    pub machine_id: Option<String>,
    /// What is wrong, for people.
    pub message: String,
    /// The measured value (seconds, percent, …).
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
}

/// `GET /api/v1/alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertList {
    /// Critical first.
    pub alerts: Vec<Alert>,
}

/// A recovery plan (`PUT /api/v1/plans/{name}`): groups of machines failed over in order,
/// the machines of a group in parallel, with pre and post actions per group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// 1 to 32 groups, in order.
    pub groups: Vec<PlanGroup>,
}

/// A group of a recovery plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanGroup {
    /// Machine ids (at most 64), failed over in parallel; each in one group of the plan.
    #[serde(default)]
    pub machines: Vec<String>,
    /// Run in order before the group's machines fail over.
    #[serde(default)]
    pub pre: Vec<PlanAction>,
    /// Run in order after all of them did.
    #[serde(default)]
    pub post: Vec<PlanAction>,
}

/// One pre or post action: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanAction {
    /// An allow-listed script of the appliance (`[plans.scripts]` in `appliance.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// An action plugin (`kind = "action"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// A manual step: the plan waits, showing this, until someone confirms it
    /// (`POST /api/v1/jobs/{id}/continue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
}

impl Plan {
    /// Shape checks, naming the field (machines, scripts and plugins are checked against
    /// the appliance by the caller).
    pub fn check(&self) -> Result<(), String> {
        if self.groups.is_empty() || self.groups.len() > 32 {
            return Err("groups: expected 1 to 32".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if g.machines.len() > 64 {
                return Err(format!("groups[{i}].machines: more than 64"));
            }
            for (j, m) in g.machines.iter().enumerate() {
                if !seen.insert(m.as_str()) {
                    return Err(format!("groups[{i}].machines[{j}]: {m:?} is in the plan twice"));
                }
            }
            for (stage, actions) in [("pre", &g.pre), ("post", &g.post)] {
                if actions.len() > 16 {
                    return Err(format!("groups[{i}].{stage}: more than 16 actions"));
                }
                for (j, a) in actions.iter().enumerate() {
                    let at = format!("groups[{i}].{stage}[{j}]");
                    let set =
                        [&a.script, &a.plugin, &a.manual].iter().filter(|x| x.is_some()).count();
                    if set != 1 {
                        return Err(format!(
                            "{at}: expected exactly one of script, plugin, manual"
                        ));
                    }
                    if let Some(m) = &a.manual
                        && (m.trim().is_empty() || m.len() > 1000)
                    {
                        return Err(format!("{at}.manual: expected 1 to 1000 characters"));
                    }
                    for name in [&a.script, &a.plugin].into_iter().flatten() {
                        if name.is_empty()
                            || name.len() > 64
                            || !name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                        {
                            return Err(format!(
                                "{at}: {name:?} is not a name (letters, digits, '.', '_', '-')"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A named plan (`GET /api/v1/plans`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPlan {
    /// Its name.
    pub name: String,
    /// The plan.
    pub plan: Plan,
}

/// `GET /api/v1/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanList {
    /// By name.
    pub plans: Vec<NamedPlan>,
}

/// `POST /api/v1/jobs/{id}/continue` (the body may also be empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContinueStep {
    /// The manual step being confirmed, as the job's message numbers it; if given, it must
    /// be the one the job waits on.
    #[serde(default)]
    pub step: Option<u32>,
}

/// `POST /api/v1/plans/{name}/run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRun {
    /// `test-failover` or `failover`.
    pub mode: String,
    /// The point choice for every machine (as in a test failover); default `latest`.
    #[serde(default)]
    pub point: Option<String>,
}

/// `POST /api/v1/agent-alerts` (process server, agent certificate): something went wrong on
/// the machine that the appliance should alert on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAlert {
    /// `quiesce-failed`: an app-consistent point failed and a crash-consistent one was cut.
    pub kind: String,
    /// What happened, for people (at most 2000 bytes).
    pub message: String,
}

impl AgentAlert {
    /// Shape checks.
    pub fn check(&self) -> Result<(), String> {
        if self.kind != "quiesce-failed" {
            return Err(format!("kind: {:?} is not quiesce-failed", self.kind));
        }
        if self.message.len() > 2000 {
            return Err("message: longer than 2000 bytes".into());
        }
        Ok(())
    }
}

/// `GET /api/v1/trust` (process server, agent certificate): the CAs to trust, and whether
/// the certificate the agent presented should be renewed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustAnswer {
    /// Every CA certificate to trust (PEM), the active one first.
    pub ca_pem: String,
    /// The active CA's fingerprint.
    pub active_ca: String,
    /// Why the presented certificate should be renewed, if it should.
    pub renew: Option<String>,
    /// The machine's policy's crash-consistent interval, if it sets one (overrides the
    /// agent's `interval_secs`).
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// The policy's app-consistent interval, if it sets one.
    #[serde(default)]
    pub app_interval_secs: Option<u64>,
    /// The policy's bandwidth schedule, if it sets one.
    #[serde(default)]
    pub bandwidth: Option<PolicyBandwidth>,
    /// Disks the appliance asks the agent to compare with their replicas by block hashes
    /// ([`CompareBlocks`]): the master target found logs of theirs missing at the target.
    /// Absent when there are none (answers without it are what earlier appliances sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<CompareRequest>,
    /// The consistency group this machine is in, as the administrator defined it (absent:
    /// none). An agent takes part in rounds only of this group, with these members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupAssignment>,
}

/// A comparison of one disk with its replica, asked for by the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareRequest {
    /// Disk index.
    pub disk: u32,
    /// Names this request; echoed in [`CompareBlocks`] and [`CompareDone`].
    pub token: u64,
}

/// `POST /api/v1/compare` (process server, agent certificate): hashes of a range of one
/// of the agent's disks, as [`ReverseDiff`] carries them ([`reverse_block_hash`] of
/// [`REVERSE_BLOCK`] blocks, at most [`REVERSE_MAX_BLOCKS`]); the answer
/// ([`CompareAnswer`]) names the blocks whose replica differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareBlocks {
    /// Disk index.
    pub disk: u32,
    /// The request's token.
    pub token: u64,
    /// A multiple of [`REVERSE_BLOCK`], inside the disk.
    pub offset: u64,
    /// One hash per block from `offset` (the last block of the disk may be shorter).
    pub hashes: Vec<String>,
}

impl CompareBlocks {
    /// Shape checks against a disk of `disk_size` bytes.
    pub fn check(&self, disk_size: u64) -> Result<(), String> {
        ReverseDiff { disk: self.disk, offset: self.offset, hashes: self.hashes.clone() }
            .check(disk_size)
    }
}

/// The answer to [`CompareBlocks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareAnswer {
    /// Indexes (into `hashes`) of the blocks whose replica differs, ascending.
    pub differ: Vec<u32>,
}

/// `POST /api/v1/compare/done`: the whole disk was compared, and the blocks that differed
/// are in the cycle that tagged `point`; the replica is whole again from that point on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareDone {
    /// Disk index.
    pub disk: u32,
    /// The request's token.
    pub token: u64,
    /// The point of the cycle that sent the differing blocks.
    pub point: u64,
}

/// `POST /api/v1/renew` (process server, agent certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A CSR for the agent's new key.
    pub csr_pem: String,
}

/// The answer to [`RenewRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewAnswer {
    /// The new client certificate, from the active CA.
    pub cert_pem: String,
    /// Every CA certificate to trust.
    pub ca_pem: String,
}

/// `POST /api/v1/ca/rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaRotate {
    /// Retire the old CA even though some machines have not renewed (they are refused).
    #[serde(default)]
    pub force: bool,
}

/// `GET /api/v1/ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaStatus {
    /// `steady`, `introducing` or `retiring`.
    pub phase: String,
    /// The active CA's fingerprint.
    pub active: String,
    /// The CA being introduced.
    pub next: Option<String>,
    /// CAs still trusted, no longer signing.
    pub retiring: Vec<String>,
    /// Each machine's certificate.
    pub machines: Vec<MachineCert>,
}

/// A machine's certificate in [`CaStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineCert {
    /// Machine id.
    pub id: String,
    /// Fingerprint of the CA that signed its current certificate, if known.
    pub ca: Option<String>,
    /// Its certificate is from the active CA.
    pub on_active_ca: bool,
    /// When it expires.
    pub not_after_unix_ms: Option<u64>,
    /// The machine is revoked.
    pub revoked: bool,
}

/// `PUT /api/v1/recovery-passphrase`: the passphrase the catalogue at the target is sealed
/// under (at least 16 characters). Keep it apart from the appliance: with it, a fresh
/// appliance at the target site fails machines over when this one is lost.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPassphrase {
    /// The passphrase.
    pub passphrase: String,
}

impl std::fmt::Debug for RecoveryPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryPassphrase").finish_non_exhaustive()
    }
}

/// `GET /api/v1/recovery-passphrase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryStatus {
    /// A recovery passphrase is set.
    pub set: bool,
    /// When the catalogue was last written at the target.
    pub catalogue_written_unix_ms: Option<u64>,
}

/// A failover of a machine (`GET /api/v1/failovers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverInfo {
    /// The machine.
    pub machine_id: String,
    /// `failing-over`, `failed-over` (the point may still be changed), `failover-failed`,
    /// `committing`, `committed`, `reprotecting`, `reprotected` (the original disks are
    /// written from the failed-over ones) or `failing-back`. Failback ends the failover.
    pub state: String,
    /// The point the VM was made from.
    pub point_id: Option<String>,
    /// The VM at the target.
    pub vm: Option<String>,
    /// Its disks at the target, boot disk first.
    pub disks: Vec<String>,
    /// The job that made it.
    pub job: u64,
    /// When it was asked for.
    pub started_unix_ms: u64,
    /// When it was committed.
    pub committed_unix_ms: Option<u64>,
}

/// `GET /api/v1/failovers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverList {
    /// By machine id.
    pub failovers: Vec<FailoverInfo>,
}

/// An asynchronous job (`GET /api/v1/jobs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInfo {
    /// Job number.
    pub id: u64,
    /// What it does: `test-failover`, `test-failover-cleanup`.
    pub kind: String,
    /// The machine it is about.
    pub machine_id: Option<String>,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// 0 to 1.
    pub progress: f64,
    /// What it is doing, or why it failed.
    pub message: String,
    /// When it started, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// When it ended.
    pub finished_unix_ms: Option<u64>,
    /// What it made, once it succeeded.
    pub result: Option<serde_json::Value>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobInfo>,
}

/// A test failover (`GET /api/v1/test-failovers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFailoverInfo {
    /// Its id.
    pub id: String,
    /// The machine.
    pub machine_id: String,
    /// The point it was made from.
    pub point_id: String,
    /// The isolated VM at the target.
    pub vm: String,
    /// Its disks at the target.
    pub disks: Vec<String>,
    /// When it was made.
    pub created_unix_ms: u64,
    /// When it was cleaned up; absent while it exists.
    pub cleaned_unix_ms: Option<u64>,
}

/// `GET /api/v1/test-failovers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFailoverList {
    /// Oldest first.
    pub test_failovers: Vec<TestFailoverInfo>,
}

/// Block size of reverse replication (reprotect): the unit whose hashes are compared.
pub const REVERSE_BLOCK: u32 = 64 << 10;
/// Most block hashes in one [`ReverseDiff`] (16 MiB of disk).
pub const REVERSE_MAX_BLOCKS: usize = 256;

/// The hash reverse replication compares a block by: xxh3-128 of its bytes, 32 hex digits.
/// (Accidental collisions are out of reach at 128 bits; the blocks come from the
/// machine's own disks and the appliance's own target, not from an adversary.)
pub fn reverse_block_hash(data: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

/// `GET /api/v1/reverse`: whether the machine's disks are to be written from the target
/// (after a failover, from reprotect until failback) and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseStatus {
    /// `reverse` (pull the failed-over disks' differing blocks into this machine's disks)
    /// or `forward` (nothing to pull: replicate as usual).
    pub mode: String,
    /// Passes completed so far.
    pub passes: u64,
    /// The pass to start now is failback's last one: the failed-over VM is stopped, and
    /// once this pass is done replication goes forward again.
    pub final_pass: bool,
    /// [`REVERSE_BLOCK`].
    pub block_size: u32,
    /// The machine's disks as the appliance knows them.
    pub disks: Vec<DiskSize>,
}

/// `POST /api/v1/reverse/diff`: the hashes of consecutive blocks of one of the machine's
/// disks from `offset`; the answer is a batch with the target's content of every block
/// whose hash differs (zero extents where it reads as zeros).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseDiff {
    /// Disk index.
    pub disk: u32,
    /// A multiple of [`REVERSE_BLOCK`], inside the disk.
    pub offset: u64,
    /// [`reverse_block_hash`] of each block (the last block of the disk may be shorter),
    /// 1 to [`REVERSE_MAX_BLOCKS`] of them, not past the end of the disk.
    pub hashes: Vec<String>,
}

impl ReverseDiff {
    /// Shape checks against a disk of `disk_size` bytes.
    pub fn check(&self, disk_size: u64) -> Result<(), String> {
        let b = u64::from(REVERSE_BLOCK);
        if !self.offset.is_multiple_of(b) || self.offset >= disk_size {
            return Err(format!(
                "offset: {} is not a multiple of {b} inside the disk ({disk_size} bytes)",
                self.offset
            ));
        }
        if self.hashes.is_empty() || self.hashes.len() > REVERSE_MAX_BLOCKS {
            return Err(format!("hashes: expected 1 to {REVERSE_MAX_BLOCKS}"));
        }
        if self.offset + (self.hashes.len() as u64 - 1) * b >= disk_size {
            return Err("hashes: more blocks than the disk has from offset".into());
        }
        for (i, h) in self.hashes.iter().enumerate() {
            if h.len() != 32 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("hashes[{i}]: expected 32 hex digits"));
            }
        }
        Ok(())
    }
}

/// `POST /api/v1/reverse/done`: a reverse pass over every disk is complete and durable
/// (the disks were flushed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseDone {
    /// The pass was started as the final one ([`ReverseStatus::final_pass`]).
    pub final_pass: bool,
    /// Bytes of blocks the pass received and wrote.
    pub received_bytes: u64,
    /// Where the agent's numbering of each disk's batches stands: forward replication
    /// resumes from there after failback.
    pub next_sequences: Vec<DiskCursor>,
}

/// An error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What went wrong and what to do, for people.
    pub error: String,
    /// Stable machine-readable code (`sequence-gap`, `cache-full`, `forbidden`, …).
    pub code: String,
    /// For `sequence-gap`: the sequence the appliance expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sequence: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system() -> SystemInfo {
        SystemInfo {
            firmware: "bios".into(),
            cpus: 4,
            memory_mib: 8192,
            nics: vec![NicInfo {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                addresses: vec!["192.0.2.10/24".into(), "2001:db8::5/64".into()],
            }],
        }
    }

    #[test]
    fn agent_alerts_are_checked() {
        let a = AgentAlert { kind: "quiesce-failed".into(), message: "timed out".into() };
        a.check().unwrap();
        assert!(AgentAlert { kind: "other".into(), ..a.clone() }.check().is_err());
        assert!(AgentAlert { message: "x".repeat(2001), ..a.clone() }.check().is_err());
        assert!(serde_json::from_str::<AgentAlert>(r#"{"kind":"quiesce-failed"}"#).is_err());
    }

    #[test]
    fn plans_are_shape_checked() {
        let act = |s: Option<&str>, p: Option<&str>, m: Option<&str>| PlanAction {
            script: s.map(Into::into),
            plugin: p.map(Into::into),
            manual: m.map(Into::into),
        };
        let group = |machines: &[&str], pre: Vec<PlanAction>| PlanGroup {
            machines: machines.iter().map(|m| m.to_string()).collect(),
            pre,
            post: vec![],
        };
        let good = Plan {
            groups: vec![
                group(&["a"], vec![act(Some("notify"), None, None)]),
                group(&["b", "c"], vec![act(None, None, Some("check the database"))]),
            ],
        };
        good.check().unwrap();
        let bad: Vec<(Plan, &str)> = vec![
            (Plan { groups: vec![] }, "groups"),
            (
                Plan { groups: vec![group(&["a"], vec![]), group(&["a"], vec![])] },
                "groups[1].machines[0]",
            ),
            (Plan { groups: vec![group(&[], vec![act(None, None, None)])] }, "groups[0].pre[0]"),
            (
                Plan { groups: vec![group(&[], vec![act(Some("x"), Some("y"), None)])] },
                "groups[0].pre[0]",
            ),
            (
                Plan { groups: vec![group(&[], vec![act(None, None, Some(" "))])] },
                "groups[0].pre[0].manual",
            ),
            (
                Plan { groups: vec![group(&[], vec![act(Some("../x"), None, None)])] },
                "groups[0].pre[0]",
            ),
        ];
        for (p, field) in bad {
            let e = p.check().expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn policies_are_checked() {
        Policy::default().check().unwrap();
        let tiers = |t: &[(u64, u64)]| {
            Some(
                t.iter()
                    .map(|&(every_secs, for_secs)| RetentionTier { every_secs, for_secs })
                    .collect(),
            )
        };
        let good = Policy {
            retention: tiers(&[(0, 14_400), (3600, 86_400), (86_400, 604_800)]),
            ..Policy::default()
        };
        good.check().unwrap();
        let bad: Vec<(Policy, &str)> = vec![
            (Policy { rpo_warning_secs: 0, ..Policy::default() }, "rpo_warning_secs"),
            (Policy { rpo_critical_secs: 60, ..Policy::default() }, "rpo_critical_secs"),
            (Policy { silent_secs: u64::MAX, ..Policy::default() }, "silent_secs"),
            (Policy { crash_interval_secs: Some(0), ..Policy::default() }, "crash_interval_secs"),
            (Policy { compression_level: Some(23), ..Policy::default() }, "compression_level"),
            (
                Policy { app_interval_secs: Some(u64::MAX), ..Policy::default() },
                "app_interval_secs",
            ),
            (
                Policy {
                    bandwidth: Some(PolicyBandwidth { mbps: Some(f64::NAN), schedule: vec![] }),
                    ..Policy::default()
                },
                "bandwidth.mbps",
            ),
            (
                Policy {
                    bandwidth: Some(PolicyBandwidth {
                        mbps: None,
                        schedule: vec![PolicyWindow {
                            days: None,
                            from: "25:00".into(),
                            to: "06:00".into(),
                            mbps: 1.0,
                        }],
                    }),
                    ..Policy::default()
                },
                "bandwidth.schedule[0].from",
            ),
            (
                Policy {
                    bandwidth: Some(PolicyBandwidth {
                        mbps: None,
                        schedule: vec![PolicyWindow {
                            days: Some(vec!["moon".into()]),
                            from: "22:00".into(),
                            to: "06:00".into(),
                            mbps: 0.0,
                        }],
                    }),
                    ..Policy::default()
                },
                "bandwidth.schedule[0].days",
            ),
            (Policy { retention: tiers(&[]), ..Policy::default() }, "retention"),
            (Policy { retention: tiers(&[(0, 100); 9]), ..Policy::default() }, "retention"),
            (
                Policy { retention: tiers(&[(100, 100)]), ..Policy::default() },
                "retention[0].every_secs",
            ),
            (Policy { retention: tiers(&[(0, 0)]), ..Policy::default() }, "retention[0].for_secs"),
            (
                Policy { retention: tiers(&[(0, 100), (10, 50)]), ..Policy::default() },
                "retention[1].for_secs",
            ),
            (
                Policy { retention: tiers(&[(60, 100), (10, 500)]), ..Policy::default() },
                "retention[1].every_secs",
            ),
        ];
        for (p, field) in bad {
            let e = p.check().expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
        let p: Policy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, Policy::default());
        assert!(serde_json::from_str::<Policy>(r#"{"rpo":5}"#).is_err());
    }

    #[test]
    fn reverse_diffs_are_shape_checked() {
        let b = u64::from(REVERSE_BLOCK);
        let size = 10 * b + 512;
        let h = reverse_block_hash(&[0u8; 512]);
        assert_eq!(h.len(), 32);
        assert_ne!(h, reverse_block_hash(&[1u8; 512]));
        let ok = |offset, n| ReverseDiff { disk: 0, offset, hashes: vec![h.clone(); n] };
        ok(0, 11).check(size).unwrap();
        ok(10 * b, 1).check(size).unwrap();
        for (d, field) in [
            (ok(0, 0), "hashes"),
            (ok(0, REVERSE_MAX_BLOCKS + 1), "hashes"),
            (ok(0, 12), "hashes"),
            (ok(512, 1), "offset"),
            (ok(11 * b, 1), "offset"),
            (ReverseDiff { disk: 0, offset: 0, hashes: vec!["xyz".into()] }, "hashes[0]"),
            (ReverseDiff { disk: 0, offset: 0, hashes: vec!["g".repeat(32)] }, "hashes[0]"),
        ] {
            let e = d.check(size).expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn system_info_is_range_checked() {
        system().check().unwrap();
        type Spoil = fn(&mut SystemInfo);
        let bad: Vec<(Spoil, &str)> = vec![
            (|s| s.firmware = "efi".into(), "system.firmware"),
            (|s| s.cpus = 0, "system.cpus"),
            (|s| s.memory_mib = 0, "system.memory_mib"),
            (|s| s.memory_mib = u64::MAX, "system.memory_mib"),
            (|s| s.nics[0].name = String::new(), "system.nics[0].name"),
            (|s| s.nics[0].name = "a\nb".into(), "system.nics[0].name"),
            (|s| s.nics[0].mac = "52:54:00:12:34".into(), "system.nics[0].mac"),
            (|s| s.nics[0].mac = "52:54:00:12:34:zz".into(), "system.nics[0].mac"),
            (|s| s.nics[0].addresses[0] = "192.0.2.10".into(), "system.nics[0].addresses[0]"),
            (|s| s.nics[0].addresses[1] = "2001:db8::5/129".into(), "system.nics[0].addresses[1]"),
            (|s| s.nics = vec![s.nics[0].clone(); MAX_NICS + 1], "system.nics"),
        ];
        for (f, field) in bad {
            let mut s = system();
            f(&mut s);
            let e = s.check().expect_err(field);
            assert!(e.starts_with(field), "{field}: {e}");
        }
        // A hello from an older agent (no system) still parses; unknown fields do not.
        let h: Hello = serde_json::from_str(r#"{"protocol_versions":[1],"disks":[]}"#).unwrap();
        assert!(h.system.is_none());
        assert!(
            serde_json::from_str::<Hello>(
                r#"{"protocol_versions":[1],"disks":[],"system":{"firmware":"bios","cpus":1,"memory_mib":1,"nics":[],"gpu":1}}"#
            )
            .is_err()
        );
    }

    fn report() -> ChurnReport {
        ChurnReport {
            seconds: 10.0,
            disks: vec![DiskChurn {
                index: 0,
                path: "/dev/sda".into(),
                mean_mb_per_s: 2.0,
                peak_mb_per_s: 5.0,
                mean_iops: 100.0,
                peak_iops: 300.0,
                sizes: [10, 0, 0, 0, 1],
                samples_mb_per_s: vec![1.0, 5.0],
                samples_iops: vec![50.0, 300.0],
            }],
        }
    }

    #[test]
    fn churn_reports_are_range_checked() {
        assert!(report().check().is_ok());
        let bad = |f: fn(&mut ChurnReport), field: &str| {
            let mut r = report();
            f(&mut r);
            let e = r.check().unwrap_err();
            assert!(e.contains(field), "{e}");
        };
        bad(|r| r.seconds = 0.0, "seconds");
        bad(|r| r.seconds = f64::NAN, "seconds");
        bad(|r| r.disks.clear(), "disks");
        bad(|r| r.disks[0].peak_mb_per_s = -1.0, "disks[0].peak_mb_per_s");
        bad(|r| r.disks[0].mean_iops = f64::INFINITY, "disks[0].mean_iops");
        bad(|r| r.disks[0].samples_iops[1] = -3.0, "disks[0].samples_iops[1]");
        bad(|r| r.disks[0].samples_mb_per_s = vec![0.0; MAX_CHURN_SAMPLES + 1], "samples_mb_per_s");
        bad(|r| r.disks.push(r.disks[0].clone()), "appears twice");
        // Unknown fields and wrong types are refused by the parser.
        let mut v = serde_json::to_value(report()).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<ChurnReport>(v).is_err());
        let mut v = serde_json::to_value(report()).unwrap();
        v["disks"][0]["sizes"] = serde_json::json!([1, 2]);
        assert!(serde_json::from_value::<ChurnReport>(v).is_err());
    }
}
