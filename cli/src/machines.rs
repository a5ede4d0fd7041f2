//! Protected machines: the list, their points, revocation, the VM a failover makes;
//! registration passphrases and the appliance's plugins.

use http::Method;
use lifeboat_api as api;

use crate::client::{Failure, Output, Session, fail};
use crate::{Cli, InstallArgs, PassphraseCmd};

/// `lifeboat machines`.
pub fn machines(cli: &Cli) -> Result<Output, Failure> {
    let v: api::MachineList = Session::load(cli)?.get("/api/v1/machines")?;
    let mut t = String::new();
    for m in &v.machines {
        let disks: Vec<String> =
            m.disks.iter().map(|d| format!("{}:{} B", d.index, d.size)).collect();
        let last = match &m.last_point {
            Some(p) => format!(
                "point {} ({}), RPO {} s",
                p.point,
                p.kind,
                m.rpo_secs.map_or_else(|| "?".into(), |s| s.to_string())
            ),
            None => "no point yet".into(),
        };
        t.push_str(&format!(
            "{}  {}  {}  disks {}  {last}\n",
            m.id,
            m.hostname,
            m.state,
            disks.join(", ")
        ));
    }
    Ok(Output::new(&v, t.trim_end()))
}

/// `lifeboat points MACHINE`.
pub fn points(cli: &Cli, machine: &str) -> Result<Output, Failure> {
    let v: api::PointList =
        Session::load(cli)?.get(&format!("/api/v1/machines/{machine}/points"))?;
    let t = v
        .points
        .iter()
        .map(|p| format!("{}  {}  {}", p.point, p.kind, p.id))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output::new(&v, t))
}

/// `lifeboat revoke MACHINE`.
pub fn revoke(cli: &Cli, machine: &str) -> Result<Output, Failure> {
    let v: api::Revoked =
        Session::load(cli)?.ask(Method::POST, &format!("/api/v1/machines/{machine}/revoke"))?;
    Ok(Output::new(&v, format!("machine {machine} revoked")))
}

/// The options of `lifeboat vm-spec`.
pub struct VmSpecArgs<'a> {
    pub machine: &'a str,
    pub firmware: &'a Option<String>,
    pub cpus: &'a Option<u32>,
    pub memory_mib: &'a Option<u64>,
    pub boot_disk: &'a Option<u32>,
    pub nics: &'a [String],
}

