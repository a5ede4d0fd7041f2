//! Failover, test failover, the VM settings of a failed-over machine, and jobs.

use crate::{MAX_NICS, SystemInfo, check_cidr, check_firmware, check_mac, check_network};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/machines/{id}/test-failover` and `POST /api/v1/machines/{id}/failover`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFailoverRequest {
    /// Which point: `latest` (the default: first process everything already received,
    /// then the newest point), `latest-processed` (the newest point at the target now),
    /// `latest-app` (the newest app-consistent point), `latest-group` (the newest point
    /// of a complete consistency-group point) or a point id from the points list.
    #[serde(default)]
    pub point: Option<String>,
}

/// `POST /api/v1/machines/{id}/reprotect`. Without `to` (or with no body at all), the
/// original machine's agent writes its own disks from the failed-over ones
/// (`lifeboat-agent reprotect`); with `to`, the master target writes new disks at another
/// target from them, and failback makes a VM there.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprotectRequest {
    /// A loaded target plugin other than the one the machine failed over to (`vmware`):
    /// the machine fails back into a new VM there.
    #[serde(default)]
    pub to: Option<String>,
    /// The new VM's name at `to` (letters, digits, `.`, `_`, `-`; up to 80): default
    /// `lb-<machine id>`.
    #[serde(default)]
    pub vm_name: Option<String>,
    /// The network every interface of the new VM is put on (a port group for VMware);
    /// default: the machine's network mapping (`vm-spec`).
    #[serde(default)]
    pub network: Option<String>,
    /// `vm_name` is an existing, powered-off VM at `to` (the machine's original VM): its
    /// disks are written, and failback starts it as it is configured, instead of making a
    /// new VM.
    #[serde(default)]
    pub existing_vm: bool,
}

impl ReprotectRequest {
    /// Format checks, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.to.is_none()
            && (self.vm_name.is_some() || self.network.is_some() || self.existing_vm)
        {
            return Err(
                "vm_name, network and existing_vm need `to` (the target to fail back into)".into(),
            );
        }
        if self.existing_vm && self.vm_name.is_none() {
            return Err("existing_vm needs vm_name (the VM whose disks are written)".into());
        }
        if self.existing_vm && self.network.is_some() {
            return Err("network: an existing VM keeps its own networks".into());
        }
        if let Some(t) = &self.to
            && (t.is_empty()
                || t.len() > 64
                || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)))
        {
            return Err(format!("to: {t:?} is not a plugin name"));
        }
        if let Some(n) = &self.vm_name {
            check_vm_name(n).map_err(|e| format!("vm_name: {e}"))?;
        }
        if let Some(n) = &self.network {
            check_network(n).map_err(|e| format!("network: {e}"))?;
        }
        Ok(())
    }
}

/// Whether `s` can name a VM a target makes: 1 to 80 ASCII letters, digits, `.`, `_`, `-`,
/// not starting with `.` or `-`.
pub fn check_vm_name(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 80
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a VM name: 1 to 80 letters, digits, '.', '_', '-', not starting with '.' or '-'"
        ))
    }
}

/// Where a machine reprotected into another target fails back to, as stored with its
/// reverse replication (the `destination` of `reverse_sync`, JSON, this shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprotectDestination {
    /// The target plugin.
    pub target: String,
    /// The VM failback makes there.
    pub vm_name: String,
    /// Every interface's network, if not the machine's mapping.
    pub network: Option<String>,
    /// `vm_name` is an existing VM whose disks are written (adopted), not a new one.
    #[serde(default)]
    pub existing: bool,
    /// The disks written there, by the machine's disk index.
    pub disks: Vec<DestinationDisk>,
}

/// A disk at a [`ReprotectDestination`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationDisk {
    /// The machine's disk index.
    pub disk: u32,
    /// The disk's id at the destination target.
    pub id: String,
}

/// The VM a failover of a machine makes (`GET`/`PUT /api/v1/machines/{id}/vm-spec`):
/// what the agent detected, with the administrator's settings over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
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

/// A failover of a machine (`GET /api/v1/failovers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverInfo {
    /// The machine.
    pub machine_id: String,
    /// Where it stands. Failback ends the failover.
    pub state: crate::FailoverState,
    /// The point the VM was made from.
    pub point_id: Option<String>,
    /// The VM at the target.
    pub vm: Option<String>,
    /// Its disks at the target, boot disk first.
    pub disks: Vec<String>,
    /// The job that made it.
    pub job: crate::JobId,
    /// When it was asked for.
    pub started_unix_ms: u64,
    /// When it was committed.
    pub committed_unix_ms: Option<u64>,
}

/// `GET /api/v1/failovers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverList {
    /// By machine id.
    pub failovers: Vec<FailoverInfo>,
}

/// An asynchronous job (`GET /api/v1/jobs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobInfo {
    /// Job number.
    pub id: crate::JobId,
    /// What it does.
    pub kind: crate::JobKind,
    /// The machine it is about.
    pub machine_id: Option<String>,
    /// Where it stands.
    pub state: crate::JobState,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobInfo>,
}

/// A test failover (`GET /api/v1/test-failovers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFailoverList {
    /// Oldest first.
    pub test_failovers: Vec<TestFailoverInfo>,
}

/// A disk a test failover or a failover made at the target, in its job's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverDisk {
    /// The source disk's index.
    pub disk: u32,
    /// The new disk's id at the target.
    pub id: String,
    /// Where a VM finds it: a file path, a blob URL, a datastore path.
    pub location: String,
    /// It was made without copying the data.
    pub instant: bool,
}

/// The [`JobInfo::result`] of a succeeded `test-failover` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFailoverResult {
    /// The test failover's id (for `POST /api/v1/test-failovers/{id}/cleanup`).
    pub test_failover: String,
    /// The isolated VM at the target.
    pub vm: String,
    /// The point it was made from.
    pub point: String,
    /// Its disks, in the VM's order.
    pub disks: Vec<FailoverDisk>,
}

/// The [`JobInfo::result`] of a succeeded `failover` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailoverResult {
    /// The machine.
    pub machine: String,
    /// The VM at the target.
    pub vm: String,
    /// The point it was made from.
    pub point: String,
    /// Its disks, in the VM's order.
    pub disks: Vec<FailoverDisk>,
    /// How long the failover took, in seconds.
    pub seconds: f64,
}

/// The [`JobInfo::result`] of a succeeded `commit` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitResult {
    /// The machine.
    pub machine: String,
    /// How many recovery points were deleted.
    pub points_deleted: u64,
}
