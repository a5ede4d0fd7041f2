//! Push install (as Azure Site Recovery pushes its mobility service): the appliance connects
//! to a machine over SSH, checks its host key, finds out whether it can become root, which
//! distribution it runs and whether systemd runs it, copies the agent's package, installs it
//! with a fresh one-time registration passphrase (the package's postinst registers), and
//! checks that the machine is registered. Each step is reported as it happens.
//!
//! The host key is never trusted on first use: without the fingerprint the administrator
//! confirmed, the connection stops after the key exchange and the error names the key the
//! host presented, for the administrator to check and give.

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, decode_secret_key};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to log in.
#[derive(Clone)]
pub struct Credentials {
    /// The user (root, or one who may sudo).
    pub user: String,
    /// Password (also given to sudo when the user is not root).
    pub password: Option<String>,
    /// An OpenSSH private key (PEM), and its passphrase.
    pub private_key: Option<String>,
    /// The private key's passphrase.
    pub key_passphrase: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("private_key", &self.private_key.as_ref().map(|_| "…"))
            .finish()
    }
}

/// One push install.
#[derive(Debug, Clone)]
pub struct PushJob {
    /// Host name or address.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// How to log in.
    pub credentials: Credentials,
    /// The host key's fingerprint (`SHA256:…`) the administrator confirmed.
    pub host_key: Option<String>,
    /// Disks to protect (absolute paths); empty: every whole disk.
    pub disks: Vec<String>,
    /// The configuration server's address as the machine reaches it.
    pub appliance_url: String,
    /// The appliance CA's fingerprint the agent pins.
    pub ca_fingerprint: String,
    /// A fresh one-time registration passphrase.
    pub passphrase: String,
    /// The agent's Debian package: its name, bytes and SHA-256.
    pub package: (String, bytes::Bytes, String),
}

/// What a push install did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PushReport {
    /// The host key the host presented (`SHA256:…`).
    pub host_key: Option<String>,
    /// The distribution (`PRETTY_NAME` of os-release).
    pub os: Option<String>,
    /// The machine id the agent registered as.
    pub machine_id: Option<String>,
    /// Whether the agent runs now (systemd running), else it starts at boot.
    pub running: bool,
    /// Every step, in order.
    pub steps: Vec<String>,
}

/// Why a push install stopped. The first word of each message is a stable code.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The host cannot be reached.
    #[error("unreachable: cannot connect to {0}")]
    Unreachable(String),
    /// No fingerprint was confirmed for this host.
    #[error(
        "host_key_unconfirmed: {host} presents the host key {presented}; check it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and give it as host_key to go on; nothing was sent"
    )]
    HostKeyUnconfirmed {
        /// `host:port`.
        host: String,
        /// The fingerprint it presented.
        presented: String,
    },
    /// The host presented another key than the one confirmed.
    #[error(
        "host_key_mismatch: {host} presents the host key {presented}, not {expected}: another machine, a reinstalled one or a man in the middle; nothing was sent"
    )]
    HostKeyMismatch {
        /// `host:port`.
        host: String,
        /// The fingerprint confirmed.
        expected: String,
        /// The fingerprint it presented.
        presented: String,
    },
    /// Authentication failed.
    #[error("wrong_credentials: {0}")]
    WrongCredentials(String),
    /// The user is not root and may not sudo.
    #[error("no_root: {0}")]
    NoRoot(String),
    /// Not a distribution the appliance has a package for.
    #[error("unsupported_distribution: {0}")]
    Unsupported(String),
    /// systemd is not there.
    #[error(
        "no_systemd: {0} has no systemd (the package runs the agent as a systemd service); install the agent by hand (docs/agent.md)"
    )]
    NoSystemd(String),
    /// A disk given is not on the machine, or the machine has none.
    #[error("disk_not_found: {0}")]
    DiskNotFound(String),
    /// Anything else, with the remote side's words.
    #[error("failed: {0}")]
    Failed(String),
}

struct Checker {
    expected: Option<String>,
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // Host certificates are not used: the administrator confirms a key.
            return Ok(false);
        };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let ok = self.expected.as_deref() == Some(fp.as_str());
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
        Ok(ok)
    }
}