/// `lifeboat vm-spec MACHINE [options]`: shows the VM a failover makes; with options, sets
/// it (they replace the earlier settings as a whole: PUT).
pub fn vm_spec(cli: &Cli, a: VmSpecArgs<'_>) -> Result<Output, Failure> {
    let path = format!("/api/v1/machines/{}/vm-spec", a.machine);
    let change = a.firmware.is_some()
        || a.cpus.is_some()
        || a.memory_mib.is_some()
        || a.boot_disk.is_some()
        || !a.nics.is_empty();
    let s = Session::load(cli)?;
    let v: api::VmSpecInfo = if change {
        let nics = if a.nics.is_empty() {
            None
        } else {
            Some(a.nics.iter().map(|n| parse_nic(n)).collect::<Result<Vec<_>, _>>()?)
        };
        let body = api::VmSpecSettings {
            firmware: a.firmware.clone(),
            cpus: *a.cpus,
            memory_mib: *a.memory_mib,
            boot_disk: *a.boot_disk,
            nics,
        };
        s.send(Method::PUT, &path, &body)?
    } else {
        s.get(&path)?
    };
    let nics = v
        .nics
        .iter()
        .map(|n| {
            format!(
                "  {} -> {}  mac {}  ip {}",
                n.source,
                n.network,
                n.mac.as_deref().unwrap_or("(target's)"),
                n.ip.as_deref().unwrap_or("(as on the source)")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let disks = serde_json::to_string(&v.disks)
        .map_err(|e| fail(1, format!("cannot write the disks as JSON: {e}")))?;
    let t = format!(
        "{}, {} CPUs, {} MiB, disks {disks} (boot first)\n{nics}",
        v.firmware, v.cpus, v.memory_mib,
    );
    Ok(Output::new(&v, t))
}

/// `SOURCE=NETWORK[,ip=CIDR][,mac=MAC]` as a network mapping.
fn parse_nic(s: &str) -> Result<api::NicMapping, Failure> {
    let bad = |why: &str| {
        fail(2, format!("--nic {s:?}: {why}; expected SOURCE=NETWORK[,ip=CIDR][,mac=MAC]"))
    };
    let mut parts = s.split(',');
    let (source, network) =
        parts.next().and_then(|p| p.split_once('=')).ok_or_else(|| bad("no SOURCE=NETWORK"))?;
    let mut nic = api::NicMapping {
        source: source.to_owned(),
        network: network.to_owned(),
        mac: None,
        ip: None,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("ip", ip)) => nic.ip = Some(ip.to_owned()),
            Some(("mac", mac)) => nic.mac = Some(mac.to_owned()),
            _ => return Err(bad(&format!("{p:?} is not ip=… or mac=…"))),
        }
    }
    Ok(nic)
}

/// `lifeboat passphrase status|rotate`.
pub fn passphrase(cli: &Cli, cmd: &PassphraseCmd) -> Result<Output, Failure> {
    let s = Session::load(cli)?;
    Ok(match cmd {
        PassphraseCmd::Status => {
            let v: api::PassphraseStatus = s.get("/api/v1/passphrases")?;
            Output::new(&v, format!("{} unused registration passphrase(s)", v.unused))
        }
        PassphraseCmd::Rotate => {
            let v: api::NewPassphrase = s.ask(Method::POST, "/api/v1/passphrases")?;
            Output::new(&v, v.passphrase.clone())
        }
    })
}

/// `lifeboat appliance`.
pub fn appliance(
    cli: &Cli,
    name: Option<&str>,
    agent_url: Option<&str>,
) -> Result<Output, Failure> {
    let s = Session::load(cli)?;
    let mut v: api::ApplianceInfo = s.get("/api/v1/appliance")?;
    if name.is_some() || agent_url.is_some() {
        let body = api::ApplianceIdentity {
            name: name.map_or_else(|| v.name.clone(), str::to_owned),
            agent_url: agent_url.map_or_else(|| v.agent_url.clone(), str::to_owned),
        };
        if let Err(e) = body.check() {
            return Err(fail(2, e));
        }
        v = s.send(Method::PUT, "/api/v1/appliance", &body)?;
    }
    let t = format!(
        "name: {}
agent data to: {}
CA fingerprint: {}",
        v.name, v.agent_url, v.ca_fingerprint
    );
    Ok(Output::new(&v, t))
}

/// `lifeboat machines install`.
pub fn install(cli: &Cli, a: &InstallArgs) -> Result<Output, Failure> {
    use std::io::IsTerminal as _;
    let s = Session::load(cli)?;
    let Some((user, host)) = a.ssh.split_once('@') else {
        return Err(fail(2, format!("--ssh: {:?} is not USER@HOST", a.ssh)));
    };
    let (password, private_key) = match (&a.key, a.password_stdin) {
        (Some(k), _) => {
            let pem = std::fs::read_to_string(k)
                .map_err(|e| fail(2, format!("--key {}: {e}", k.display())))?;
            (None, Some(pem))
        }
        (None, true) => (Some(crate::client::stdin_line("password")?), None),
        (None, false) => (None, None),
    };
    let mut body = api::InstallRequest {
        host: host.to_owned(),
        port: Some(a.port),
        user: user.to_owned(),
        password,
        private_key,
        key_passphrase: std::env::var("LIFEBOAT_SSH_KEY_PASSPHRASE").ok(),
        host_key: a.host_key.clone(),
        disks: a.disks.clone(),
        appliance_url: a
            .appliance_url
            .clone()
            .or_else(|| Some(s.file.url.trim_end_matches('/').to_owned())),
        keep_credentials: a.keep_credentials,
    };
    loop {
        match s.job("/api/v1/machines/install", Some(&body), true, cli.json) {
            Ok(job) => {
                let report: Option<api::InstallReport> = crate::client::job_result(&job);
                let text = match &report {
                    Some(r) => format!(
                        "{}
machine {} on {} ({})",
                        r.steps.join("\n"),
                        r.machine_id.as_deref().unwrap_or("?"),
                        host,
                        r.os.as_deref().unwrap_or("?")
                    ),
                    None => job.message.clone(),
                };
                return Ok(Output::new(&job, text));
            }
            Err(f) if body.host_key.is_none() && f.message.contains("host_key_unconfirmed") => {
                let presented = f
                    .message
                    .split("presents the host key ")
                    .nth(1)
                    .and_then(|r| r.split(';').next())
                    .map(str::to_owned);
                let Some(key) = presented else { return Err(f) };
                if !std::io::stdin().is_terminal() {
                    return Err(fail(
                        1,
                        format!(
                            "host_key_unconfirmed: {host} presents the host key {key}; check it on the machine (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and run again with --host-key {key}"
                        ),
                    ));
                }
                eprint!(
                    "{host} presents the host key {key}. Is that the machine's key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub there)? [y/N] "
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).map_err(|e| fail(1, e.to_string()))?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(fail(1, "host key not confirmed: nothing was sent"));
                }
                body.host_key = Some(key);
            }
            Err(f) => return Err(f),
        }
    }
}

