//! The agent's configuration file (`agent.toml`, `config_version = 1`).
//!
//! Every key has a default that works, so a file naming only the disks is a valid
//! configuration. Unknown keys are errors (`deny_unknown_fields`), so a misspelt setting is
//! reported with its name instead of being ignored. Values are checked once, at load
//! ([`AgentConfig::validate`]), and every error names the key and says what to write.
//!
//! ```toml
//! config_version = 1
//! state_dir = "/var/lib/lifeboat-agent"
//! disks = ["/dev/sda", "/dev/sdb"]
//! interval_secs = 300
//! read_rate_mbps = 800          # at most 100 MB/s of disk reads
//!
//! [bandwidth]
//! mbps = 100                    # outside the windows below
//! schedule = [
//!   { days = ["mon", "tue", "wed", "thu", "fri"], from = "08:00", to = "18:00", mbps = 10 },
//! ]
//! ```

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bandwidth::{Schedule, Weekday, Window};

/// Configuration format versions this build reads.
pub const SUPPORTED_VERSIONS: &[i64] = &[1];

/// Bytes per second in one megabit per second.
pub const BYTES_PER_MBIT: f64 = 125_000.0;

/// The smallest `batch_max_bytes`: one 4 KiB block.
pub const MIN_BATCH_BYTES: u64 = 4096;

/// The largest `batch_max_bytes`: 32 MiB of data keeps the encoded batch (extent table and
/// checksums included) well under the wire format's 64 MiB limit.
pub const MAX_BATCH_DATA_BYTES: u64 = 32 << 20;

/// The agent's configuration; see the module documentation and `docs/agent.md`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Version of this file's format. Only 1 exists; a missing key means 1.
    #[serde(default = "default_version")]
    pub config_version: i64,
    /// Where the agent keeps its registration (certificate, key, CA), its journal of batches
    /// not yet acknowledged and its change-tracking maps. Must survive reboots. Default
    /// `/var/lib/lifeboat-agent`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The disks to protect: whole block devices (`/dev/sda`), loop devices or raw image
    /// files. The order is the disk index the appliance knows them by (0 = boot disk): do not
    /// reorder the list of a machine that is already protected.
    pub disks: Vec<PathBuf>,
    /// Seconds between the starts of two delta cycles (a crash-consistent recovery point per
    /// cycle). Default 300; a cycle that takes longer is followed at once by the next.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Bytes of batches the journal may hold before the agent stops collecting new changes
    /// until the appliance acknowledges some (the tracker then catches up from its map, so
    /// nothing is lost). Default 1 GiB.
    #[serde(default = "default_journal_max")]
    pub journal_max_bytes: u64,
    /// Bytes of unacknowledged batches kept in memory instead of being written to the
    /// journal's files: while the appliance keeps up, batches are sent from memory and never
    /// written to the agent's disk. Older ones are written out when this is exceeded, and
    /// all of them before a recovery point is committed. 0 writes every batch. Default
    /// 32 MiB; at most `journal_max_bytes`.
    #[serde(default = "default_journal_memory")]
    pub journal_memory_bytes: u64,
    /// Bytes of disk data per batch, at most; a multiple of 4096 between 4 KiB and 32 MiB.
    /// Default 8 MiB.
    #[serde(default = "default_batch_max")]
    pub batch_max_bytes: u64,
    /// Cap on how fast the change tracker reads the disks, in megabits per second
    /// (800 = 100 MB/s). Absent: no cap.
    #[serde(default)]
    pub read_rate_mbps: Option<f64>,
    /// Cap on the network bandwidth used to send batches. Absent: no cap.
    #[serde(default)]
    pub bandwidth: Option<BandwidthConfig>,
    /// CPU niceness the agent sets for itself at start (0 = normal, 19 = lowest priority).
    /// Default 10. Negative values need root and raise the priority.
    #[serde(default = "default_nice")]
    pub nice: i32,
    /// Change tracker: `auto` (default: eBPF block-layer tracking for block devices when the
    /// kernel allows it, else the hash scan, saying why at start), `ebpf` (fail rather than
    /// fall back) or `hashscan`.
    #[serde(default)]
    pub tracker: TrackerChoice,
    /// Freeze the filesystems mounted from the disks (FIFREEZE) at each cut, when every disk
    /// uses the eBPF tracker: the point is then a clean filesystem. Default true.
    #[serde(default = "default_true")]
    pub freeze: bool,
    /// Longest time the filesystems may stay frozen for a cut, in milliseconds; a cut that
    /// would take longer is abandoned (thawed at once, retried after more pre-copy).
    /// Default 500, between 10 and 10000.
    #[serde(default = "default_max_freeze_ms")]
    pub max_freeze_ms: u64,
    /// Where the agent's plugins (quiescers) are and what they are granted; the same table
    /// as the appliance's (docs/plugins.md). Absent: no plugins.
    #[serde(default)]
    pub plugins: Option<lifeboat_plugin_host::config::PluginsConfig>,
    /// App-consistent points. Absent: every point is crash-consistent.
    #[serde(default)]
    pub quiesce: Option<QuiesceConfig>,
    /// Membership of a multi-machine consistency group. Absent: none.
    #[serde(default)]
    pub group: Option<GroupConfig>,
    /// Seconds between checks with the appliance of the agent's certificate and trusted CAs
    /// (renewal before expiry, CA rotation) and of the machine's policy (its interval).
    /// Default 300, at least 10.
    #[serde(default = "default_trust_check")]
    pub trust_check_secs: u64,
    /// How the protected disks boot, `bios` or `uefi`, for the VM a failover makes.
    /// Absent: detected from how this host booted (`/sys/firmware/efi`).
    #[serde(default)]
    pub firmware: Option<String>,
}

