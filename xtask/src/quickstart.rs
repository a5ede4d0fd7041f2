//! `cargo xtask quickstart`: the main job on embedded defaults. Builds everything, makes
//! a demo disk (an ext4 image filled with real files), starts one appliance with every
//! role and the local target in `./lifeboat-data`, registers and starts an agent on the
//! demo disk, shows the initial copy, changes files inside the disk, waits for a recovery
//! point and verifies the replica at that point against the source (sha256), prints a
//! summary, and keeps running until Ctrl-C (`--once`: exits after the verification,
//! having stopped everything it started).

use crate::{root, run, target_dir};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes started here, stopped (SIGTERM, then SIGKILL) when dropped.
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn stop(&mut self) {
        for (name, child) in self.0.iter_mut().rev() {
            if let Ok(None) = child.try_wait() {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Ok(None) = child.try_wait() {
                    eprintln!("quickstart: {name} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The SHA-256 (hex) of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn say(msg: impl AsRef<str>) {
    eprintln!("\x1b[1mquickstart:\x1b[0m {}", msg.as_ref());
}

/// Runs the quickstart.
pub fn quickstart(once: bool) -> Result<()> {
    let started = Instant::now();
    crate::setup::toolchain()?;
    crate::setup::apt(&["e2fsprogs"])?;
    let plugins = crate::plugins::build()?;
    crate::build_binaries()?;
    let bin = target_dir().join("release");
    let data = root().join("lifeboat-data");
    if data.exists() {
        say(format!("removing the previous demo in {}", data.display()));
        std::fs::remove_dir_all(&data)?;
    }
    std::fs::create_dir_all(data.join("plugins"))?;

    let disk = make_demo_disk(&data)?;

    // The appliance: every role, the local target under lifeboat-data/target.
    let (config_port, ps_port) = (free_port()?, free_port()?);
    let config = write_appliance_config(&data, &plugins, config_port, ps_port)?;
    let mut procs = Procs(Vec::new());
    let demo = &Demo { bin: &bin, data: &data, disk: &disk, config: &config, config_port, ps_port };
    let (passphrase, fingerprint) = start_appliance(demo, &mut procs)?;
    let copy_started = start_agent(demo, &mut procs, &passphrase, &fingerprint)?;

    let source_size = std::fs::metadata(&disk)?.len();
    let (p1, initial_secs) = first_point(demo, copy_started)?;

    // Change files inside the filesystem, then wait for a point cut after the change.
    write_changes(demo)?;
    let (p2_id, rpo) = point_after_changes(demo, p1)?;
    print_summary(demo, started, source_size, initial_secs, rpo, &p2_id)?;
    if once {
        procs.stop();
        for port in [config_port, ps_port] {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                bail!("port {port} is still open after stopping");
            }
        }
        say("done: every process stopped");
        return Ok(());
    }
    say("replication keeps running; press Ctrl-C to stop");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for (name, child) in procs.0.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited ({status}); see {}", data.join("appliance.log").display());
            }
        }
    }
}

/// What the quickstart's steps share: the binaries, the demo's directory, its disk, and the
/// appliance's configuration file and ports.
#[derive(Clone, Copy)]
struct Demo<'a> {
    bin: &'a Path,
    data: &'a Path,
    disk: &'a Path,
    config: &'a Path,
    config_port: u16,
    ps_port: u16,
}

/// Makes the demo disk in `data`; its path.
fn make_demo_disk(data: &Path) -> Result<PathBuf> {
    // The demo disk: a sparse 256 MiB image with an ext4 filesystem holding real files.
    let disk = data.join("demo-disk.img");
    say(format!("creating the demo disk {} (ext4 with /usr/share/doc)", disk.display()));
    std::fs::File::create(&disk)?.set_len(256 << 20)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d", "/usr/share/doc", "-L", "demo"])
        .arg(&disk))?;
    Ok(disk)
}

/// Copies the plugins to `data` and writes the appliance's configuration, granting them
/// what they need; its path.
fn write_appliance_config(
    data: &Path,
    plugins: &Path,
    config_port: u16,
    ps_port: u16,
) -> Result<PathBuf> {
    let mut grants = String::new();
    for name in ["zstd", "aes-gcm", "local"] {
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                plugins.join(format!("{name}.{ext}")),
                data.join("plugins").join(format!("{name}.{ext}")),
            )?;
        }
        let sha = sha256_file(&plugins.join(format!("{name}.wasm")))?;
        grants.push_str(&format!("\n[plugins.grants.{name}]\nsha256 = \"{sha}\"\n"));
        if name == "local" {
            let target = data.join("target");
            grants.push_str(&format!(
                "clock = true\ndirectories = {{ \"/target\" = \"{}\" }}\nsettings = {{ root = \"/target\", host_root = \"{}\" }}\n",
                target.display(),
                target.display()
            ));
        }
    }
    let config = data.join("appliance.toml");
    std::fs::write(
        &config,
        format!(
            "# Written by cargo xtask quickstart.\nconfig_version = 1\ndata_dir = \"state\"\n\n\
             [config_server]\nlisten = \"127.0.0.1:{config_port}\"\n\n\
             [process_server]\nlisten = \"127.0.0.1:{ps_port}\"\ncache_max_mib = 2048\ncache_high_water_mib = 1536\n\n\
             [master_target]\npoll_ms = 200\nkeep_points = 10\n\n\
             [plugins]\ndir = \"plugins\"\n{grants}"
        ),
    )?;
    Ok(config)
}

