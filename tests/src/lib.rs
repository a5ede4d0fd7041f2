//! Harness for end-to-end tests: runs the real `lifeboat-appliance` and `lifeboat-agent`
//! binaries (built by `cargo xtask test` into `<target>/release`) with the real plugins
//! (`<target>/plugins`) on 127.0.0.1, in a temporary directory per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_possible_truncation)]

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `<target>/release` and `<target>/plugins`, found from the test binary's own path
/// (`<target>/release/deps/<test>`), so any CARGO_TARGET_DIR works.
pub fn build_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("test binary path");
    let release = exe.ancestors().nth(2).expect("<target>/release").to_owned();
    let plugins = release.parent().expect("<target>").join("plugins");
    for b in ["lifeboat-appliance", "lifeboat-agent"] {
        assert!(
            release.join(b).exists(),
            "{} missing: run the tests with `cargo xtask test`, which builds the binaries",
            release.join(b).display()
        );
    }
    assert!(plugins.join("zstd.wasm").exists(), "plugins missing: run `cargo xtask plugins`");
    (release, plugins)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `program` with `args`; its trimmed stdout, or an error with its stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs a command on drop (unmount, thaw, detach, unpin).
pub struct Undo(pub Vec<(String, Vec<String>)>);
impl Drop for Undo {
    fn drop(&mut self) {
        for (p, a) in self.0.iter().rev() {
            let args: Vec<&str> = a.iter().map(String::as_str).collect();
            let _ = sh(p, &args);
        }
    }
}

/// Whether the tests run as root; prints why a root-only test is skipped otherwise.
pub fn root_or_skip(why: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: {why} needs root");
    }
    root
}

/// The eBPF tracker's pins that exist now.
pub fn pins() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/lifeboat")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Adds to `undo` the removal of the trackers pinned by the agents of `machines`
/// (`v<layout>-agent-<machine id>`), the test's own. Never "every pin that appeared since":
/// the tests of a binary run at the same time, and the agent keeps no link of its own, so
/// removing another test's pins detaches its running agents' programs and their tracking
/// silently stops.
pub fn unpin_agents(machines: &[&str], undo: &mut Undo) {
    for p in pins() {
        if machines.iter().any(|m| p.ends_with(&format!("-agent-{m}"))) {
            let path = format!("/sys/fs/bpf/lifeboat/{p}");
            undo.0.insert(0, ("rm".into(), vec!["-rf".into(), path]));
        }
    }
}

/// A loop device over a new `mib`-MiB image `<name>.img` in `dir`, detached by `undo`;
/// `None` (said why) where loop devices cannot be made.
pub fn loop_device(dir: &Path, name: &str, mib: u64, undo: &mut Undo) -> Option<String> {
    let img = dir.join(format!("{name}.img"));
    std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    match sh("losetup", &["--find", "--show", img.to_str().unwrap()]) {
        Ok(dev) => {
            undo.0.push(("losetup".into(), vec!["--detach".into(), dev.clone()]));
            Some(dev)
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot create a loop device here: {e}");
            None
        }
    }
}

/// Makes ext4 on `dev` and mounts it at `<dir>/<name>`, unmounted by `undo`.
pub fn mount_ext4(dev: &str, dir: &Path, name: &str, undo: &mut Undo) -> PathBuf {
    let mnt = dir.join(name);
    std::fs::create_dir(&mnt).unwrap();
    sh("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev]).unwrap();
    sh("mount", &[dev, mnt.to_str().unwrap()]).unwrap();
    undo.0.push(("umount".into(), vec![mnt.to_str().unwrap().into()]));
    mnt
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Polls `f` until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A disk image of `mib` MiB: random data in most 64 KiB blocks, holes and zero runs in
/// others, seeded so failures reproduce.
pub fn make_disk(path: &Path, mib: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut block = vec![0u8; 64 << 10];
    for b in 0..(mib << 20) / (64 << 10) {
        match rng.random_range(0..10) {
            0..=2 => {} // hole
            3 => f.write_all_at(&vec![0u8; 64 << 10], b * (64 << 10)).unwrap(),
            _ => {
                rng.fill(&mut block[..]);
                f.write_all_at(&block, b * (64 << 10)).unwrap();
            }
        }
    }
    f.sync_all().unwrap();
}

/// `n` random 4 KiB writes (some zero-filled) at random 4 KiB-aligned offsets.
pub fn random_writes(path: &Path, n: usize, seed: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        if rng.random_range(0..8) == 0 {
            buf.fill(0);
        } else {
            rng.fill(&mut buf[..]);
        }
        let off = rng.random_range(0..len / 4096) * 4096;
        f.write_all_at(&buf, off).unwrap();
    }
    f.sync_all().unwrap();
    n as u64 * 4096
}

/// Which roles an appliance process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    /// Configuration server.
    pub config_server: bool,
    /// Process server.
    pub process_server: bool,
    /// Master target.
    pub master_target: bool,
}

