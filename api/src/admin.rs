//! The administrator API: setup, sessions, machines, plugins, consistency groups.

use crate::PointSummary;
use serde::{Deserialize, Serialize};

/// `GET /api/v1/setup`: whether the first-run setup is still to be done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupStatus {
    /// No administrator exists yet.
    pub needed: bool,
}

/// `GET /api/v1/health`: the configuration server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always true.
    pub ok: bool,
}

/// `POST /api/v1/setup`: the first administrator, and the appliance's one-time setup token
/// (shown on its console and by `lifeboat-appliance setup-token`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The setup token; case, spaces and dashes do not matter.
    pub setup_token: String,
    /// Account name: 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Password, at least 12 characters.
    pub password: String,
}

impl std::fmt::Debug for SetupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupRequest").field("name", &self.name).finish_non_exhaustive()
    }
}

/// `POST /api/v1/login`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The settings its `init` takes, as its manifest declares them (manifest_version 2);
    /// empty when it declares none.
    #[serde(default)]
    pub settings: Vec<PluginSetting>,
}

/// A setting a plugin declares, with what it is set to now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSetting {
    /// The key `init` gets.
    pub name: String,
    /// `string`, `integer`, `boolean` or `url`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What a form calls it.
    pub label: String,
    /// A sentence on what it is for.
    pub help: Option<String>,
    /// The value used when none is set, as text.
    pub default: Option<String>,
    /// A secret: its value is never shown.
    pub secret: bool,
    /// The plugin cannot work without it.
    pub required: bool,
    /// Rarely changed: a form folds it away under "More settings".
    #[serde(default)]
    pub advanced: bool,
    /// Whether it has a value now (set, or its default).
    pub configured: bool,
    /// Its value now, for a setting that is not a secret.
    pub value: Option<String>,
}

/// An administrator (`GET /api/v1/admins`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminInfo {
    /// The name they log in with.
    pub name: String,
    /// When the account was made.
    pub created_unix_ms: u64,
    /// Their live sessions.
    pub sessions: u64,
}

/// `GET /api/v1/admins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminList {
    /// By name.
    pub admins: Vec<AdminInfo>,
}

/// `POST /api/v1/admins`: another administrator (the same rules as the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAdmin {
    /// 1 to 64 ASCII letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// 12 to 1024 characters.
    pub password: String,
}

/// `PUT /api/v1/admins/{name}/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// 12 to 1024 characters.
    pub password: String,
}

/// A live administrator session (`GET /api/v1/sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionEntry {
    /// Names the session (the first 16 hex digits of its token's sha256; it cannot open it).
    pub id: String,
    /// Whose it is.
    pub admin: String,
    /// When it began (unknown for sessions older than this field).
    pub created_unix_ms: Option<u64>,
    /// When it ends.
    pub expires_unix_ms: u64,
    /// It is the session of this request.
    pub current: bool,
}

/// `GET /api/v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionList {
    /// Newest expiry first.
    pub sessions: Vec<SessionEntry>,
}

/// `GET /api/v1/target`: the target plugin this appliance replicates to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetState {
    /// The target plugin in use.
    pub plugin: String,
    /// The plugin the configuration file names (used until one is chosen here).
    pub configured: String,
    /// Its settings were set from the API (they replace the configuration file's).
    pub stored: bool,
    /// Another plugin can no longer be chosen: machines are registered, and their replicas
    /// are at this target. Its settings can still change.
    pub locked: bool,
}

/// `PUT /api/v1/target`: choose a target plugin and set its settings (what its manifest
/// declares). They are checked against the declarations, then the plugin's own `init`
/// must accept them; only then are they kept (secrets sealed) and the plugin reloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetChoice {
    /// A loaded target plugin.
    pub plugin: String,
    /// Every setting to give it, as text. A setting left out or empty takes its default; a
    /// secret left out or empty keeps the value it has now.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/plugins/{name}/health` body (optional): settings to test instead of the
/// plugin's own, as in [`TargetChoice::settings`]. Nothing is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// The settings, as text.
    pub settings: std::collections::BTreeMap<String, String>,
}

/// `GET /api/v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginList {
    /// Loaded ones by name, then refused ones.
    pub plugins: Vec<PluginInfo>,
    /// Uploaded plugins waiting in quarantine for an administrator to trust them.
    #[serde(default)]
    pub quarantined: Vec<QuarantinedPlugin>,
}

/// `POST /api/v1/plugin-uploads`: a plugin's files. It goes to quarantine: checked (its
/// manifest, that the build is the manifest's sha256, that it is a component of the world
/// it claims) but never run until an administrator trusts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginUpload {
    /// The manifest (`<name>.toml`), as text.
    pub manifest: String,
    /// The `.wasm` component, base64 (standard alphabet, padded), at most 16 MiB decoded.
    pub wasm_base64: String,
}