/// `lifeboat install-command`.
pub fn install_command(
    cli: &Cli,
    origin: Option<&str>,
    with_passphrase: bool,
) -> Result<Output, Failure> {
    let s = Session::load(cli)?;
    let origin =
        origin.map(str::to_owned).unwrap_or_else(|| s.file.url.trim_end_matches('/').to_owned());
    let query: String = origin
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let mut v: api::Downloads = s.get(&format!("/api/v1/downloads?origin={query}"))?;
    if v.install_command.is_empty() {
        return Err(fail(
            1,
            "the appliance serves no agent package: set config_server.downloads to the folder `cargo xtask package` fills",
        ));
    }
    if with_passphrase {
        let p: api::NewPassphrase = s.ask(Method::POST, "/api/v1/passphrases")?;
        v.install_command = v.install_command.replacen(
            " sudo ",
            &format!(" sudo LIFEBOAT_PASSPHRASE='{}' ", p.passphrase),
            1,
        );
    }
    Ok(Output::new(&v, v.install_command.clone()))
}

/// `lifeboat plugins`.
pub fn plugins(cli: &Cli) -> Result<Output, Failure> {
    let v: api::PluginList = Session::load(cli)?.get("/api/v1/plugins")?;
    let t = v
        .plugins
        .iter()
        .map(|p| match &p.message {
            Some(m) => format!("refused: {m}"),
            None => {
                let mut line = format!("{}  {}  {}  {}", p.name, p.kind, p.version, p.trust);
                for s in &p.settings {
                    let value = match (&s.value, s.secret, s.configured) {
                        (Some(v), _, _) => v.clone(),
                        (None, true, true) => "(secret, set)".into(),
                        _ => "(not set)".into(),
                    };
                    line.push_str(&format!("\n    {} = {value}", s.name));
                }
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output::new(&v, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_mappings_parse() {
        let v = parse_nic("eth0=dr-lan,ip=192.0.2.7/24,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(v.source, "eth0");
        assert_eq!(v.network, "dr-lan");
        assert_eq!(v.ip.as_deref(), Some("192.0.2.7/24"));
        assert_eq!(v.mac.as_deref(), Some("52:54:00:00:00:01"));
        let v = parse_nic("eth1=dr").unwrap();
        assert_eq!((v.ip, v.mac), (None, None));
        assert!(parse_nic("eth0").is_err());
        assert!(parse_nic("eth0=dr,gw=1").is_err());
    }
}
