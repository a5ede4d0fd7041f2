//! The appliance's static configuration: `appliance.toml`, `config_version = 1`.
//!
//! Every role reads the same file; `[roles]` turns them on and off, so one appliance
//! runs everything (the default) and a large site runs more process servers, or a
//! remote target site runs only a master target.

use lifeboat_plugin_host::config::PluginsConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Configuration versions this build reads.
pub const CONFIG_VERSIONS: &[i64] = &[1];

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Version of this file's format (1).
    #[serde(default = "one")]
    pub config_version: i64,
    /// Directory for the state database, CA, keys and cache (created if missing).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Which roles this process runs.
    #[serde(default)]
    pub roles: Roles,
    /// The configuration server (agent registration).
    #[serde(default)]
    pub config_server: ConfigServer,
    /// The process server (receives, caches, compresses, encrypts, ships).
    #[serde(default)]
    pub process_server: ProcessServer,
    /// The master target (applies logs to replicas, keeps recovery points).
    #[serde(default)]
    pub master_target: MasterTarget,
    /// Plugins: where they are, what they are trusted and granted.
    pub plugins: PluginsConfig,
    /// Recovery plans: the scripts their actions may run.
    #[serde(default)]
    pub plans: PlansConfig,
}

fn one() -> i64 {
    1
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/lifeboat")
}

/// `[plans]`: what recovery plans may run on the appliance.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlansConfig {
    /// Allow-listed scripts by name: the program (an absolute path) and its arguments.
    /// A plan's action names one; it runs without a shell, with the plan's context in
    /// `LIFEBOAT_*` environment variables.
    #[serde(default)]
    pub scripts: std::collections::BTreeMap<String, Vec<String>>,
}

/// Role switches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    /// Run the configuration server.
    #[serde(default = "yes")]
    pub config_server: bool,
    /// Run the process server.
    #[serde(default = "yes")]
    pub process_server: bool,
    /// Run the master target.
    #[serde(default = "yes")]
    pub master_target: bool,
}

fn yes() -> bool {
    true
}

impl Default for Roles {
    fn default() -> Self {
        Roles { config_server: true, process_server: true, master_target: true }
    }
}

/// `[config_server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigServer {
    /// HTTPS listen address for registration and the API.
    #[serde(default = "default_config_listen")]
    pub listen: SocketAddr,
    /// Host names and addresses agents use to reach the appliance (put in its server
    /// certificate).
    #[serde(default = "default_names")]
    pub server_names: Vec<String>,
    /// The process server URL handed to agents at registration (default: https on the
    /// first server name and the process server's port).
    #[serde(default)]
    pub process_server_url: Option<String>,
    /// How often each machine's history (RPO, bytes received, backlog) is sampled for the
    /// UI's plots, in seconds (1 to 3600).
    #[serde(default = "default_sample_secs")]
    pub sample_secs: u64,
    /// A folder of agent packages served at `/downloads/` with their SHA-256 and an
    /// installer script (`cargo xtask package` fills `<target>/packages`). Absent: nothing
    /// is served there.
    #[serde(default)]
    pub downloads: Option<PathBuf>,
}

fn default_sample_secs() -> u64 {
    60
}

fn default_config_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 443))
}

fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

impl Default for ConfigServer {
    fn default() -> Self {
        ConfigServer {
            listen: default_config_listen(),
            server_names: default_names(),
            process_server_url: None,
            sample_secs: default_sample_secs(),
            downloads: None,
        }
    }
}

/// `[process_server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessServer {
    /// HTTPS (mutual TLS) listen address for agent data.
    #[serde(default = "default_ps_listen")]
    pub listen: SocketAddr,
    /// Cache size limit in MiB: at this size new batches are refused with a retry.
    #[serde(default = "default_cache_mib")]
    pub cache_max_mib: u64,
    /// High-water mark in MiB: above it agents are asked to slow down.
    #[serde(default = "default_high_water_mib")]
    pub cache_high_water_mib: u64,
    /// Codec plugin name.
    #[serde(default = "default_codec")]
    pub codec: String,
    /// Codec level (zstd: 1..=22).
    #[serde(default = "default_level")]
    pub codec_level: i32,
    /// Cipher plugin name.
    #[serde(default = "default_cipher")]
    pub cipher: String,
    /// Target plugin name the logs are shipped to.
    #[serde(default = "default_target")]
    pub target: String,
    /// Largest disk an agent may announce, in GiB (default 65536, 64 TiB). A larger size
    /// in a hello is refused before the target is asked to create anything; the target
    /// plugin refuses sizes past its own limits as well.
    #[serde(default = "default_max_disk_gib")]
    pub max_disk_gib: u64,
}

fn default_max_disk_gib() -> u64 {
    64 * 1024
}

fn default_ps_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9443))
}
fn default_cache_mib() -> u64 {
    16 * 1024
}
fn default_high_water_mib() -> u64 {
    12 * 1024
}
fn default_codec() -> String {
    "zstd".into()
}
fn default_level() -> i32 {
    1
}
fn default_cipher() -> String {
    "aes-gcm".into()
}
fn default_target() -> String {
    "local".into()
}