/// `[group]`: a multi-machine consistency group (see `crate::group`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name, the same on every member: 1 to 64 ASCII letters, digits, `-`, `_`.
    pub name: String,
    /// Where this member listens for its peers (mutual TLS). Default `0.0.0.0:20004`.
    #[serde(default = "default_group_listen")]
    pub listen: std::net::SocketAddr,
    /// This member runs the group's rounds. Exactly one member of a group sets it.
    #[serde(default)]
    pub coordinator: bool,
    /// Seconds between group points (coordinator). Default 300.
    #[serde(default = "default_group_interval")]
    pub interval_secs: u64,
    /// How long the coordinator waits for every member to pre-copy, and then to quiesce
    /// and freeze, in milliseconds. Default 10000, between 100 and 600000.
    #[serde(default = "default_group_deadline")]
    pub deadline_ms: u64,
    /// The other members: their machine ids (only they may call this member) and
    /// addresses (where the coordinator reaches them).
    pub members: Vec<GroupMemberConfig>,
}

/// One entry of `group.members`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberConfig {
    /// The member's machine id (as `lifeboat-agent register` printed it).
    pub machine: String,
    /// Its `group.listen` address as this machine reaches it.
    pub address: std::net::SocketAddr,
}

fn default_group_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([0, 0, 0, 0], 20004))
}

fn default_group_interval() -> u64 {
    300
}

fn default_group_deadline() -> u64 {
    10_000
}

/// `[quiesce]`: which quiescer plugins make a point app-consistent, and how often.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuiesceConfig {
    /// Quiescer plugins, frozen in this order and thawed in reverse (each must be loaded
    /// from `[plugins] dir` and granted).
    pub plugins: Vec<String>,
    /// Seconds between app-consistent points; the cuts in between are crash-consistent.
    /// 0 makes every cut app-consistent. Default 3600.
    #[serde(default = "default_app_interval")]
    pub interval_secs: u64,
    /// How long each quiescer's `freeze` (and `prepare`, `thaw`) may take, in
    /// milliseconds; a quiescer that takes longer makes the point crash-consistent.
    /// Default 10000, between 100 and 600000.
    #[serde(default = "default_quiesce_deadline")]
    pub deadline_ms: u64,
}

fn default_app_interval() -> u64 {
    3600
}

fn default_quiesce_deadline() -> u64 {
    10_000
}