/// An uploaded plugin in quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantinedPlugin {
    /// Its name (from its manifest).
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its version.
    pub version: String,
    /// The sha256 of its `.wasm` (hex): what trusting it pins.
    pub sha256: String,
    /// The trusted publisher key that signed it, if one did.
    pub signed_by: Option<String>,
    /// What it asks for (memory, deadline, directories, hosts, commands, sockets, clock).
    pub requests: String,
    /// What loading it would do now, once trusted: `loads`, or why it would be refused
    /// (typically a capability the configuration file does not grant).
    pub once_trusted: String,
    /// A loaded plugin of the same name it would replace, with its version.
    pub replaces: Option<String>,
    /// When it was uploaded.
    pub uploaded_unix_ms: u64,
}

/// `POST /api/v1/plugin-uploads/{name}/trust`: the sha256 the administrator read and
/// confirms (it must still be the quarantined build's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginTrust {
    /// The `.wasm`'s sha256 (hex).
    pub sha256: String,
}

/// A consistency group's recorded point (`GET /api/v1/groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDefinition {
    /// The member that runs the rounds (one of `members`).
    pub coordinator: String,
    /// 2 to 64 registered machines, each in no other group.
    pub members: Vec<String>,
}

/// This machine's group, as the appliance defines it (in [`TrustAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPoint {
    /// The group's name.
    pub group: String,
    /// The point number.
    pub point: u64,
}

/// A consistency group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupList {
    /// By name.
    pub groups: Vec<GroupInfo>,
}

/// A disk's index and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSize {
    /// Disk index.
    pub index: u32,
    /// Size in bytes.
    pub size: u64,
}

/// `GET /api/v1/machines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineList {
    /// Machines, by id.
    pub machines: Vec<MachineSummary>,
}

/// An empty JSON object, `{}`: the answer of `POST /api/v1/logout`, and the body of a
/// request that carries nothing (`POST /api/v1/test-failovers/{id}/cleanup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The answer of `POST /api/v1/machines/{id}/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The machine is revoked: its agent is refused from its next request on.
    pub revoked: bool,
}

/// `GET /api/v1/passphrases`: how many registration passphrases are unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PassphraseStatus {
    /// Unused one-time registration passphrases that have not expired.
    pub unused: u64,
}

/// The answer of `POST /api/v1/passphrases`: a new one-time registration passphrase,
/// shown once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPassphrase {
    /// The passphrase an agent registers with.
    pub passphrase: String,
    /// How many unused passphrases stopped working.
    pub dropped: u64,
}

impl std::fmt::Debug for NewPassphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPassphrase").field("dropped", &self.dropped).finish_non_exhaustive()
    }
}

/// `GET /api/v1/appliance`: the appliance's identity as agents and administrators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplianceInfo {
    /// The appliance's name, as the UI shows it (`lifeboat` until set).
    pub name: String,
    /// The process server's address handed to agents at registration.
    pub agent_url: String,
    /// The appliance's clock, milliseconds since the Unix epoch (certificates fail when
    /// clocks disagree: the wizard compares it with the browser's).
    pub server_unix_ms: u64,
    /// The sha256 fingerprint of the active CA, which agents pin at registration.
    pub ca_fingerprint: String,
    /// The setup wizard's next step.
    pub wizard_step: crate::WizardStep,
}

/// `GET /api/v1/appliance/certificate`: the certificate the configuration server (443)
/// presents to browsers and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpsCertificate {
    /// `appliance-ca` (issued by the appliance's CA at start) or `uploaded`.
    pub source: String,
    /// The leaf's sha256 fingerprint.
    pub fingerprint: String,
    /// The DNS names and addresses it is for.
    pub names: Vec<String>,
    /// When it expires, milliseconds since the Unix epoch.
    pub not_after_unix_ms: u64,
}

/// `PUT /api/v1/appliance/certificate`: a certificate for 443 from the site's own CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpload {
    /// The chain, leaf first, PEM.
    pub certificate_pem: String,
    /// The leaf's private key, PEM (PKCS#8, PKCS#1 or SEC1). Kept 0600, never shown.
    pub key_pem: String,
}

/// `PUT /api/v1/appliance`: the appliance's name and the address agents send to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplianceIdentity {
    /// 1 to 64 characters, no control characters.
    pub name: String,
    /// `https://host:port` (no path, query or user): where agents reach the process
    /// server. Agents registered before keep the address they were given.
    pub agent_url: String,
}

impl ApplianceIdentity {
    /// Checks both fields; the error names the field and what is expected.
    pub fn check(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err("name: 1 to 64 characters, no control characters".into());
        }
        check_https_url(&self.agent_url).map_err(|e| format!("agent_url: {e}"))
    }
}