impl Default for ProcessServer {
    fn default() -> Self {
        ProcessServer {
            listen: default_ps_listen(),
            cache_max_mib: default_cache_mib(),
            cache_high_water_mib: default_high_water_mib(),
            codec: default_codec(),
            codec_level: default_level(),
            cipher: default_cipher(),
            target: default_target(),
            max_disk_gib: default_max_disk_gib(),
        }
    }
}

/// `[master_target]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterTarget {
    /// Target plugin name holding the replicas.
    #[serde(default = "default_target")]
    pub target: String,
    /// Codec plugin that decompresses logs (must match the process server's).
    #[serde(default = "default_codec")]
    pub codec: String,
    /// Cipher plugin that opens logs.
    #[serde(default = "default_cipher")]
    pub cipher: String,
    /// How often to look for new logs when idle, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Keep at most this many recovery points per machine.
    #[serde(default = "default_keep_points")]
    pub keep_points: u32,
    /// Delete points older than this many hours (0 = no age limit). The newest point is
    /// always kept.
    #[serde(default = "default_keep_hours")]
    pub keep_hours: u64,
    /// Read every log back from the target even when the process server in this appliance
    /// could hand it over in memory: what is applied is then exactly what the target holds
    /// (a check of the target, at the cost of one read per log). Default false.
    #[serde(default)]
    pub read_back: bool,
    /// How long a disk's next log may be missing while later ones are at the target
    /// before the gap is declared, in seconds (default 30). The process server stores a
    /// disk's logs in order, so such a gap means logs were lost: the disk then continues at
    /// the first log there is, raises an alert, and its agent compares the disk with the
    /// replica by block hashes and sends what differs.
    #[serde(default = "default_gap_grace")]
    pub gap_grace_secs: u64,
}

fn default_gap_grace() -> u64 {
    30
}

fn default_poll_ms() -> u64 {
    500
}
fn default_keep_points() -> u32 {
    24
}
fn default_keep_hours() -> u64 {
    72
}

impl Default for MasterTarget {
    fn default() -> Self {
        MasterTarget {
            target: default_target(),
            codec: default_codec(),
            cipher: default_cipher(),
            poll_ms: default_poll_ms(),
            keep_points: default_keep_points(),
            keep_hours: default_keep_hours(),
            read_back: false,
            gap_grace_secs: default_gap_grace(),
        }
    }
}

impl ApplianceConfig {
    /// Range checks the types do not make.
    fn check(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.config_server.sample_secs) {
            return Err(format!(
                "config_server.sample_secs = {}: expected 1 to 3600",
                self.config_server.sample_secs
            ));
        }
        Ok(())
    }

    /// Reads `path`; relative paths inside it are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<ApplianceConfig, lifeboat_common::config::ConfigError> {
        let mut c: ApplianceConfig = lifeboat_common::config::load(path, CONFIG_VERSIONS)?;
        c.check().map_err(|message| lifeboat_common::config::ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.data_dir);
        abs(&mut c.plugins.dir);
        if let Some(d) = c.config_server.downloads.as_mut() {
            abs(d);
        }
        match c.plugins.cache_dir.as_mut() {
            Some(d) => abs(d),
            // Compiled plugins are native code: kept where only the appliance writes,
            // never in the drop-in plugins directory.
            None => c.plugins.cache_dir = Some(c.data_dir.join("plugin-cache")),
        }
        for g in c.plugins.grants.values_mut() {
            for d in g.directories.values_mut() {
                abs(d);
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ApplianceConfig, lifeboat_common::config::ConfigError> {
        lifeboat_common::config::parse(Path::new("appliance.toml"), text, CONFIG_VERSIONS)
    }

    #[test]
    fn minimal_file_gets_working_defaults() {
        let c = parse("[plugins]\ndir = \"plugins\"\n").unwrap();
        assert!(c.roles.process_server && c.roles.master_target);
        assert_eq!(c.process_server.listen.port(), 9443);
        assert_eq!(c.config_server.listen.port(), 443);
        assert_eq!(c.process_server.codec, "zstd");
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = parse("[plugins]\ndir = \"p\"\n[process_server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("appliance.toml") && e.contains("listen"), "{e}");
        let e = parse("[plugins]\ndir = \"p\"\n[roles]\nproces_server = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("proces_server"), "{e}");
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("plugins"), "{e}");
    }

    #[test]
    fn the_sample_interval_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("appliance.toml");
        std::fs::write(&p, "[plugins]\ndir = \"p\"\n[config_server]\nsample_secs = 0\n").unwrap();
        let e = ApplianceConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("sample_secs = 0") && e.contains("appliance.toml"), "{e}");
        std::fs::write(&p, "[plugins]\ndir = \"p\"\n[config_server]\nsample_secs = 5\n").unwrap();
        assert_eq!(ApplianceConfig::load(&p).unwrap().config_server.sample_secs, 5);
        assert_eq!(parse("[plugins]\ndir = \"p\"\n").unwrap().config_server.sample_secs, 60);
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("appliance.toml");
        std::fs::write(&p, "data_dir = \"data\"\n[plugins]\ndir = \"plugins\"\n").unwrap();
        let c = ApplianceConfig::load(&p).unwrap();
        assert_eq!(c.data_dir, d.path().join("data"));
        assert_eq!(c.plugins.dir, d.path().join("plugins"));
    }
}