/// `tracker`: which change tracker the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerChoice {
    /// eBPF where possible, else the hash scan.
    #[default]
    Auto,
    /// eBPF, or refuse to start.
    Ebpf,
    /// The hash scan everywhere.
    Hashscan,
}

/// `[bandwidth]`: a network limit, optionally varying with the time of day.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthConfig {
    /// Megabits per second outside every schedule window. Absent: unlimited outside the
    /// windows.
    #[serde(default)]
    pub mbps: Option<f64>,
    /// Time windows with their own limit, in local time; the first window that matches the
    /// current time wins.
    #[serde(default)]
    pub schedule: Vec<WindowConfig>,
}

/// One entry of `bandwidth.schedule`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Days the window starts on (`mon` … `sun`). Absent: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Local start time, `HH:MM` (24-hour clock), inclusive.
    pub from: String,
    /// Local end time, `HH:MM`, exclusive. Earlier than `from`: the window runs past
    /// midnight into the next day. Equal to `from`: the whole day.
    pub to: String,
    /// Megabits per second during the window; 0 pauses sending.
    pub mbps: f64,
}

fn default_version() -> i64 {
    1
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lifeboat-agent")
}
fn default_interval() -> u64 {
    300
}
fn default_journal_max() -> u64 {
    1 << 30
}
fn default_true() -> bool {
    true
}
fn default_trust_check() -> u64 {
    300
}

fn default_max_freeze_ms() -> u64 {
    500
}
fn default_journal_memory() -> u64 {
    32 << 20
}
fn default_batch_max() -> u64 {
    8 << 20
}
fn default_nice() -> i32 {
    10
}

/// Why a configuration cannot be used. Every message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed (unknown key, wrong type, bad version).
    #[error(transparent)]
    Load(#[from] lifeboat_common::config::ConfigError),
    /// A value is out of range.
    #[error("configuration file {path}: key `{key}`: {reason}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key, dotted (`bandwidth.schedule[0].from`).
        key: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

impl GroupConfig {
    /// The `[group]` part of [`AgentConfig::validate`]; `bad` makes the error naming the key.
    fn validate(&self, bad: &impl Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "group.name",
                format!("{:?}: use 1 to 64 ASCII letters, digits, '-' or '_'", self.name),
            ));
        }
        if self.members.is_empty() {
            return Err(bad(
                "group.members",
                "is empty: list the other members, e.self. members = [{ machine = \"<id>\", address = \"10.0.0.2:20004\" }]".into(),
            ));
        }
        for (i, m) in self.members.iter().enumerate() {
            if lifeboat_net::ca::validate_machine_id(&m.machine).is_err() {
                return Err(bad(
                    &format!("group.members[{i}].machine"),
                    format!(
                        "{:?} is not a machine id (as `lifeboat-agent register` printed it)",
                        m.machine
                    ),
                ));
            }
            if self.members[..i].iter().any(|o| o.machine == m.machine) {
                return Err(bad(
                    &format!("group.members[{i}].machine"),
                    format!("{} is listed twice", m.machine),
                ));
            }
        }
        if self.interval_secs == 0 {
            return Err(bad("group.interval_secs", "must be at least 1".into()));
        }
        if !(100..=600_000).contains(&self.deadline_ms) {
            return Err(bad(
                "group.deadline_ms",
                format!(
                    "{} is outside 100..=600000 milliseconds; the default is 10000",
                    self.deadline_ms
                ),
            ));
        }
        Ok(())
    }
}

