//! `lifeboat`: the administrator's command line. Every command is one call of the
//! configuration server's API (docs/appliance.md, `GET /api/v1/openapi.json`).
//!
//! The session (appliance address, pinned CA fingerprint, token) is kept in
//! `$XDG_CONFIG_HOME/lifeboat/session.json` (or `~/.config/…`, or `--session`), mode 0600.
//! The password is read from `LIFEBOAT_PASSWORD` or, failing that, from the first line of
//! standard input: never from the command line, where other users could see it.
//!
//! Exit codes, for scripts: 0 done; 1 anything else (network, server error); 2 bad input
//! (usage, or the API answered 400); 3 not logged in or wrong credentials (401); 4 not found
//! (404); 5 conflict (409); 6 rate-limited (429).

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use lifeboat_net::tls::{self, Trust};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "lifeboat", version, about = "Administer a Lifeboat appliance through its API.")]
struct Cli {
    /// Where the session is kept.
    #[arg(long, global = true, env = "LIFEBOAT_SESSION")]
    session: Option<PathBuf>,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// First-run setup: creates the first administrator and logs in.
    Setup(Connect),
    /// Logs in and keeps the session.
    Login(Connect),
    /// Ends the session.
    Logout,
    /// Who is logged in, until when.
    Whoami,
    /// Protected machines with their disks and newest point.
    Machines,
    /// A machine's recovery points.
    Points {
        /// Machine id (from `lifeboat machines`).
        machine: String,
    },
    /// Revokes a machine: its agent is refused from its next request on.
    Revoke {
        /// Machine id.
        machine: String,
    },
    /// Starts a test failover of a machine (an isolated copy at a point) and waits for it.
    TestFailover {
        /// Machine id.
        machine: String,
        /// `latest` (default: process what was received, then the newest point),
        /// `latest-processed`, `latest-app`, `latest-group`, or a point id.
        #[arg(long)]
        point: Option<String>,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Fails a machine over (its source is taken to be lost) and waits for the VM. Again,
    /// before commit, to use another point.
    Failover {
        /// Machine id.
        machine: String,
        /// `latest` (default: process what was received, then the newest point),
        /// `latest-processed`, `latest-app`, `latest-group`, or a point id.
        #[arg(long)]
        point: Option<String>,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Commits a failed-over machine: its recovery points are deleted, the VM stays.
    Commit {
        /// Machine id.
        machine: String,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Reprotects a committed failover: the original machine's disks are brought to the
    /// failed-over ones (run `lifeboat-agent reprotect` there); waits for the first pass.
    Reprotect {
        /// Machine id.
        machine: String,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Fails a reprotected machine back: stops the failed-over VM, waits for the agent's
    /// final pass, and replicates forward again.
    Failback {
        /// Machine id.
        machine: String,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Failovers and their states.
    Failovers,
    /// Alerts that hold now (RPO, silent agents, cache, CPU, memory, plugins).
    Alerts,
    /// The appliance's plugins, loaded and refused.
    Plugins,
    /// Consistency groups and their points.
    Groups,
    /// Defines or deletes a consistency group (the appliance owns membership: agents take
    /// part only in the group defined here).
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Recovery plans: list, set from a JSON file, delete, run, continue a manual step.
    Plan {
        #[command(subcommand)]
        cmd: PlanCmd,
    },
    /// Replication policies: list, set, delete, assign to a machine.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// The VM a failover of a machine makes; with options, sets it (the options replace
    /// the earlier settings as a whole; what is not given comes from the agent's detection).
    VmSpec {
        /// Machine id.
        machine: String,
        /// `bios` or `uefi`.
        #[arg(long)]
        firmware: Option<String>,
        /// Virtual CPUs.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// The disk index to boot from.
        #[arg(long)]
        boot_disk: Option<u32>,
        /// Network mapping, one per interface: `SOURCE=NETWORK[,ip=CIDR][,mac=MAC]`
        /// (replaces the whole mapping).
        #[arg(long = "nic")]
        nics: Vec<String>,
    },
    /// Removes a test failover's VM and disks and waits for it.
    Cleanup {
        /// Test failover id (from `lifeboat test-failovers`).
        id: String,
    },
    /// Test failovers, cleaned up or not.
    TestFailovers,
    /// Jobs, newest first, or one of them.
    Jobs {
        /// Job number.
        id: Option<u64>,
    },
    /// Registration passphrases.
    Passphrase {
        #[command(subcommand)]
        cmd: PassphraseCmd,
    },
    /// The appliance's certificate authorities: status, and rotation without registering
    /// agents again (steady → introducing → retiring → steady).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// The recovery passphrase the catalogue at the target is sealed under.
    RecoveryPassphrase {
        #[command(subcommand)]
        cmd: RecoveryCmd,
    },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PassphraseCmd {
    /// How many passphrases are unused.
    Status,
    /// Makes a new one-time passphrase; the unused ones stop working.
    Rotate,
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Creates or replaces a group: its members cut points together, the coordinator runs
    /// the rounds (its agent's `[group]` table says `coordinator = true`).
    Set {
        /// Group name (the `[group] name` of the members' agents).
        name: String,
        /// The coordinating member's machine id.
        #[arg(long)]
        coordinator: String,
        /// A member's machine id (repeat; the coordinator may be listed or not).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Deletes a group: its members cut no more group points.
    Delete {
        /// Group name.
        name: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Every policy with the machines that use it.
    List,
    /// Creates or replaces a policy (what is not given takes its default).
    Set {
        /// Policy name (`default` is what machines use until given another).
        name: String,
        /// RPO warning threshold, e.g. 15m.
        #[arg(long)]
        rpo_warning: Option<String>,
        /// RPO critical threshold, e.g. 30m.
        #[arg(long)]
        rpo_critical: Option<String>,
        /// Alert once an agent is silent this long, e.g. 15m.
        #[arg(long)]
        silent: Option<String>,
        /// Interval between crash-consistent points (the agents' cycle), e.g. 5m.
        #[arg(long)]
        crash_interval: Option<String>,
        /// Compression level for the machine's data (zstd: -7 to 22).
        #[arg(long, allow_hyphen_values = true)]
        compression_level: Option<i32>,
        /// Interval between app-consistent points (agents with quiescers), e.g. 1h; 0 = every cut.
        #[arg(long)]
        app_interval: Option<String>,
        /// Network cap of the machines' agents in megabits per second (windows by time of
        /// day: PUT /api/v1/policies/{name} with `bandwidth.schedule`).
        #[arg(long)]
        bandwidth_mbps: Option<f64>,
        /// `on` (the default) or `off`: whether the machines' data is sealed by the cipher.
        #[arg(long)]
        encryption: Option<String>,
        /// Tiered retention, youngest first: EVERY:FOR pairs, e.g. `0:4h,1h:24h,1d:7d`
        /// (every point for 4 h, hourly for 24 h, daily for 7 days).
        #[arg(long)]
        retention: Option<String>,
    },
    /// Deletes a policy no machine uses.
    Delete {
        /// Policy name.
        name: String,
    },
    /// Gives a machine a policy.
    Assign {
        /// Machine id.
        machine: String,
        /// Policy name.
        policy: String,
    },
}

/// Seconds from `90`, `90s`, `15m`, `4h` or `7d`.
fn parse_secs(s: &str) -> Result<u64, Failure> {
    let bad = || fail(2, format!("{s:?} is not a duration (like 90, 90s, 15m, 4h, 7d)"));
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(mul).ok_or_else(bad)
}

#[derive(Subcommand)]
enum PlanCmd {
    /// Every plan.
    List,
    /// Creates or replaces a plan from a JSON file (`{"groups": [{"machines": [...],
    /// "pre": [{"script": "..."}], "post": [{"plugin": "..."}, {"manual": "..."}]}]}`).
    Set {
        /// Plan name.
        name: String,
        /// The plan as JSON (`-` for standard input).
        file: PathBuf,
    },
    /// Deletes a plan.
    Delete {
        /// Plan name.
        name: String,
    },
    /// Runs a plan (a test failover unless --failover) and waits for it.
    Run {
        /// Plan name.
        name: String,
        /// A real failover instead of a test failover.
        #[arg(long)]
        failover: bool,
        /// The point choice for every machine (default latest).
        #[arg(long)]
        point: Option<String>,
        /// Return once the job started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Confirms the manual step a plan's job waits on.
    Continue {
        /// The plan's job number.
        job: u64,
        /// The step's number (the job's message shows it): refused if the job waits on
        /// another one.
        #[arg(long)]
        step: Option<u32>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// The CAs, the rotation phase, and each machine's certificate.
    Status,
    /// The next rotation step.
    Rotate {
        /// Retire the old CA even though some machines have not renewed (they are refused).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum RecoveryCmd {
    /// Whether one is set, and when the catalogue was last written at the target.
    Status,
    /// Sets it (from LIFEBOAT_RECOVERY_PASSPHRASE or the first line of standard input).
    Set,
}

#[derive(clap::Args)]
struct Connect {
    /// The configuration server, e.g. https://appliance.example:443.
    #[arg(long)]
    url: String,
    /// The appliance CA's fingerprint (`lifeboat-appliance fingerprint`), pinned.
    #[arg(long)]
    fingerprint: String,
    /// Administrator name.
    #[arg(long, default_value = "admin")]
    name: String,
}

/// What is kept between commands.
#[derive(Serialize, Deserialize)]
struct SessionFile {
    url: String,
    fingerprint: String,
    token: String,
    name: String,
    expires_unix_ms: u64,
}

/// A failure with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

fn session_path(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(p) = &cli.session {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| fail(2, "no HOME or XDG_CONFIG_HOME: give --session"))?;
    Ok(base.join("lifeboat/session.json"))
}

fn load_session(cli: &Cli) -> Result<SessionFile, Failure> {
    let p = session_path(cli)?;
    let text = std::fs::read_to_string(&p).map_err(|_| {
        fail(3, format!("not logged in (no {}): run `lifeboat login`", p.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        fail(3, format!("{} is damaged ({e}): run `lifeboat login` again", p.display()))
    })
}

fn password() -> Result<String, Failure> {
    if let Ok(p) = std::env::var("LIFEBOAT_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(2, format!("cannot read the password from standard input: {e}")))?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        return Err(fail(2, "no password: set LIFEBOAT_PASSWORD or give it on standard input"));
    }
    Ok(p)
}

fn client(url: &str, fingerprint: &str) -> Result<lifeboat_net::Client, Failure> {
    let config = tls::client_config(Trust::Fingerprint(fingerprint.to_owned()), None)
        .map_err(|e| fail(2, format!("--fingerprint: {e}")))?;
    lifeboat_net::Client::new(url, config).map_err(|e| fail(2, format!("--url: {e}")))
}

/// One API call; a non-2xx answer becomes the failure with the matching exit code.
fn call(
    c: &lifeboat_net::Client,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Failure> {
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| fail(3, "bad token"))?;
        headers.insert(http::header::AUTHORIZATION, v);
    }
    // One runtime for the whole command: a job's polling reuses its connection.
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = match RT.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(1, e.to_string()))?;
            RT.get_or_init(|| rt)
        }
    };
    let answer = match body {
        Some(b) => {
            let bytes = serde_json::to_vec(&b).expect("JSON values serialise");
            headers
                .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            rt.block_on(c.request(method, path, Bytes::from(bytes), headers))
        }
        None => rt.block_on(c.request(method, path, Bytes::new(), headers)),
    };
    let (status, _, bytes) = answer.map_err(|e| fail(1, e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        return Ok(v);
    }
    let message = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| status.to_string());
    let code = match status {
        StatusCode::BAD_REQUEST => 2,
        StatusCode::UNAUTHORIZED => 3,
        StatusCode::NOT_FOUND => 4,
        StatusCode::CONFLICT => 5,
        StatusCode::TOO_MANY_REQUESTS => 6,
        _ => 1,
    };
    Err(fail(code, message))
}

fn open_session(cli: &Cli, c: &Connect, path: &str) -> Result<serde_json::Value, Failure> {
    let client = client(&c.url, &c.fingerprint)?;
    let v = call(
        &client,
        Method::POST,
        path,
        None,
        Some(serde_json::json!({"name": c.name, "password": password()?})),
    )?;
    let s = SessionFile {
        url: c.url.clone(),
        fingerprint: c.fingerprint.clone(),
        token: v["token"].as_str().unwrap_or_default().to_owned(),
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        expires_unix_ms: v["expires_unix_ms"].as_u64().unwrap_or(0),
    };
    let p = session_path(cli)?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(1, format!("{}: {e}", dir.display())))?;
    }
    let json = serde_json::to_vec_pretty(&s).expect("a plain struct serialises");
    lifeboat_common::fs::write_atomic(&p, &json, Some(0o600))
        .map_err(|e| fail(1, format!("{}: {e}", p.display())))?;
    let mut shown = v.clone();
    if let Some(o) = shown.as_object_mut() {
        o.remove("token");
    }
    Ok(shown)
}

/// Waits for job `job` (JSON from the API) to end, showing its progress on standard error
/// (a progress bar on a terminal, a line per change otherwise; nothing if `quiet`); a
/// failed job is a failure with its message.
fn wait_job(
    c: &lifeboat_net::Client,
    token: &str,
    mut job: serde_json::Value,
    quiet: bool,
) -> Result<serde_json::Value, Failure> {
    use std::io::IsTerminal as _;
    let id = job["id"].as_u64().ok_or_else(|| fail(1, "the appliance answered no job id"))?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(1000);
        b.set_style(
            indicatif::ProgressStyle::with_template("job {prefix} [{bar:30}] {percent:>3}% {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(id.to_string());
        b
    });
    let mut last = String::new();
    loop {
        let progress = job["progress"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
        let message = job["message"].as_str().unwrap_or("").to_owned();
        if let Some(b) = &bar {
            b.set_position((progress * 1000.0) as u64);
            b.set_message(message.clone());
        } else {
            let line = format!("job {id}: {:>3.0} % {message}", progress * 100.0);
            if !quiet && line != last {
                eprintln!("{line}");
                last = line;
            }
        }
        match job["state"].as_str() {
            Some("succeeded") => {
                if let Some(b) = &bar {
                    b.finish_with_message(message);
                }
                return Ok(job);
            }
            Some("failed") => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(fail(1, format!("job {id} failed: {message}")));
            }
            _ => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        job = call(c, Method::GET, &format!("/api/v1/jobs/{id}"), Some(token), None)?;
    }
}

/// `SOURCE=NETWORK[,ip=CIDR][,mac=MAC]` as a network mapping.
fn parse_nic(s: &str) -> Result<serde_json::Value, Failure> {
    let bad = |why: &str| {
        fail(2, format!("--nic {s:?}: {why}; expected SOURCE=NETWORK[,ip=CIDR][,mac=MAC]"))
    };
    let mut parts = s.split(',');
    let (source, network) =
        parts.next().and_then(|p| p.split_once('=')).ok_or_else(|| bad("no SOURCE=NETWORK"))?;
    let mut v = serde_json::json!({"source": source, "network": network});
    for p in parts {
        match p.split_once('=') {
            Some(("ip", ip)) => v["ip"] = ip.into(),
            Some(("mac", mac)) => v["mac"] = mac.into(),
            _ => return Err(bad(&format!("{p:?} is not ip=… or mac=…"))),
        }
    }
    Ok(v)
}

fn failover_text(v: &serde_json::Value, what: &str) -> String {
    match v["result"].as_object() {
        Some(r) => format!(
            "{what}: VM {} at point {}",
            r["vm"].as_str().unwrap_or("?"),
            r["point"].as_str().unwrap_or("?")
        ),
        None => format!("job {} started", v["id"]),
    }
}

fn run(cli: &Cli) -> Result<(serde_json::Value, String), Failure> {
    let authed_with = |method: Method,
                       path: &str,
                       body: Option<serde_json::Value>|
     -> Result<serde_json::Value, Failure> {
        let s = load_session(cli)?;
        call(&client(&s.url, &s.fingerprint)?, method, path, Some(&s.token), body)
    };
    let authed = |method: Method, path: &str| authed_with(method, path, None);
    let job =
        |path: &str, body: serde_json::Value, wait: bool| -> Result<serde_json::Value, Failure> {
            let s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let j = call(&c, Method::POST, path, Some(&s.token), Some(body))?;
            if wait { wait_job(&c, &s.token, j, cli.json) } else { Ok(j) }
        };
    Ok(match &cli.cmd {
        Cmd::Setup(c) => {
            let v = open_session(cli, c, "/api/v1/setup")?;
            let t = format!("administrator {} created and logged in", c.name);
            (v, t)
        }
        Cmd::Login(c) => {
            let v = open_session(cli, c, "/api/v1/login")?;
            let t = format!("logged in as {}", c.name);
            (v, t)
        }
        Cmd::Logout => {
            let v = authed(Method::POST, "/api/v1/logout")?;
            let _ = std::fs::remove_file(session_path(cli)?);
            (v, "logged out".into())
        }
        Cmd::Whoami => {
            let v = authed(Method::GET, "/api/v1/session")?;
            let t = format!("{} (session ends at {} ms)", v["name"], v["expires_unix_ms"]);
            (v, t)
        }
        Cmd::Machines => {
            let v = authed(Method::GET, "/api/v1/machines")?;
            let mut t = String::new();
            for m in v["machines"].as_array().into_iter().flatten() {
                let disks: Vec<String> = m["disks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| format!("{}:{} B", d["index"], d["size"]))
                    .collect();
                let last = match m["last_point"].as_object() {
                    Some(p) => format!(
                        "point {} ({}), RPO {} s",
                        p["point"],
                        p["kind"].as_str().unwrap_or("?"),
                        m["rpo_secs"]
                    ),
                    None => "no point yet".into(),
                };
                t.push_str(&format!(
                    "{}  {}  {}  disks {}  {last}\n",
                    m["id"].as_str().unwrap_or("?"),
                    m["hostname"].as_str().unwrap_or("?"),
                    m["state"].as_str().unwrap_or("?"),
                    disks.join(", ")
                ));
            }
            (v, t.trim_end().to_owned())
        }
        Cmd::Points { machine } => {
            let v = authed(Method::GET, &format!("/api/v1/machines/{machine}/points"))?;
            let t = v["points"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}  {}  {}",
                        p["point"],
                        p["kind"].as_str().unwrap_or("?"),
                        p["id"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::Revoke { machine } => {
            let v = authed(Method::POST, &format!("/api/v1/machines/{machine}/revoke"))?;
            (v, format!("machine {machine} revoked"))
        }
        Cmd::TestFailover { machine, point, no_wait } => {
            let body = match point {
                Some(p) => serde_json::json!({"point": p}),
                None => serde_json::json!({}),
            };
            let v = job(&format!("/api/v1/machines/{machine}/test-failover"), body, !no_wait)?;
            let t = match v["result"].as_object() {
                Some(r) => format!(
                    "test failover {} ready: VM {} at point {}",
                    r["test_failover"].as_str().unwrap_or("?"),
                    r["vm"].as_str().unwrap_or("?"),
                    r["point"].as_str().unwrap_or("?")
                ),
                None => format!("job {} started", v["id"]),
            };
            (v, t)
        }
        Cmd::Failover { machine, point, no_wait } => {
            let body = match point {
                Some(p) => serde_json::json!({"point": p}),
                None => serde_json::json!({}),
            };
            let v = job(&format!("/api/v1/machines/{machine}/failover"), body, !no_wait)?;
            let t = failover_text(&v, &format!("machine {machine} failed over"));
            (v, t)
        }
        Cmd::Commit { machine, no_wait } => {
            let s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let path = format!("/api/v1/machines/{machine}/commit");
            let j = call(&c, Method::POST, &path, Some(&s.token), None)?;
            let v = if *no_wait { j } else { wait_job(&c, &s.token, j, cli.json)? };
            let t = match v["result"]["points_deleted"].as_u64() {
                Some(n) => format!("failover of {machine} committed; {n} recovery points deleted"),
                None => format!("job {} started", v["id"]),
            };
            (v, t)
        }
        Cmd::Reprotect { machine, no_wait } | Cmd::Failback { machine, no_wait } => {
            let verb =
                if matches!(cli.cmd, Cmd::Reprotect { .. }) { "reprotect" } else { "failback" };
            let s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let path = format!("/api/v1/machines/{machine}/{verb}");
            let j = call(&c, Method::POST, &path, Some(&s.token), None)?;
            let v = if *no_wait { j } else { wait_job(&c, &s.token, j, cli.json)? };
            let t = match v["state"].as_str() {
                Some("succeeded") => {
                    format!("{verb} of {machine}: {}", v["message"].as_str().unwrap_or("done"))
                }
                _ => format!("job {} started", v["id"]),
            };
            (v, t)
        }
        Cmd::Failovers => {
            let v = authed(Method::GET, "/api/v1/failovers")?;
            let t = v["failovers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    format!(
                        "{}  {}  {}  {}",
                        f["machine_id"].as_str().unwrap_or("?"),
                        f["state"].as_str().unwrap_or("?"),
                        f["point_id"].as_str().unwrap_or("-"),
                        f["vm"].as_str().unwrap_or("-")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::VmSpec { machine, firmware, cpus, memory_mib, boot_disk, nics } => {
            let path = format!("/api/v1/machines/{machine}/vm-spec");
            let change = firmware.is_some()
                || cpus.is_some()
                || memory_mib.is_some()
                || boot_disk.is_some()
                || !nics.is_empty();
            let v = if change {
                let s = load_session(cli)?;
                // The options replace the earlier settings as a whole (PUT).
                let c = client(&s.url, &s.fingerprint)?;
                let mut body = serde_json::json!({});
                if let Some(f) = firmware {
                    body["firmware"] = f.as_str().into();
                }
                if let Some(n) = cpus {
                    body["cpus"] = (*n).into();
                }
                if let Some(m) = memory_mib {
                    body["memory_mib"] = (*m).into();
                }
                if let Some(b) = boot_disk {
                    body["boot_disk"] = (*b).into();
                }
                if !nics.is_empty() {
                    body["nics"] =
                        nics.iter().map(|n| parse_nic(n)).collect::<Result<Vec<_>, _>>()?.into();
                }
                call(&c, Method::PUT, &path, Some(&s.token), Some(body))?
            } else {
                authed(Method::GET, &path)?
            };
            let nics = v["nics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    format!(
                        "  {} -> {}  mac {}  ip {}",
                        n["source"].as_str().unwrap_or("?"),
                        n["network"].as_str().unwrap_or("?"),
                        n["mac"].as_str().unwrap_or("(target's)"),
                        n["ip"].as_str().unwrap_or("(as on the source)")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let t = format!(
                "{}, {} CPUs, {} MiB, disks {} (boot first)\n{nics}",
                v["firmware"].as_str().unwrap_or("?"),
                v["cpus"],
                v["memory_mib"],
                v["disks"]
            );
            (v, t)
        }
        Cmd::Cleanup { id } => {
            let v =
                job(&format!("/api/v1/test-failovers/{id}/cleanup"), serde_json::json!({}), true)?;
            (v, format!("test failover {id} cleaned up"))
        }
        Cmd::TestFailovers => {
            let v = authed(Method::GET, "/api/v1/test-failovers")?;
            let t = v["test_failovers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}  {}  {}  {}",
                        t["id"].as_str().unwrap_or("?"),
                        t["machine_id"].as_str().unwrap_or("?"),
                        t["point_id"].as_str().unwrap_or("?"),
                        if t["cleaned_unix_ms"].is_null() { "live" } else { "cleaned up" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::Jobs { id } => {
            let v = match id {
                Some(i) => authed(Method::GET, &format!("/api/v1/jobs/{i}"))?,
                None => authed(Method::GET, "/api/v1/jobs")?,
            };
            let list = match v["jobs"].as_array() {
                Some(a) => a.clone(),
                None => vec![v.clone()],
            };
            let t = list
                .iter()
                .map(|j| {
                    format!(
                        "{}  {}  {}  {:.0} %  {}",
                        j["id"],
                        j["kind"].as_str().unwrap_or("?"),
                        j["state"].as_str().unwrap_or("?"),
                        j["progress"].as_f64().unwrap_or(0.0) * 100.0,
                        j["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::Passphrase { cmd: PassphraseCmd::Status } => {
            let v = authed(Method::GET, "/api/v1/passphrases")?;
            let t = format!("{} unused registration passphrase(s)", v["unused"]);
            (v, t)
        }
        Cmd::Passphrase { cmd: PassphraseCmd::Rotate } => {
            let v = authed(Method::POST, "/api/v1/passphrases")?;
            let t = v["passphrase"].as_str().unwrap_or("?").to_owned();
            (v, t)
        }
        Cmd::Plugins => {
            let v = authed(Method::GET, "/api/v1/plugins")?;
            let t = v["plugins"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["message"].as_str() {
                    Some(m) => format!("refused: {m}"),
                    None => format!(
                        "{}  {}  {}  {}",
                        p["name"].as_str().unwrap_or("?"),
                        p["kind"].as_str().unwrap_or("?"),
                        p["version"].as_str().unwrap_or("?"),
                        p["trust"].as_str().unwrap_or("?")
                    ),
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::Groups | Cmd::Group { .. } => {
            let v = match &cli.cmd {
                Cmd::Group { cmd: GroupCmd::Set { name, coordinator, members } } => {
                    let mut members = members.clone();
                    if !members.contains(coordinator) {
                        members.push(coordinator.clone());
                    }
                    let def =
                        lifeboat_api::GroupDefinition { coordinator: coordinator.clone(), members };
                    let body = serde_json::to_value(def).expect("plain data serialises");
                    authed_with(Method::PUT, &format!("/api/v1/groups/{name}"), Some(body))?
                }
                Cmd::Group { cmd: GroupCmd::Delete { name } } => {
                    authed_with(Method::DELETE, &format!("/api/v1/groups/{name}"), None)?
                }
                _ => authed(Method::GET, "/api/v1/groups")?,
            };
            let t = v["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    let points = g["points"].as_array().cloned().unwrap_or_default();
                    let complete = points.iter().filter(|p| p["complete"] == true).count();
                    format!(
                        "{}  coordinator {}  {} member(s)  {} point(s), {complete} complete",
                        g["name"].as_str().unwrap_or("?"),
                        g["coordinator"].as_str().unwrap_or("(not defined)"),
                        g["members"].as_array().map(Vec::len).unwrap_or(0),
                        points.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::Alerts => {
            let v = authed(Method::GET, "/api/v1/alerts")?;
            let list = v["alerts"].as_array().cloned().unwrap_or_default();
            let t = if list.is_empty() {
                "no alerts".into()
            } else {
                list.iter()
                    .map(|a| {
                        format!(
                            "{:<8} {:<12} {}",
                            a["severity"].as_str().unwrap_or("?"),
                            a["kind"].as_str().unwrap_or("?"),
                            a["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            (v, t)
        }
        Cmd::Plan { cmd } => {
            let s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let v = match cmd {
                PlanCmd::List => call(&c, Method::GET, "/api/v1/plans", Some(&s.token), None)?,
                PlanCmd::Set { name, file } => {
                    let text = if file.as_os_str() == "-" {
                        let mut t = String::new();
                        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                            .map_err(|e| fail(2, format!("standard input: {e}")))?;
                        t
                    } else {
                        std::fs::read_to_string(file)
                            .map_err(|e| fail(2, format!("{}: {e}", file.display())))?
                    };
                    let body: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| fail(2, format!("{}: not JSON: {e}", file.display())))?;
                    call(
                        &c,
                        Method::PUT,
                        &format!("/api/v1/plans/{name}"),
                        Some(&s.token),
                        Some(body),
                    )?
                }
                PlanCmd::Delete { name } => call(
                    &c,
                    Method::DELETE,
                    &format!("/api/v1/plans/{name}"),
                    Some(&s.token),
                    None,
                )?,
                PlanCmd::Run { name, failover, point, no_wait } => {
                    let mut body = serde_json::json!({
                        "mode": if *failover { "failover" } else { "test-failover" },
                    });
                    if let Some(p) = point {
                        body["point"] = p.as_str().into();
                    }
                    let j = call(
                        &c,
                        Method::POST,
                        &format!("/api/v1/plans/{name}/run"),
                        Some(&s.token),
                        Some(body),
                    )?;
                    if *no_wait { j } else { wait_job(&c, &s.token, j, cli.json)? }
                }
                PlanCmd::Continue { job, step } => call(
                    &c,
                    Method::POST,
                    &format!("/api/v1/jobs/{job}/continue"),
                    Some(&s.token),
                    step.map(|n| serde_json::json!({"step": n})),
                )?,
            };
            let t = match (v["plans"].as_array(), v["result"]["log"].as_array()) {
                (Some(plans), _) => plans
                    .iter()
                    .map(|p| {
                        format!(
                            "{}  {} group(s)",
                            p["name"].as_str().unwrap_or("?"),
                            p["plan"]["groups"].as_array().map(Vec::len).unwrap_or(0)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                (_, Some(log)) => {
                    log.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
                }
                _ if v["continued"] == true => "continued".into(),
                _ => format!("job {} started", v["id"]),
            };
            (v, t)
        }
        Cmd::Policy { cmd } => {
            let s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let v = match cmd {
                PolicyCmd::List => call(&c, Method::GET, "/api/v1/policies", Some(&s.token), None)?,
                PolicyCmd::Set {
                    name,
                    rpo_warning,
                    rpo_critical,
                    silent,
                    crash_interval,
                    compression_level,
                    app_interval,
                    bandwidth_mbps,
                    encryption,
                    retention,
                } => {
                    let mut body = serde_json::json!({});
                    for (key, val) in [
                        ("rpo_warning_secs", rpo_warning),
                        ("rpo_critical_secs", rpo_critical),
                        ("silent_secs", silent),
                        ("crash_interval_secs", crash_interval),
                        ("app_interval_secs", app_interval),
                    ] {
                        if let Some(v) = val {
                            body[key] = parse_secs(v)?.into();
                        }
                    }
                    if let Some(l) = compression_level {
                        body["compression_level"] = (*l).into();
                    }
                    if let Some(m) = bandwidth_mbps {
                        body["bandwidth"] = serde_json::json!({"mbps": m});
                    }
                    match encryption.as_deref() {
                        None => {}
                        Some("on") => body["encryption"] = true.into(),
                        Some("off") => body["encryption"] = false.into(),
                        Some(other) => {
                            return Err(fail(
                                2,
                                format!("--encryption: {other:?} is not on or off"),
                            ));
                        }
                    }
                    if let Some(r) = retention {
                        let mut tiers = Vec::new();
                        for pair in r.split(',') {
                            let (every, upto) = pair.split_once(':').ok_or_else(|| {
                                fail(2, format!("--retention: {pair:?} is not EVERY:FOR"))
                            })?;
                            tiers.push(serde_json::json!({
                                "every_secs": parse_secs(every)?, "for_secs": parse_secs(upto)?,
                            }));
                        }
                        body["retention"] = tiers.into();
                    }
                    call(
                        &c,
                        Method::PUT,
                        &format!("/api/v1/policies/{name}"),
                        Some(&s.token),
                        Some(body),
                    )?
                }
                PolicyCmd::Delete { name } => call(
                    &c,
                    Method::DELETE,
                    &format!("/api/v1/policies/{name}"),
                    Some(&s.token),
                    None,
                )?,
                PolicyCmd::Assign { machine, policy } => call(
                    &c,
                    Method::PUT,
                    &format!("/api/v1/machines/{machine}/policy"),
                    Some(&s.token),
                    Some(serde_json::json!({"policy": policy})),
                )?,
            };
            let t = v["policies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let q = &p["policy"];
                    let retention = match q["retention"].as_array() {
                        Some(tiers) => tiers
                            .iter()
                            .map(|t| format!("{}s:{}s", t["every_secs"], t["for_secs"]))
                            .collect::<Vec<_>>()
                            .join(","),
                        None => "appliance default".into(),
                    };
                    format!(
                        "{}  rpo {}s/{}s  silent {}s  retention {retention}  machines {}",
                        p["name"].as_str().unwrap_or("?"),
                        q["rpo_warning_secs"],
                        q["rpo_critical_secs"],
                        q["silent_secs"],
                        p["machines"].as_array().map(Vec::len).unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            (v, t)
        }
        Cmd::Ca { cmd } => {
            let mut s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let v = match cmd {
                CaCmd::Status => call(&c, Method::GET, "/api/v1/ca", Some(&s.token), None)?,
                CaCmd::Rotate { force } => {
                    let v = call(
                        &c,
                        Method::POST,
                        "/api/v1/ca/rotate",
                        Some(&s.token),
                        Some(serde_json::json!({"force": force})),
                    )?;
                    // The configuration server presents the active CA's certificates: the
                    // session pins it from now on.
                    if let Some(active) = v["active"].as_str()
                        && active != s.fingerprint
                    {
                        s.fingerprint = active.to_owned();
                        let p = session_path(cli)?;
                        let json =
                            serde_json::to_vec_pretty(&s).expect("a plain struct serialises");
                        lifeboat_common::fs::write_atomic(&p, &json, Some(0o600))
                            .map_err(|e| fail(1, format!("{}: {e}", p.display())))?;
                    }
                    v
                }
            };
            let behind = v["machines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["on_active_ca"] == false && m["revoked"] == false)
                .count();
            let t = format!(
                "phase {}; active CA {}{}; {behind} machine(s) not yet on the active CA",
                v["phase"].as_str().unwrap_or("?"),
                v["active"].as_str().unwrap_or("?"),
                v["next"].as_str().map(|n| format!(", next {n}")).unwrap_or_default()
            );
            (v, t)
        }
        Cmd::RecoveryPassphrase { cmd: RecoveryCmd::Status } => {
            let v = authed(Method::GET, "/api/v1/recovery-passphrase")?;
            let t = match (v["set"].as_bool(), v["catalogue_written_unix_ms"].as_u64()) {
                (Some(true), Some(ms)) => {
                    format!("set; catalogue written at the target at {ms} ms")
                }
                (Some(true), None) => "set; the catalogue is not written yet".into(),
                _ => "not set: a fresh appliance could not recover this site's catalogue".into(),
            };
            (v, t)
        }
        Cmd::RecoveryPassphrase { cmd: RecoveryCmd::Set } => {
            let p = match std::env::var("LIFEBOAT_RECOVERY_PASSPHRASE") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                        fail(2, format!("cannot read the passphrase from standard input: {e}"))
                    })?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let s = load_session(cli)?;
            let c = client(&s.url, &s.fingerprint)?;
            let v = call(
                &c,
                Method::PUT,
                "/api/v1/recovery-passphrase",
                Some(&s.token),
                Some(serde_json::json!({"passphrase": p})),
            )?;
            (v, "recovery passphrase set; keep it away from this appliance".into())
        }
        Cmd::Completions { .. } => unreachable!("handled before"),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "lifeboat", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok((v, text)) => {
            if cli.json {
                println!("{v}");
            } else if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("lifeboat: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_secs("90").unwrap(), 90);
        assert_eq!(parse_secs("90s").unwrap(), 90);
        assert_eq!(parse_secs("15m").unwrap(), 900);
        assert_eq!(parse_secs("4h").unwrap(), 14_400);
        assert_eq!(parse_secs("7d").unwrap(), 604_800);
        for bad in ["", "h", "4x", "-1", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_secs(bad).unwrap_err().code, 2, "{bad}");
        }
    }

    #[test]
    fn nic_mappings_parse() {
        let v = parse_nic("eth0=dr-lan,ip=192.0.2.7/24,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(v["network"], "dr-lan");
        assert_eq!(v["ip"], "192.0.2.7/24");
        assert!(parse_nic("eth0").is_err());
        assert!(parse_nic("eth0=dr,gw=1").is_err());
    }
}