/// Starts the appliance and waits for it; the registration passphrase and the CA
/// fingerprint.
fn start_appliance(demo: &Demo, procs: &mut Procs) -> Result<(String, String)> {
    let Demo { bin, data, config, config_port, ps_port, .. } = *demo;
    say(format!(
        "starting the appliance (configuration server :{config_port}, process server :{ps_port})"
    ));
    let appliance_log = std::fs::File::create(data.join("appliance.log"))?;
    procs.0.push((
        "appliance".into(),
        Command::new(bin.join("lifeboat-appliance"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(appliance_log.try_clone()?)
            .stderr(appliance_log)
            .spawn()
            .context("starting lifeboat-appliance")?,
    ));
    let passphrase_file = data.join("state/registration-passphrase");
    wait_for(Duration::from_secs(60), "the appliance to start", || {
        Ok(passphrase_file.exists() && std::net::TcpStream::connect(("127.0.0.1", ps_port)).is_ok())
    })?;
    let passphrase = std::fs::read_to_string(&passphrase_file)?.trim().to_owned();
    let fingerprint = output(
        Command::new(bin.join("lifeboat-appliance")).args(["fingerprint", "--config"]).arg(config),
    )?;
    Ok((passphrase, fingerprint))
}

/// Registers and starts the agent on the demo disk; when it started.
fn start_agent(
    demo: &Demo,
    procs: &mut Procs,
    passphrase: &str,
    fingerprint: &str,
) -> Result<Instant> {
    let Demo { bin, data, disk, config_port, .. } = *demo;
    // The agent: registered with the one-time passphrase, pinned to the CA fingerprint.
    let agent_state = data.join("agent");
    run(Command::new(bin.join("lifeboat-agent"))
        .args(["register", "--appliance", &format!("https://127.0.0.1:{config_port}")])
        .args(["--fingerprint", fingerprint.trim(), "--passphrase", passphrase, "--state-dir"])
        .arg(&agent_state))?;
    let agent_config = data.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "# Written by cargo xtask quickstart.\nconfig_version = 1\nstate_dir = \"{}\"\ndisks = [\"{}\"]\ninterval_secs = 2\n",
            agent_state.display(),
            disk.display()
        ),
    )?;
    say("starting the agent: initial copy");
    let copy_started = Instant::now();
    procs.0.push((
        "agent".into(),
        Command::new(bin.join("lifeboat-agent"))
            .args(["run", "--config"])
            .arg(&agent_config)
            .stdin(Stdio::null())
            .spawn()
            .context("starting lifeboat-agent")?,
    ));
    Ok(copy_started)
}

/// The newest recovery point numbered `min` or more: (number, id, creation time).
fn points(demo: &Demo, min: u64) -> Result<Option<(u64, String, u64)>> {
    let Demo { bin, config, .. } = *demo;
    let out = output(
        Command::new(bin.join("lifeboat-appliance")).args(["points", "--config"]).arg(config),
    )?;
    let mut best = None;
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let n = v["point"].as_u64().unwrap_or(0);
        if n >= min {
            best = Some((
                n,
                v["id"].as_str().unwrap_or_default().to_owned(),
                v["created_unix_ms"].as_u64().unwrap_or(0),
            ));
        }
    }
    Ok(best)
}

/// Waits for the first recovery point and verifies it; its number and the initial copy's
/// duration in seconds.
fn first_point(demo: &Demo, copy_started: Instant) -> Result<(u64, f64)> {
    let Demo { bin, disk, config, .. } = *demo;
    let mut first = None;
    wait_for(Duration::from_secs(600), "the first recovery point", || {
        first = points(demo, 1)?;
        Ok(first.is_some())
    })?;
    let initial_secs = copy_started.elapsed().as_secs_f64();
    let (p1, p1_id, _) = first.expect("waited for it");
    verify(bin, config, &p1_id, disk)?;
    say(format!("point {p1} verified: the replica equals the source disk"));
    Ok((p1, initial_secs))
}