impl AgentConfig {
    /// Reads, parses and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = lifeboat_common::config::load(path, SUPPORTED_VERSIONS)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Parses and checks `text` (as if read from `path`, which only appears in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = lifeboat_common::config::parse(path, text, SUPPORTED_VERSIONS)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the values' ranges; the error names the key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        self.validate_disks(&bad)?;
        if !self.state_dir.is_absolute() {
            return Err(bad(
                "state_dir",
                format!(
                    "{} is not an absolute path; write e.g. \"/var/lib/lifeboat-agent\"",
                    self.state_dir.display()
                ),
            ));
        }
        if self.interval_secs == 0 {
            return Err(bad("interval_secs", "must be at least 1 (seconds between cycles)".into()));
        }
        if self.batch_max_bytes < MIN_BATCH_BYTES
            || self.batch_max_bytes > MAX_BATCH_DATA_BYTES
            || !self.batch_max_bytes.is_multiple_of(4096)
        {
            return Err(bad(
                "batch_max_bytes",
                format!(
                    "{} must be a multiple of 4096 between {MIN_BATCH_BYTES} and {MAX_BATCH_DATA_BYTES}; the default is 8388608 (8 MiB)",
                    self.batch_max_bytes
                ),
            ));
        }
        if self.journal_max_bytes < self.batch_max_bytes {
            return Err(bad(
                "journal_max_bytes",
                format!(
                    "{} is smaller than batch_max_bytes ({}); the journal must hold at least one batch (default 1 GiB)",
                    self.journal_max_bytes, self.batch_max_bytes
                ),
            ));
        }
        if self.trust_check_secs < 10 {
            return Err(bad(
                "trust_check_secs",
                format!("{} is below 10 seconds", self.trust_check_secs),
            ));
        }
        if let Some(f) = &self.firmware {
            lifeboat_api::check_firmware(f).map_err(|e| bad("firmware", e))?;
        }
        if !(10..=10_000).contains(&self.max_freeze_ms) {
            return Err(bad(
                "max_freeze_ms",
                format!(
                    "{} is outside 10..=10000 milliseconds; the default is 500",
                    self.max_freeze_ms
                ),
            ));
        }
        if self.journal_memory_bytes > self.journal_max_bytes {
            return Err(bad(
                "journal_memory_bytes",
                format!(
                    "{} is larger than journal_max_bytes ({}); the default is 33554432 (32 MiB), 0 writes every batch to disk",
                    self.journal_memory_bytes, self.journal_max_bytes
                ),
            ));
        }
        if let Some(r) = self.read_rate_mbps {
            check_rate(r, false).map_err(|reason| bad("read_rate_mbps", reason))?;
        }
        if !(-20..=19).contains(&self.nice) {
            return Err(bad(
                "nice",
                format!("{} is out of range: use -20 (highest) to 19 (lowest)", self.nice),
            ));
        }
        if let Some(bw) = &self.bandwidth {
            bw.schedule(path)?;
        }
        if let Some(p) = &self.plugins
            && !p.dir.is_absolute()
        {
            return Err(bad(
                "plugins.dir",
                format!(
                    "{} is not an absolute path; write e.g. \"/var/lib/lifeboat-agent/plugins\"",
                    p.dir.display()
                ),
            ));
        }
        if let Some(g) = &self.group {
            g.validate(&bad)?;
        }
        if let Some(q) = &self.quiesce {
            self.validate_quiesce(q, &bad)?;
        }
        Ok(())
    }

    /// The disks' part of [`AgentConfig::validate`]: at least one, absolute paths, each once.
    fn validate_disks(
        &self,
        bad: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.disks.is_empty() {
            return Err(bad(
                "disks",
                "no disk to protect: list at least one, e.g. disks = [\"/dev/sda\"]".into(),
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !d.is_absolute() {
                return Err(bad(
                    &format!("disks[{i}]"),
                    format!("{} is not an absolute path; write e.g. \"/dev/sda\"", d.display()),
                ));
            }
            if self.disks[..i].contains(d) {
                return Err(bad(
                    &format!("disks[{i}]"),
                    format!("{} is listed twice; each disk once", d.display()),
                ));
            }
        }
        Ok(())
    }

    /// The `[quiesce]` part of [`AgentConfig::validate`]; it needs a `[plugins]` table.
    fn validate_quiesce(
        &self,
        q: &QuiesceConfig,
        bad: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if q.plugins.is_empty() {
            return Err(bad(
                "quiesce.plugins",
                "is empty: name at least one quiescer plugin, e.g. plugins = [\"postgres-quiescer\"], or remove [quiesce]".into(),
            ));
        }
        if self.plugins.is_none() {
            return Err(bad(
                "quiesce.plugins",
                "needs a [plugins] table (dir, grants) to load the quiescers from".into(),
            ));
        }
        if !(100..=600_000).contains(&q.deadline_ms) {
            return Err(bad(
                "quiesce.deadline_ms",
                format!(
                    "{} is outside 100..=600000 milliseconds; the default is 10000",
                    q.deadline_ms
                ),
            ));
        }
        Ok(())
    }

    /// How points are cut (used when every disk has the eBPF tracker).
    pub fn cut_policy(&self) -> crate::cycle::CutPolicy {
        crate::cycle::CutPolicy {
            freeze: self.freeze,
            max_freeze: std::time::Duration::from_millis(self.max_freeze_ms),
            ..crate::cycle::CutPolicy::default()
        }
    }

    /// The disk-read cap in bytes per second, if any.
    pub fn read_rate(&self) -> Option<NonZeroU64> {
        self.read_rate_mbps.and_then(|m| NonZeroU64::new(mbps_to_bytes(m)))
    }

    /// The bandwidth schedule (unlimited when there is no `[bandwidth]`).
    pub fn schedule(&self, path: &Path) -> Result<Schedule, ConfigError> {
        match &self.bandwidth {
            None => Ok(Schedule::unlimited()),
            Some(bw) => bw.schedule(path),
        }
    }
}

impl BandwidthConfig {
    /// A machine policy's schedule (`lifeboat_api::PolicyBandwidth`) in this shape.
    pub fn from_policy(p: &lifeboat_api::PolicyBandwidth) -> BandwidthConfig {
        BandwidthConfig {
            mbps: p.mbps,
            schedule: p
                .schedule
                .iter()
                .map(|w| WindowConfig {
                    days: w.days.clone(),
                    from: w.from.clone(),
                    to: w.to.clone(),
                    mbps: w.mbps,
                })
                .collect(),
        }
    }

    /// Checks the section and turns it into a [`Schedule`].
    pub fn schedule(&self, path: &Path) -> Result<Schedule, ConfigError> {
        let bad = |key: String, reason: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let default = match self.mbps {
            None => None,
            Some(m) => {
                check_rate(m, false).map_err(|r| bad("bandwidth.mbps".into(), r))?;
                Some(mbps_to_bytes(m))
            }
        };
        let mut windows = Vec::with_capacity(self.schedule.len());
        for (i, w) in self.schedule.iter().enumerate() {
            let key = |field: &str| format!("bandwidth.schedule[{i}].{field}");
            let from = parse_hhmm(&w.from).map_err(|r| bad(key("from"), r))?;
            let to = parse_hhmm(&w.to).map_err(|r| bad(key("to"), r))?;
            check_rate(w.mbps, true).map_err(|r| bad(key("mbps"), r))?;
            let days = match &w.days {
                None => Weekday::ALL.to_vec(),
                Some(list) if list.is_empty() => {
                    return Err(bad(
                        key("days"),
                        "is empty: list days such as [\"mon\", \"tue\"], or leave the key out for every day".into(),
                    ));
                }
                Some(list) => list
                    .iter()
                    .map(|d| {
                        Weekday::parse(d).ok_or_else(|| {
                            bad(
                                key("days"),
                                format!(
                                    "{d:?} is not a day: use mon, tue, wed, thu, fri, sat or sun"
                                ),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
            windows.push(Window { days, from, to, bytes_per_sec: mbps_to_bytes(w.mbps) });
        }
        Ok(Schedule { default, windows })
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "float to int saturates; the fraction is dropped on purpose (check_rate refuses negative and non-finite rates)"
)]
fn mbps_to_bytes(mbps: f64) -> u64 {
    (mbps * BYTES_PER_MBIT) as u64
}

fn check_rate(mbps: f64, zero_ok: bool) -> Result<(), String> {
    if !mbps.is_finite() || mbps < 0.0 || (!zero_ok && mbps == 0.0) {
        return Err(format!(
            "{mbps} is not a rate: write a positive number of megabits per second{}",
            if zero_ok { " (0 pauses sending)" } else { "" }
        ));
    }
    if mbps > 0.0 && mbps * BYTES_PER_MBIT < 1.0 {
        return Err(format!("{mbps} Mbit/s is below one byte per second"));
    }
    Ok(())
}

/// Parses `HH:MM` into minutes after midnight.
fn parse_hhmm(s: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time: write HH:MM on the 24-hour clock, e.g. \"08:00\"");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("/etc/lifeboat/agent.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_work_with_only_the_disks() {
        let c = parse("disks = [\"/dev/sda\"]\n").unwrap();
        assert_eq!(c.config_version, 1);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/lifeboat-agent"));
        assert_eq!(c.interval_secs, 300);
        assert_eq!(c.journal_max_bytes, 1 << 30);
        assert_eq!(c.batch_max_bytes, 8 << 20);
        assert_eq!(c.read_rate_mbps, None);
        assert_eq!(c.read_rate(), None);
        assert_eq!(c.nice, 10);
        let s = c.schedule(Path::new("x")).unwrap();
        assert_eq!(s.rate_at(Weekday::Mon, 600), None);
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
config_version = 1
state_dir = "/srv/lb"
disks = ["/dev/sda", "/dev/sdb"]
interval_secs = 2
journal_max_bytes = 104857600
batch_max_bytes = 1048576
read_rate_mbps = 800
nice = 5
[bandwidth]
mbps = 100
schedule = [
  { days = ["mon", "tue"], from = "08:00", to = "18:00", mbps = 10 },
  { from = "22:00", to = "06:00", mbps = 0 },
]
"#,
        )
        .unwrap();
        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.read_rate(), NonZeroU64::new(100_000_000));
        let s = c.schedule(Path::new("x")).unwrap();
        assert_eq!(s.rate_at(Weekday::Mon, 9 * 60), Some(1_250_000));
        assert_eq!(s.rate_at(Weekday::Wed, 9 * 60), Some(12_500_000));
        assert_eq!(s.rate_at(Weekday::Wed, 23 * 60), Some(0));
    }

    #[test]
    fn group_and_quiesce_errors_name_the_key() {
        let d = "disks = [\"/dev/sda\"]\n";
        let member = "members = [{ machine = \"6a0e4c1e-1f2b-4c3d-8e9f-0a1b2c3d4e5f\", address = \"10.0.0.2:20004\" }]\n";
        let ok =
            parse(&format!("{d}[group]\nname = \"erp\"\ncoordinator = true\n{member}")).unwrap();
        let g = ok.group.unwrap();
        assert_eq!((g.listen.port(), g.interval_secs, g.deadline_ms), (20004, 300, 10_000));
        let m = err(&format!("{d}[group]\nname = \"e r p\"\n{member}"));
        assert!(m.contains("`group.name`"), "{m}");
        let m = err(&format!("{d}[group]\nname = \"erp\"\nmembers = []\n"));
        assert!(m.contains("`group.members`"), "{m}");
        let m = err(&format!(
            "{d}[group]\nname = \"erp\"\nmembers = [{{ machine = \"not an id\", address = \"10.0.0.2:20004\" }}]\n"
        ));
        assert!(m.contains("`group.members[0].machine`"), "{m}");
        let m = err(&format!("{d}[group]\nname = \"erp\"\ndeadline_ms = 5\n{member}"));
        assert!(m.contains("`group.deadline_ms`"), "{m}");
        let m = err(&format!("{d}[group]\nname = \"erp\"\nlisten = \"nowhere\"\n{member}"));
        assert!(m.contains("listen"), "{m}");
        let m = err(&format!("{d}[quiesce]\nplugins = [\"postgres-quiescer\"]\n"));
        assert!(m.contains("`quiesce.plugins`") && m.contains("[plugins]"), "{m}");
        let plugins = "[plugins]\ndir = \"/var/lib/lifeboat-agent/plugins\"\n";
        let m = err(&format!("{d}{plugins}[quiesce]\nplugins = []\n"));
        assert!(m.contains("`quiesce.plugins`"), "{m}");
        let m = err(&format!("{d}{plugins}[quiesce]\nplugins = [\"x\"]\ndeadline_ms = 1\n"));
        assert!(m.contains("`quiesce.deadline_ms`"), "{m}");
        let m = err(&format!("{d}[plugins]\ndir = \"plugins\"\n"));
        assert!(m.contains("`plugins.dir`"), "{m}");
        let q =
            parse(&format!("{d}{plugins}[quiesce]\nplugins = [\"x\"]\n")).unwrap().quiesce.unwrap();
        assert_eq!((q.interval_secs, q.deadline_ms), (3600, 10_000));
    }

    #[test]
    fn errors_name_the_key() {
        let m = err("disks = [\"/dev/sda\"]\nintervall_secs = 3\n");
        assert!(m.contains("intervall_secs") && m.contains("agent.toml"), "{m}");
        let m = err("disks = []\n");
        assert!(m.contains("`disks`"), "{m}");
        let m = err("disks = [\"sda\"]\n");
        assert!(m.contains("`disks[0]`") && m.contains("absolute"), "{m}");
        let m = err("disks = [\"/dev/sda\", \"/dev/sda\"]\n");
        assert!(m.contains("`disks[1]`") && m.contains("twice"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\nbatch_max_bytes = 1000\n");
        assert!(m.contains("`batch_max_bytes`") && m.contains("4096"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\njournal_max_bytes = 4096\n");
        assert!(m.contains("`journal_max_bytes`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\ntracker = \"kernel-module\"\n");
        assert!(m.contains("tracker") && m.contains("ebpf"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\njournal_memory_bytes = 2000000000\n");
        assert!(m.contains("`journal_memory_bytes`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\ninterval_secs = 0\n");
        assert!(m.contains("`interval_secs`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\nread_rate_mbps = -1\n");
        assert!(m.contains("`read_rate_mbps`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\nnice = 40\n");
        assert!(m.contains("`nice`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\nstate_dir = \"rel\"\n");
        assert!(m.contains("`state_dir`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\ninterval_secs = \"five\"\n");
        assert!(m.contains("interval_secs"), "{m}");
        let m = err("config_version = 2\ndisks = [\"/dev/sda\"]\n");
        assert!(m.contains("config_version = 2"), "{m}");
        let m = err(
            "disks = [\"/dev/sda\"]\n[bandwidth]\nschedule = [{ from = \"8\", to = \"18:00\", mbps = 1 }]\n",
        );
        assert!(m.contains("`bandwidth.schedule[0].from`") && m.contains("HH:MM"), "{m}");
        let m = err(
            "disks = [\"/dev/sda\"]\n[bandwidth]\nschedule = [{ from = \"08:00\", to = \"24:00\", mbps = 1 }]\n",
        );
        assert!(m.contains("`bandwidth.schedule[0].to`"), "{m}");
        let m = err(
            "disks = [\"/dev/sda\"]\n[bandwidth]\nschedule = [{ days = [\"monday\"], from = \"08:00\", to = \"09:00\", mbps = 1 }]\n",
        );
        assert!(m.contains("`bandwidth.schedule[0].days`") && m.contains("mon"), "{m}");
        let m = err(
            "disks = [\"/dev/sda\"]\n[bandwidth]\nschedule = [{ from = \"08:00\", to = \"09:00\", mbps = -3 }]\n",
        );
        assert!(m.contains("`bandwidth.schedule[0].mbps`"), "{m}");
        let m = err("disks = [\"/dev/sda\"]\n[bandwidth]\nmbps = 0\n");
        assert!(m.contains("`bandwidth.mbps`"), "{m}");
        let m = err(
            "disks = [\"/dev/sda\"]\n[bandwidth]\nschedule = [{ from = \"08:00\", to = \"09:00\", mbps = 1, days = [\"mon\"], extra = 1 }]\n",
        );
        assert!(m.contains("extra"), "{m}");
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("00:00"), Ok(0));
        assert_eq!(parse_hhmm("8:05"), Ok(485));
        assert_eq!(parse_hhmm("23:59"), Ok(1439));
        for bad in ["24:00", "12:60", "12", "12:5", "ab:cd", ":30", "123:00", "-1:00"] {
            assert!(parse_hhmm(bad).is_err(), "{bad}");
        }
    }
}
