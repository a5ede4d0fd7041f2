//! What the operator grants plugins: the `[plugins]` table of a role's configuration.
//!
//! ```toml
//! [plugins]
//! dir = "/var/lib/lifeboat/plugins"
//! trusted_keys = ["3b6a27bc…"]      # ed25519 publisher keys (hex)
//! allow_unsigned = false
//!
//! [plugins.grants.local]
//! sha256 = "…"                       # optional pin: trust exactly this build
//! directories = { "/target" = "/var/lib/lifeboat/target" }
//! tls_roots = ["/etc/lifeboat/storage-ca.pem"]   # optional: private CAs for HTTPS
//! settings = { root = "/target" }
//!
//! [plugins.grants.vmware.attached_disks]
//! devices = true                     # hot-added disks, found by their UUID (WWN)
//! datastores = { LocalDS_0 = "/srv/vcsim/LocalDS_0" }   # or: a datastore that is a folder here
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Default linear-memory ceiling a grant allows, in MiB.
pub const DEFAULT_MAX_MEMORY_MIB: u64 = 512;
/// Default per-call deadline ceiling a grant allows, in milliseconds.
pub const DEFAULT_MAX_DEADLINE_MS: u64 = 60_000;

/// The `[plugins]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory holding `<name>.wasm` with its `<name>.toml` manifest.
    pub dir: PathBuf,
    /// Where compiled plugins (native code) are cached: a directory only this process's
    /// user may write, never the plugins directory. The appliance and the agent default it
    /// to `<data_dir>/plugin-cache`; absent here, plugins are compiled at every load.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Hex ed25519 public keys whose plugin signatures are trusted.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Load plugins that have neither a trusted signature nor a pinned sha256. Off by
    /// default; meant for plugin development only.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Capabilities granted to each plugin, by plugin name.
    #[serde(default)]
    pub grants: BTreeMap<String, Grant>,
}

/// What one plugin is allowed. Everything absent is denied.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Trust exactly the build with this sha256 (hex), signed or not.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Most linear memory the plugin may ask for, MiB (default 512).
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
    /// Longest per-call deadline the plugin may ask for, ms (default 60000).
    #[serde(default)]
    pub max_deadline_ms: Option<u64>,
    /// Guest path -> host directory, for each directory the plugin may use.
    #[serde(default)]
    pub directories: BTreeMap<String, PathBuf>,
    /// `host:port` authorities the plugin may send HTTP requests to.
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// PEM files of extra root certificates the plugin's outgoing HTTPS trusts, in
    /// addition to the public (webpki) roots: for endpoints behind a private CA, such as
    /// an on-premises S3 or an Azurite emulator with its own certificate. Read when the
    /// plugin is loaded; a missing or malformed file refuses the plugin.
    #[serde(default)]
    pub tls_roots: Vec<PathBuf>,
    /// Programs the plugin may run (quiescers).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Socket addresses the plugin may connect to (quiescers).
    #[serde(default)]
    pub sockets: Vec<String>,
    /// Give the plugin the real wall and monotonic clocks (otherwise they read zero).
    #[serde(default)]
    pub clock: bool,
    /// Virtual disks attached to this appliance that the plugin may read and write through
    /// the `host-disks` import (the VMware target's data path).
    #[serde(default)]
    pub attached_disks: Option<AttachedDisksGrant>,
    /// Settings passed to the plugin's `init`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// How a plugin's `host-disks` calls find a virtual disk (`[plugins.grants.<name>.attached_disks]`).
/// Both may be given; a datastore named in `datastores` is always resolved as a folder.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachedDisksGrant {
    /// Resolve a disk to the block device of this machine whose SCSI WWN is the disk's UUID
    /// (a VMware disk hot-added to the appliance VM, `disk.EnableUUID` on). A device that is
    /// mounted or held (LVM, RAID), or whose partitions are, is refused.
    #[serde(default)]
    pub devices: bool,
    /// Datastore name -> the folder on this host that holds it (vcsim's datastores, an NFS
    /// datastore mounted on the appliance): a disk `[ds] dir/x.vmdk` is the file
    /// `<folder>/dir/x-flat.vmdk`, opened without following links.
    #[serde(default)]
    pub datastores: BTreeMap<String, PathBuf>,
}