/// A string as one single-quoted shell word.
pub fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `fp` looks like an OpenSSH SHA-256 fingerprint (`SHA256:` and 43 base64 characters).
pub fn valid_fingerprint(fp: &str) -> bool {
    fp.strip_prefix("SHA256:").is_some_and(|b| {
        b.len() == 43 && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}

struct Remote {
    handle: client::Handle<Checker>,
    /// How commands become root: `` (root), `sudo -n ` or `sudo -S -p '' ` (password on stdin).
    sudo: String,
    sudo_password: Option<String>,
}

/// A command's outcome: exit code, standard output, and both outputs as they came (for
/// error messages).
struct Ran {
    code: u32,
    out: String,
    all: String,
}

impl Remote {
    async fn run_with(&self, command: &str, stdin: &[u8]) -> Result<Ran, PushError> {
        let failed = |e: russh::Error| PushError::Failed(format!("ssh: {e}"));
        let mut ch = self.handle.channel_open_session().await.map_err(failed)?;
        ch.exec(true, command).await.map_err(failed)?;
        if !stdin.is_empty() {
            ch.data(stdin).await.map_err(failed)?;
        }
        ch.eof().await.map_err(failed)?;
        let (mut out, mut all) = (Vec::new(), Vec::new());
        let mut code = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => {
                    out.extend_from_slice(&data);
                    all.extend_from_slice(&data);
                }
                // Standard error (sudo's lecture, apt's notes): for messages only.
                russh::ChannelMsg::ExtendedData { data, .. } => all.extend_from_slice(&data),
                russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                _ => {}
            }
        }
        Ok(Ran {
            code: code.unwrap_or(255),
            out: String::from_utf8_lossy(&out).into_owned(),
            all: String::from_utf8_lossy(&all).into_owned(),
        })
    }

    async fn run(&self, command: &str) -> Result<Ran, PushError> {
        self.run_with(command, b"").await
    }

    /// `command` as root (through sudo when needed; sudo's password first on stdin).
    async fn root(&self, command: &str) -> Result<Ran, PushError> {
        let full = format!("{}sh -c {}", self.sudo, sq(command));
        match &self.sudo_password {
            Some(p) => self.run_with(&full, format!("{p}\n").as_bytes()).await,
            None => self.run(&full).await,
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Runs a push install, calling `progress(fraction, step)` at each step.
pub async fn install(
    job: &PushJob,
    mut progress: impl FnMut(f64, &str),
) -> Result<PushReport, PushError> {
    let mut report = PushReport {
        host_key: None,
        os: None,
        machine_id: None,
        running: false,
        steps: Vec::new(),
    };
    let mut step = |report: &mut PushReport, f: f64, s: String| {
        progress(f, &s);
        report.steps.push(s);
    };
    let target = format!("{}:{}", job.host, job.port);
    step(&mut report, 0.05, format!("connecting to {target}"));
    let presented = Arc::new(Mutex::new(None));
    let checker = Checker { expected: job.host_key.clone(), presented: presented.clone() };
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    let connected = tokio::time::timeout(
        Duration::from_secs(20),
        client::connect(config, (job.host.as_str(), job.port), checker),
    )
    .await;
    let seen = || presented.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut handle = match connected {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return Err(match (seen(), &job.host_key) {
                (Some(p), None) => PushError::HostKeyUnconfirmed { host: target, presented: p },
                (Some(p), Some(x)) if &p != x => {
                    PushError::HostKeyMismatch { host: target, expected: x.clone(), presented: p }
                }
                _ => PushError::Unreachable(format!("{target} ({e})")),
            });
        }
        Err(_) => return Err(PushError::Unreachable(format!("{target} (no answer in 20 s)"))),
    };
    report.host_key = seen();
    let key = report.host_key.clone().unwrap_or_default();
    step(&mut report, 0.1, format!("host key {key} is the one confirmed"));

    // Log in.
    let c = &job.credentials;
    let user = c.user.clone();
    let auth = if let Some(pem) = &c.private_key {
        let key = decode_secret_key(pem, c.key_passphrase.as_deref()).map_err(|e| {
            PushError::WrongCredentials(format!("the private key cannot be read: {e}"))
        })?;
        let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        handle.authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await
    } else if let Some(p) = &c.password {
        handle.authenticate_password(&user, p).await
    } else {
        return Err(PushError::WrongCredentials("no password and no private key given".into()));
    };
    match auth {
        Ok(r) if r.success() => {}
        Ok(_) => {
            return Err(PushError::WrongCredentials(format!(
                "{user}@{target} refused the {}",
                if c.private_key.is_some() { "key" } else { "password" }
            )));
        }
        Err(e) => return Err(PushError::Failed(format!("ssh authentication: {e}"))),
    }
    step(&mut report, 0.15, format!("logged in as {user}"));
    let mut remote = Remote { handle, sudo: String::new(), sudo_password: None };

    // Root, or sudo.
    let uid = remote.run("id -u").await?;
    if uid.out.trim() != "0" {
        let no_root =
            || PushError::NoRoot(format!("{user} is not root and may not use sudo on {target}"));
        if remote.run("command -v sudo").await?.code != 0 {
            return Err(no_root());
        }
        if remote.run("sudo -n true").await?.code == 0 {
            remote.sudo = "sudo -n ".into();
        } else if let Some(p) = &c.password {
            let r = remote.run_with("sudo -S -p '' true", format!("{p}\n").as_bytes()).await?;
            if r.code != 0 {
                return Err(no_root());
            }
            remote.sudo = "sudo -S -p '' ".into();
            remote.sudo_password = Some(p.clone());
        } else {
            return Err(no_root());
        }
        step(&mut report, 0.2, format!("{user} becomes root with sudo"));
    } else {
        step(&mut report, 0.2, "logged in as root".into());
    }

    // Distribution, architecture, package manager, systemd.
    let os = remote.run("cat /etc/os-release 2>/dev/null; echo; uname -m").await?.out;
    let field = |k: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let pretty = field("PRETTY_NAME").unwrap_or_else(|| "an unknown system".into());
    report.os = Some(pretty.clone());
    let arch = os.lines().last().unwrap_or("").trim().to_owned();
    if arch != "x86_64" {
        return Err(PushError::Unsupported(format!(
            "{pretty} on {arch}: the appliance has a package for x86_64 only"
        )));
    }
    let family =
        format!("{} {}", field("ID").unwrap_or_default(), field("ID_LIKE").unwrap_or_default());
    let debian_like = family.split_whitespace().any(|w| w == "debian" || w == "ubuntu");
    if !debian_like || remote.run("command -v dpkg").await?.code != 0 {
        return Err(PushError::Unsupported(format!(
            "{pretty}: the appliance has a Debian package only (Debian, Ubuntu and their derivatives with dpkg)"
        )));
    }
    let systemd_running = remote.run("test -d /run/systemd/system").await?.code == 0;
    if !systemd_running && remote.run("command -v systemctl").await?.code != 0 {
        return Err(PushError::NoSystemd(pretty));
    }
    step(
        &mut report,
        0.3,
        format!(
            "{pretty} ({arch}), dpkg, systemd {}",
            if systemd_running { "running" } else { "installed" }
        ),
    );

    // Disks.
    if job.disks.is_empty() {
        let found = remote
            .run("lsblk -dnpo NAME,TYPE 2>/dev/null | awk '$2 == \"disk\" { print $1 }'")
            .await?;
        if found.out.trim().is_empty() {
            return Err(PushError::DiskNotFound(format!("{target} lists no whole disk (lsblk)")));
        }
        step(
            &mut report,
            0.35,
            format!("disks: {}", found.out.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    } else {
        for d in &job.disks {
            let r = remote.root(&format!("test -b {0} || test -f {0}", sq(d))).await?;
            if r.code != 0 {
                return Err(PushError::DiskNotFound(format!(
                    "{d} is not on {target} (neither a block device nor a file)"
                )));
            }
        }
        step(&mut report, 0.35, format!("disks: {}", job.disks.join(" ")));
    }

    // Copy the package, check it.
    let (name, bytes, sha) = &job.package;
    let dir = remote.run("mktemp -d /tmp/lifeboat-install.XXXXXX").await?;
    let dir = dir.out.trim().to_owned();
    if dir.is_empty() || !dir.starts_with("/tmp/lifeboat-install.") {
        return Err(PushError::Failed(format!("mktemp on {target}: {}", tail(&dir))));
    }
    let deb = format!("{dir}/{name}");
    let r = remote.run_with(&format!("cat > {}", sq(&deb)), bytes).await?;
    if r.code != 0 {
        return Err(PushError::Failed(format!("copying {name}: {}", tail(&r.all))));
    }
    let r = remote.run(&format!("sha256sum {}", sq(&deb))).await?;
    if r.out.split_whitespace().next() != Some(sha.as_str()) {
        let _ = remote.run(&format!("rm -rf {}", sq(&dir))).await;
        return Err(PushError::Failed(format!(
            "{name} arrived altered (SHA-256 {})",
            tail(&r.all)
        )));
    }
    step(&mut report, 0.5, format!("copied {name} ({} KiB), SHA-256 checked", bytes.len() / 1024));

    // Install: the passphrase goes through a file only the user reads, never a command line.
    let mut env = format!(
        "LIFEBOAT_APPLIANCE={}\nLIFEBOAT_FINGERPRINT={}\nLIFEBOAT_PASSPHRASE={}\n",
        sq(&job.appliance_url),
        sq(&job.ca_fingerprint),
        sq(&job.passphrase)
    );
    if !job.disks.is_empty() {
        env.push_str(&format!("LIFEBOAT_DISKS={}\n", sq(&job.disks.join(" "))));
    }
    let env_file = format!("{dir}/env");
    let r = remote.run_with(&format!("umask 077; cat > {}", sq(&env_file)), env.as_bytes()).await?;
    if r.code != 0 {
        return Err(PushError::Failed(format!(
            "writing the installer's settings: {}",
            tail(&r.all)
        )));
    }
    let script = format!(
        "set -a; . {env}; rm -f {env}; set +a; export DEBIAN_FRONTEND=noninteractive; \
         if command -v apt-get >/dev/null 2>&1; then apt-get install -y -q {deb}; else dpkg -i {deb}; fi",
        env = sq(&env_file),
        deb = sq(&deb)
    );
    let r = remote.root(&script).await?;
    let _ = remote.run(&format!("rm -rf {}", sq(&dir))).await;
    if r.code != 0 {
        return Err(PushError::Failed(format!("installing {name} failed: {}", tail(&r.all))));
    }
    step(&mut report, 0.8, format!("installed {name}"));

    // Registered? Running?
    let reg = remote.root("cat /var/lib/lifeboat-agent/registration.json").await?;
    let id = serde_json::from_str::<serde_json::Value>(&reg.out)
        .ok()
        .and_then(|v| v["machine_id"].as_str().map(str::to_owned));
    let Some(id) = id else {
        return Err(PushError::Failed(format!(
            "installed, but the agent did not register: {}",
            tail(&r.all)
        )));
    };
    report.machine_id = Some(id.clone());
    step(&mut report, 0.9, format!("registered as machine {id}"));
    if systemd_running {
        let active = remote.root("systemctl is-active lifeboat-agent").await?;
        report.running = active.out.trim() == "active";
        if !report.running {
            return Err(PushError::Failed(format!(
                "registered, but the agent is not running: {}",
                tail(&active.all)
            )));
        }
        step(&mut report, 1.0, "the agent runs (systemd)".into());
    } else {
        step(
            &mut report,
            1.0,
            "enabled; systemd is not running there, so the agent starts at its next boot".into(),
        );
    }
    let _ = remote.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_and_fingerprints() {
        assert_eq!(sq("a b"), "'a b'");
        assert_eq!(sq("it's"), r"'it'\''s'");
        assert_eq!(sq("$(id)`x`"), "'$(id)`x`'");
        assert!(valid_fingerprint("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"));
        for bad in [
            "",
            "SHA256:",
            "MD5:aa",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2;",
        ] {
            assert!(!valid_fingerprint(bad), "{bad}");
        }
        let c = Credentials {
            user: "u".into(),
            password: Some("hunter2".into()),
            private_key: None,
            key_passphrase: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"), "credentials are not logged");
    }
}