/// Writes new files into the demo disk's filesystem.
fn write_changes(demo: &Demo) -> Result<()> {
    let Demo { data, disk, .. } = *demo;
    say("writing changes into the demo disk (new and replaced files)");
    let changes = data.join("changes");
    std::fs::create_dir_all(&changes)?;
    let mut script = String::new();
    for i in 0..20 {
        let f = changes.join(format!("report-{i}.txt"));
        let text: String = (0..2000)
            .map(|l| format!("line {l} of report {i}: lifeboat keeps your data afloat\n"))
            .collect();
        std::fs::write(&f, text)?;
        script.push_str(&format!("write {} report-{i}.txt\n", f.display()));
    }
    let script_file = data.join("changes.debugfs");
    std::fs::write(&script_file, script)?;
    run(Command::new("debugfs")
        .args(["-w", "-f"])
        .arg(&script_file)
        .arg(disk)
        .stdout(Stdio::null()))?;
    Ok(())
}

/// Waits for a point after the changes that equals the changed source; its id, and the
/// seconds from the change to it.
fn point_after_changes(demo: &Demo, p1: u64) -> Result<(String, f64)> {
    let Demo { bin, disk, config, .. } = *demo;
    let changed_at = Instant::now();
    // A hash-scan point is consistent only if the disk was quiet while it was cut, and a
    // cycle may have been running during the write: check the points that follow, in
    // order, until one equals the changed source; one cut two cycles later must.
    let after = points(demo, 0)?.map(|p| p.0).unwrap_or(p1);
    let want = sha256_file(disk)?;
    let mut next = after + 1;
    let (p2, p2_id) = loop {
        let mut found = None;
        wait_for(Duration::from_secs(300), "a recovery point with the changes", || {
            found = points(demo, next)?;
            Ok(found.is_some())
        })?;
        let (n, id, _) = found.expect("waited for it");
        if checksum(bin, config, &id)? == want {
            break (n, id);
        }
        if n >= after + 3 {
            bail!("point {n}, cut after the changes, differs from the source: verification FAILED");
        }
        next = n + 1;
    };
    let rpo = changed_at.elapsed().as_secs_f64();
    say(format!("point {p2} verified: the replica equals the changed source disk"));
    Ok((p2_id, rpo))
}

/// Prints the summary of the run.
fn print_summary(
    demo: &Demo,
    started: Instant,
    source_size: u64,
    initial_secs: f64,
    rpo: f64,
    p2_id: &str,
) -> Result<()> {
    let Demo { data, disk, config_port, ps_port, .. } = *demo;
    let total = points(demo, 0)?.map(|p| p.0).unwrap_or(0);

    println!();
    println!("Lifeboat quickstart summary");
    println!("  demo disk           {} ({} MiB)", disk.display(), source_size >> 20);
    println!(
        "  initial copy        {initial_secs:.1} s to the first verified recovery point ({:.0} MB/s of disk)",
        source_size as f64 / 1e6 / initial_secs
    );
    println!("  change to point     {rpo:.1} s (RPO of this run)");
    println!("  recovery points     {total} so far (newest {p2_id})");
    println!("  appliance log       {}", data.join("appliance.log").display());
    println!(
        "  API                 https://127.0.0.1:{config_port} (configuration), https://127.0.0.1:{ps_port} (process server, mTLS)"
    );
    println!("  took                {:.0} s", started.elapsed().as_secs_f64());
    // The web UI: the appliance is not claimed yet; its setup wizard takes the setup token.
    let token = output(
        Command::new(demo.bin.join("lifeboat-appliance"))
            .args(["setup-token", "--config"])
            .arg(demo.config),
    )?;
    println!();
    println!("Web UI: open https://127.0.0.1:{config_port}/ in a browser on this machine.");
    println!(
        "  Its certificate is issued by the appliance's own CA ({}): accept the browser's warning, or trust that file.",
        data.join("state/ca/ca.crt").display()
    );
    println!(
        "  The setup wizard asks for the setup token {} to create the first administrator, then shows the demo machine.",
        token.trim()
    );
    Ok(())
}

fn checksum(bin: &Path, config: &Path, point: &str) -> Result<String> {
    let out = output(
        Command::new(bin.join("lifeboat-appliance"))
            .args(["point-checksum", "--config"])
            .arg(config)
            .args(["--point", point, "--disk", "0"]),
    )?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn verify(bin: &Path, config: &Path, point: &str, source: &Path) -> Result<()> {
    let want = sha256_file(source)?;
    let got = checksum(bin, config, point)?;
    if got != want {
        bail!("replica at {point} has sha256 {got}, the source {want}: verification FAILED");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("command failed ({}): {:?}", out.status, cmd);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("timed out after {} s waiting for {what}", limit.as_secs())
}