impl Roles {
    /// Every role.
    pub const ALL: Roles = Roles { config_server: true, process_server: true, master_target: true };
}

/// A test site: one data directory, ports, plugin grants; appliance processes on it.
pub struct Site {
    /// Keeps the temporary directory alive.
    pub dir: tempfile::TempDir,
    /// Release binaries.
    pub bin: PathBuf,
    /// Configuration server port.
    pub config_port: u16,
    /// Process server port.
    pub ps_port: u16,
}

impl Site {
    /// A new site with the zstd, aes-gcm and local plugins installed and pinned.
    pub fn new() -> Site {
        let (bin, plugins) = build_dirs();
        // LIFEBOAT_KEEP_TEST_DIRS=1 keeps the site (logs, state, replicas) for debugging.
        let dir = tempfile::Builder::new()
            .prefix("lifeboat-e2e-")
            .disable_cleanup(std::env::var_os("LIFEBOAT_KEEP_TEST_DIRS").is_some())
            .tempdir()
            .unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("plugins")).unwrap();
        for n in ["zstd", "aes-gcm", "local"] {
            for ext in ["wasm", "toml"] {
                std::fs::copy(
                    plugins.join(format!("{n}.{ext}")),
                    root.join("plugins").join(format!("{n}.{ext}")),
                )
                .unwrap();
            }
        }
        Site { dir, bin, config_port: free_port(), ps_port: free_port() }
    }

    /// The site's folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `appliance-<name>.toml` for `roles` and returns its path.
    pub fn config(&self, name: &str, roles: Roles) -> PathBuf {
        self.config_with(name, roles, "")
    }

    /// [`Site::config`] with `extra` TOML appended (more plugin grants, `[plans]`).
    pub fn config_with(&self, name: &str, roles: Roles, extra: &str) -> PathBuf {
        let root = self.root();
        let mut grants = String::new();
        for n in ["zstd", "aes-gcm", "local"] {
            let sha = sha256_file(&root.join(format!("plugins/{n}.wasm")));
            grants.push_str(&format!("\n[plugins.grants.{n}]\nsha256 = \"{sha}\"\n"));
        }
        grants.push_str(&format!(
            "clock = true\ndirectories = {{ \"/target\" = \"{0}\" }}\nsettings = {{ root = \"/target\", host_root = \"{0}\" }}\n",
            root.join("target").display()
        ));
        let path = root.join(format!("appliance-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "config_version = 1\ndata_dir = \"state\"\n\
                 [roles]\nconfig_server = {}\nprocess_server = {}\nmaster_target = {}\n\
                 [config_server]\nlisten = \"127.0.0.1:{}\"\n\
                 [process_server]\nlisten = \"127.0.0.1:{}\"\ncache_max_mib = 1024\ncache_high_water_mib = 768\n\
                 [master_target]\npoll_ms = 100\nkeep_points = 100\nkeep_hours = 0\n\
                 [plugins]\ndir = \"plugins\"\n{grants}{extra}",
                roles.config_server,
                roles.process_server,
                roles.master_target,
                self.config_port,
                self.ps_port,
            ),
        )
        .unwrap();
        path
    }

    /// Starts an appliance process with `config`; its log goes to `<name>.log`.
    pub fn start(&self, name: &str, config: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(self.bin.join("lifeboat-appliance"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap();
        Proc { name: name.into(), child: Some(child) }
    }

    /// Starts an appliance with every role (`appliance-all.toml`, `appliance.log`) and
    /// waits for its ports; returns its configuration and process.
    pub fn start_all(&self) -> (PathBuf, Proc) {
        let cfg = self.config("all", Roles::ALL);
        let p = self.start("appliance", &cfg);
        self.wait_port(self.config_port);
        self.wait_port(self.ps_port);
        (cfg, p)
    }

    /// Waits until a port accepts connections.
    pub fn wait_port(&self, port: u16) {
        wait_for(Duration::from_secs(60), &format!("port {port}"), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
    }

    /// Runs `lifeboat-appliance <args> --config <config>` and returns its stdout.
    pub fn cli(&self, config: &Path, args: &[&str]) -> String {
        let out = Command::new(self.bin.join("lifeboat-appliance"))
            .args(args)
            .arg("--config")
            .arg(config)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "lifeboat-appliance {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The appliance's counters (`lifeboat-appliance stats`) once settled: the appliance
    /// writes them behind, at least every second, so two readings 1.2 s apart must agree.
    pub fn stats(&self, config: &Path) -> serde_json::Value {
        let read = || -> serde_json::Value {
            serde_json::from_str(self.cli(config, &["stats"]).trim()).unwrap()
        };
        let mut last = read();
        for _ in 0..30 {
            std::thread::sleep(std::time::Duration::from_millis(1200));
            let now = read();
            if now == last {
                return now;
            }
            last = now;
        }
        panic!("the appliance's counters did not settle: {last}");
    }

    /// Registers an agent with state in `state_dir`, using a fresh passphrase.
    pub fn register_agent(&self, config: &Path, state_dir: &Path) {
        let passphrase = self.cli(config, &["passphrase"]);
        let fingerprint = self.cli(config, &["fingerprint"]);
        let status = Command::new(self.bin.join("lifeboat-agent"))
            .args(["register", "--appliance", &format!("https://127.0.0.1:{}", self.config_port)])
            .args(["--fingerprint", fingerprint.trim(), "--passphrase", passphrase.trim()])
            .arg("--state-dir")
            .arg(state_dir)
            .status()
            .unwrap();
        assert!(status.success(), "agent registration failed");
    }

    /// Recovery points as (point number, id), oldest first.
    pub fn points(&self, config: &Path) -> Vec<(u64, String)> {
        self.cli(config, &["points"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["point"].as_u64().unwrap(), v["id"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// sha256 of disk `disk` at point `id`, read back through the target plugin.
    pub fn point_checksum(&self, config: &Path, id: &str, disk: u32) -> String {
        self.cli(config, &["point-checksum", "--point", id, "--disk", &disk.to_string()])
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// Writes an agent configuration protecting `disks`.
    pub fn agent_config(&self, state_dir: &Path, disks: &[PathBuf], interval_secs: u64) -> PathBuf {
        self.agent_config_with(state_dir, disks, interval_secs, "")
    }

    /// Recovery points as the appliance lists them (JSON objects with `point`, `id`,
    /// `kind`, `machine`…), oldest first.
    pub fn points_json(&self, config: &Path) -> Vec<serde_json::Value> {
        self.cli(config, &["points"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The image file of disk 0 of point `id` at the site's local target.
    pub fn point_image(&self, id: &str) -> PathBuf {
        let dir = self.root().join("target/points").join(id);
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "img"))
            .unwrap_or_else(|| panic!("no image in {}", dir.display()))
    }

    /// Installs the built plugin `name` (`.wasm` and `.toml`) into `dir` and returns its
    /// sha256, for a grant's pin.
    pub fn install_plugin(&self, name: &str, dir: &Path) -> String {
        let (_, plugins) = build_dirs();
        std::fs::create_dir_all(dir).unwrap();
        for ext in ["wasm", "toml"] {
            std::fs::copy(plugins.join(format!("{name}.{ext}")), dir.join(format!("{name}.{ext}")))
                .unwrap();
        }
        sha256_file(&dir.join(format!("{name}.wasm")))
    }

    /// [`Site::agent_config`] with `extra` TOML appended (tables such as `[quiesce]`).
    pub fn agent_config_with(
        &self,
        state_dir: &Path,
        disks: &[PathBuf],
        interval_secs: u64,
        extra: &str,
    ) -> PathBuf {
        self.agent_config_as("agent", state_dir, disks, interval_secs, extra)
    }

    /// The machine id an agent registered with `state_dir` got.
    pub fn machine_id(state_dir: &Path) -> String {
        let text = std::fs::read_to_string(state_dir.join("registration.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["machine_id"].as_str().unwrap().to_owned()
    }

    /// [`Site::agent_config_with`] written to `<name>.toml`, for several agents on one site.
    pub fn agent_config_as(
        &self,
        name: &str,
        state_dir: &Path,
        disks: &[PathBuf],
        interval_secs: u64,
        extra: &str,
    ) -> PathBuf {
        let path = self.root().join(format!("{name}.toml"));
        let list: Vec<String> = disks.iter().map(|d| format!("\"{}\"", d.display())).collect();
        std::fs::write(
            &path,
            format!(
                "config_version = 1\nstate_dir = \"{}\"\ndisks = [{}]\ninterval_secs = {interval_secs}\nbatch_max_bytes = 1048576\nnice = 0\n{extra}",
                state_dir.display(),
                list.join(", ")
            ),
        )
        .unwrap();
        path
    }

    /// Runs the administrator's `lifeboat` command with the site's session file; the
    /// password (for setup and login) through `LIFEBOAT_PASSWORD`.
    pub fn lifeboat(&self, args: &[&str], password: Option<&str>) -> std::process::Output {
        let mut c = Command::new(self.bin.join("lifeboat"));
        c.arg("--session").arg(self.root().join("session.json")).args(args).stdin(Stdio::null());
        match password {
            Some(p) => c.env("LIFEBOAT_PASSWORD", p),
            None => c.env_remove("LIFEBOAT_PASSWORD"),
        };
        c.output().unwrap()
    }

    /// `lifeboat <args> --json`, which must succeed; its JSON answer.
    pub fn lifeboat_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let o = self.lifeboat(&all, None);
        assert!(
            o.status.success(),
            "lifeboat {args:?} failed ({:?}): {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Sets up the first administrator through `lifeboat setup` (logged in after).
    pub fn lifeboat_setup(&self, config: &Path) {
        let url = format!("https://127.0.0.1:{}", self.config_port);
        let fp = self.cli(config, &["fingerprint"]).trim().to_owned();
        let o = self.lifeboat(
            &["setup", "--url", &url, "--fingerprint", &fp, "--name", "admin"],
            Some("correct horse battery"),
        );
        assert!(o.status.success(), "lifeboat setup: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// Runs one agent cycle to completion (`run --once`).
    pub fn agent_once(&self, agent_config: &Path) {
        let status = Command::new(self.bin.join("lifeboat-agent"))
            .args(["run", "--once", "--config"])
            .arg(agent_config)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "lifeboat-agent run --once failed");
    }

    /// Starts a continuously running agent.
    pub fn start_agent(&self, agent_config: &Path) -> Proc {
        self.start_agent_as("agent", agent_config)
    }

    /// Starts a continuously running agent that logs to `<name>.log`.
    pub fn start_agent_as(&self, name: &str, agent_config: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(self.bin.join("lifeboat-agent"))
            .args(["run", "--config"])
            .arg(agent_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc { name: name.into(), child: Some(child) }
    }
}

impl Drop for Site {
    /// On a failing test, show the end of every process log: the temporary directory
    /// is about to disappear with them.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(rd) = std::fs::read_dir(self.root()) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("----- last lines of {} -----", p.display());
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

/// A child process, SIGKILLed when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9, and wait for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to 30 s (then SIGKILL); returns whether it stopped cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within 30 s", self.name);
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Azurite's published, well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published, well-known development account key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A real Azurite (Blob service) on 127.0.0.1, installed by `scripts/azurite.sh`, with
/// its data in a temporary folder; killed when dropped.
pub struct Azurite {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// Installs (once) and starts Azurite on a free port.
    pub fn start() -> Azurite {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/azurite.sh");
        let out = Command::new("bash").arg(script).stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "scripts/azurite.sh failed");
        let bin = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_owned();
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent", "--location"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Azurite { child, port, _dir: dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Azurite did not start");
    }

    /// The `[plugins.grants.azure]` table for a container of this Azurite.
    pub fn grant(&self, container: &str, lease_id: &str) -> String {
        format!(
            "clock = true\nhttp_hosts = [\"http://127.0.0.1:{p}\"]\nsettings = {{ account = \"{AZURITE_ACCOUNT}\", key = \"{AZURITE_KEY}\", endpoint = \"http://127.0.0.1:{p}/{AZURITE_ACCOUNT}\", container = \"{container}\", lease_id = \"{lease_id}\" }}\n",
            p = self.port
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Site {
    /// Writes `appliance-<name>.toml` for `roles` whose target is the Azure plugin
    /// (`azure_grant` from [`Azurite::grant`]), with its own data directory `data_dir`.
    pub fn azure_config(
        &self,
        name: &str,
        roles: Roles,
        data_dir: &str,
        azure_grant: &str,
    ) -> PathBuf {
        let root = self.root();
        let (_, plugins) = build_dirs();
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                plugins.join(format!("azure.{ext}")),
                root.join(format!("plugins/azure.{ext}")),
            )
            .unwrap();
        }
        let mut grants = String::new();
        for n in ["zstd", "aes-gcm", "azure"] {
            let sha = sha256_file(&root.join(format!("plugins/{n}.wasm")));
            grants.push_str(&format!("\n[plugins.grants.{n}]\nsha256 = \"{sha}\"\n"));
        }
        grants.push_str(azure_grant);
        let path = root.join(format!("appliance-{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "config_version = 1\ndata_dir = \"{data_dir}\"\n\
                 [roles]\nconfig_server = {}\nprocess_server = {}\nmaster_target = {}\n\
                 [config_server]\nlisten = \"127.0.0.1:{}\"\n\
                 [process_server]\nlisten = \"127.0.0.1:{}\"\ntarget = \"azure\"\n\
                 [master_target]\ntarget = \"azure\"\npoll_ms = 100\nkeep_points = 100\nkeep_hours = 0\n\
                 [plugins]\ndir = \"plugins\"\n{grants}",
                roles.config_server, roles.process_server, roles.master_target, self.config_port, self.ps_port,
            ),
        )
        .unwrap();
        path
    }
}

/// The kernel the bootable test disk boots: the newest `/boot/vmlinuz-<version>` that has
/// its modules in `/lib/modules/<version>` (Debian's `linux-image-amd64`, installed by
/// `cargo xtask setup`). Returns (vmlinuz, version).
pub fn test_kernel() -> (PathBuf, String) {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let v = name.strip_prefix("vmlinuz-")?.to_owned();
                    Path::new("/lib/modules").join(&v).is_dir().then(|| (e.path(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "no /boot/vmlinuz-* with its modules: `cargo xtask test` installs linux-image-amd64",
    )
}

/// What the bootable test disk prints on its serial console once its root filesystem
/// (the boot disk's partition 1) is up.
pub const BOOTED: &str = "LIFEBOAT-BOOTED";
/// Printed after the data disk's files (`sha256sum /data/*`).
pub const BOOT_DONE: &str = "LIFEBOAT-DONE";

/// Builds a small bootable Linux disk image at `path` (48 MiB, raw): an MBR with
/// SYSLINUX's boot code and one bootable partition at 1 MiB holding an ext2 root
/// filesystem with the host's kernel, an initramfs and BusyBox. The initramfs loads the
/// virtio and ext4 modules, mounts partition 1 read-only and switches to it; its `init`
/// prints [`BOOTED`], mounts the second disk (`/dev/vdb`, ext4) read-only at `/data`,
/// prints `sha256sum /data/*`, then [`BOOT_DONE`], and powers off. Needs root (a loop
/// mount for `extlinux --install`), busybox-static, extlinux and cpio.
pub fn make_bootable_disk(path: &Path, work: &Path) {
    let (vmlinuz, version) = test_kernel();
    let w = work.join("bootdisk");
    let ir = w.join("initramfs");
    let root = w.join("root");
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib/modules"] {
        std::fs::create_dir_all(ir.join(d)).unwrap();
    }
    for d in ["bin", "sbin", "boot/extlinux", "dev", "proc", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for dir in [&ir, &root] {
        std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
            .expect("/bin/busybox: `cargo xtask test` installs busybox-static");
    }
    // The modules to reach a virtio disk with ext4 on it, dependencies first.
    let mut insmods = Vec::new();
    for m in ["virtio_pci", "virtio_blk", "ext4"] {
        let deps = sh("modprobe", &["--show-depends", "-S", &version, m]).unwrap();
        for line in deps.lines() {
            let Some(ko) = line.strip_prefix("insmod ").map(str::trim) else { continue };
            let name = Path::new(ko).file_name().unwrap().to_string_lossy().into_owned();
            if !insmods.contains(&name) {
                std::fs::copy(ko, ir.join("lib/modules").join(&name)).unwrap();
                insmods.push(name);
            }
        }
    }
    let loads: String = insmods
        .iter()
        .map(|m| format!("/bin/busybox insmod /lib/modules/{m} 2>/dev/null\n"))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         {loads}\
         n=0\n\
         while [ ! -b /dev/vda1 ] && [ $n -lt 200 ]; do /bin/busybox sleep 0.1; n=$((n+1)); done\n\
         /bin/busybox mount -t ext4 -o ro /dev/vda1 /newroot || {{ echo LIFEBOAT-NO-ROOT; /bin/busybox poweroff -f; }}\n\
         /bin/busybox mount --move /dev /newroot/dev\n\
         exec /bin/busybox switch_root /newroot /sbin/init\n"
    );
    write_exec(&ir.join("init"), &init);
    let rootinit = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo {BOOTED}\n\
         /bin/busybox mount -t ext4 -o ro /dev/vdb /data && /bin/busybox sha256sum /data/* 2>/dev/null\n\
         echo {BOOT_DONE}\n\
         /bin/busybox poweroff -f\n"
    );
    write_exec(&root.join("sbin/init"), &rootinit);
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initrd.gz")
        .current_dir(&ir)
        .status()
        .expect("cpio: `cargo xtask test` installs it");
    assert!(cpio.success(), "building the initramfs failed");
    std::fs::copy(w.join("initrd.gz"), root.join("boot/initrd.gz")).unwrap();
    std::fs::copy(&vmlinuz, root.join("boot/vmlinuz")).unwrap();
    std::fs::write(
        root.join("boot/extlinux/extlinux.conf"),
        "DEFAULT linux\nTIMEOUT 1\nPROMPT 0\nLABEL linux\n  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.gz\n  APPEND console=ttyS0 quiet panic=-1\n",
    )
    .unwrap();
    // The image: partition 1 from sector 2048 to the end, ext2 made in place.
    const MIB: u64 = 1 << 20;
    let size = 48 * MIB;
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    let p = path.to_str().unwrap();
    sh(
        "mke2fs",
        &["-q", "-F", "-t", "ext2", "-E", "offset=1048576", "-d", root.to_str().unwrap(), p, "47M"],
    )
    .unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let mbr = std::fs::read("/usr/lib/EXTLINUX/mbr.bin")
            .expect("/usr/lib/EXTLINUX/mbr.bin: `cargo xtask test` installs extlinux");
        f.write_all_at(&mbr[..440], 0).unwrap();
        let mut entry = [0x80, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff].to_vec();
        entry.extend_from_slice(&2048u32.to_le_bytes());
        entry.extend_from_slice(&(((size - MIB) / 512) as u32).to_le_bytes());
        f.write_all_at(&entry, 446).unwrap();
        f.write_all_at(&[0x55, 0xaa], 510).unwrap();
        f.sync_all().unwrap();
    }
    let dev = sh("losetup", &["--find", "--show", "--offset", "1048576", p]).unwrap();
    let mnt = w.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = sh("mount", &[&dev, mnt.to_str().unwrap()]);
    let installed = mounted
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| sh("extlinux", &["--install", mnt.join("boot/extlinux").to_str().unwrap()]));
    if mounted.is_ok() {
        sh("umount", &[mnt.to_str().unwrap()]).unwrap();
    }
    let _ = sh("losetup", &["--detach", &dev]);
    installed.expect("extlinux --install");
    let _ = std::fs::remove_dir_all(&w);
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Boots the local target's VM spec `spec` with `lifeboat-appliance qemu-command` under
/// software emulation (TCG), its interfaces on qemu's user network (the test host has
/// none of the mapped networks), and returns what its serial console printed, once it
/// powered off or after `limit`.
pub fn boot_vm(bin: &Path, spec: &Path, limit: Duration) -> String {
    let args = Command::new(bin.join("lifeboat-appliance"))
        .args(["qemu-command", "--json", "--accel", "tcg", "--user-net"])
        .arg(spec)
        .output()
        .unwrap();
    assert!(args.status.success(), "qemu-command: {}", String::from_utf8_lossy(&args.stderr));
    let argv: Vec<String> = serde_json::from_slice(&args.stdout).unwrap();
    // The console goes to a file beside the spec: a pipe could fill and stall the guest.
    let console = spec.with_extension("console");
    let out = std::fs::File::create(&console).unwrap();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("qemu-system-x86_64: `cargo xtask test` installs it");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&std::fs::read(&console).unwrap()).into_owned()
}