/// Checks an `https://host[:port]` address with nothing after the authority, parsed as the
/// agent's HTTP client parses it (`http::Uri`), with host names held to DNS label rules.
pub fn check_https_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must start with https://"));
    }
    let authority = uri.authority().filter(|a| !a.host().is_empty());
    let Some(authority) = authority else { return Err(format!("{url:?} names no host")) };
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some()
    {
        return Err(format!("{url:?} must be https://host or https://host:port, nothing after"));
    }
    // `port_u16` is `None` both for no port and for one past 65535: read the text.
    if let Some((_, port)) = authority.as_str().rsplit_once(':').filter(|(_, p)| !p.ends_with(']'))
        && !port.parse::<u16>().is_ok_and(|n| n > 0)
    {
        return Err(format!("{url:?}: the port must be 1 to 65535"));
    }
    let host = authority.host();
    let ok_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    if !ok_host {
        return Err(format!("{url:?}: {host:?} is not a host name or IP address"));
    }
    Ok(())
}

/// `PUT /api/v1/wizard`: the setup wizard reached a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WizardProgress {
    /// The step to resume at.
    pub step: crate::WizardStep,
}

/// One sample of a machine's history (`GET /api/v1/machines/{id}/history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistorySample {
    /// When it was taken, milliseconds since the Unix epoch (the end of its span).
    pub unix_ms: u64,
    /// The seconds it covers: the sampling interval, or 3600 for samples older than 7
    /// days (merged per hour).
    pub span_secs: u64,
    /// The age of the newest recovery point then (the achieved RPO; for a merged sample
    /// the worst of its hour); absent before the first point.
    pub rpo_secs: Option<u64>,
    /// Bytes the process server received from the machine during the span (what changed
    /// on its disks, as sent).
    pub received_bytes: u64,
    /// Batches received and not yet applied at the target (merged: the worst).
    pub backlog_batches: u64,
}

/// `GET /api/v1/machines/{id}/history`: the samples of the last `hours`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineHistory {
    /// How often the appliance samples, in seconds.
    pub sample_secs: u64,
    /// Oldest first.
    pub samples: Vec<HistorySample>,
}

/// `POST /api/v1/plugins/{name}/health`: what a target plugin said when tested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginHealth {
    /// The plugin.
    pub plugin: String,
    /// `init` and `health` both succeeded.
    pub ok: bool,
    /// The plugin's own words: what `health` reported, or which call failed and its error.
    pub message: String,
    /// How long the test took.
    pub seconds: f64,
}

/// One file the appliance serves at `/downloads/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadFile {
    /// Its name: `GET /downloads/<name>`.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// `GET /api/v1/downloads`: the agent packages the appliance serves and the one-line
/// command that installs the agent on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Downloads {
    /// Whether the appliance serves packages (`config_server.downloads` is set).
    pub enabled: bool,
    /// The files, by name.
    pub files: Vec<DownloadFile>,
    /// SHA-256 of `GET /downloads/install.sh` (it names the active CA's fingerprint and the
    /// package's digest).
    pub installer_sha256: String,
    /// Run as a user with sudo on the machine to protect: downloads the installer from the
    /// given origin, checks its SHA-256, and installs and registers the agent (it asks for
    /// a registration passphrase unless `LIFEBOAT_PASSPHRASE` is set after `sudo`). Empty
    /// when no Debian package is served.
    pub install_command: String,
}

/// `POST /api/v1/machines/install`: install the agent on a machine over SSH.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// Host name or address the appliance reaches the machine's SSH server at.
    pub host: String,
    /// SSH port (22).
    #[serde(default)]
    pub port: Option<u16>,
    /// The user to log in as: root, or one who may sudo.
    pub user: String,
    /// Password (also given to sudo). Give it or `private_key`, or neither to use the
    /// credentials kept for this host.
    #[serde(default)]
    pub password: Option<String>,
    /// An OpenSSH private key (the text of the file).
    #[serde(default)]
    pub private_key: Option<String>,
    /// The private key's passphrase.
    #[serde(default)]
    pub key_passphrase: Option<String>,
    /// The host key's SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen -lf` prints it), as
    /// confirmed by the administrator. Without it the job stops after connecting and names
    /// the key the host presents.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Disks to protect (absolute paths); empty: every whole disk of the machine.
    #[serde(default)]
    pub disks: Vec<String>,
    /// `https://HOST[:PORT]` the machine reaches this appliance's 443 at (default: the
    /// address of this request).
    #[serde(default)]
    pub appliance_url: Option<String>,
    /// Keep the credentials (sealed with the appliance's data key) for later installs to
    /// this host. Default: they are forgotten when the job ends.
    #[serde(default)]
    pub keep_credentials: bool,
}

impl std::fmt::Debug for InstallRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallRequest")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("host_key", &self.host_key)
            .field("disks", &self.disks)
            .finish_non_exhaustive()
    }
}

/// A push install's result (the job's `result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReport {
    /// The host key the machine presented.
    pub host_key: Option<String>,
    /// Its distribution.
    pub os: Option<String>,
    /// The machine id its agent registered as.
    pub machine_id: Option<String>,
    /// Whether the agent runs now (else it starts at the machine's next boot).
    pub running: bool,
    /// Every step, in order.
    pub steps: Vec<String>,
}
