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
                 [config_server]\nlisten = \"127.0.0.1:{}\"\nsample_secs = 1\n\
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

    /// The appliance's counters (`lifeboat-appliance stats`), counting everything counted
    /// before this call: the appliance writes them behind, at least every second, so they
    /// are read 1.2 s from now.
    pub fn stats(&self, config: &Path) -> serde_json::Value {
        std::thread::sleep(std::time::Duration::from_millis(1200));
        serde_json::from_str(self.cli(config, &["stats"]).trim()).unwrap()
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

    /// Waits up to `limit` for job `id` to succeed (a failed job fails the test); its JSON.
    pub fn wait_job(&self, id: &str, limit: Duration) -> serde_json::Value {
        wait_for(limit, &format!("job {id}"), || {
            let v = self.lifeboat_json(&["jobs", id]);
            assert_ne!(v["state"], "failed", "job {id} failed: {v}");
            (v["state"] == "succeeded").then_some(v)
        })
    }

    /// `lifeboat-agent reprotect --config <agent_cfg> <extra…>` (one pass, or failback's
    /// final one with `--watch`), which must succeed; its standard output.
    pub fn agent_reprotect(&self, agent_cfg: &Path, extra: &[&str]) -> String {
        let o = Command::new(self.bin.join("lifeboat-agent"))
            .args(["reprotect", "--config"])
            .arg(agent_cfg)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "lifeboat-agent reprotect: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
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
        let token = self.cli(config, &["setup-token"]).trim().to_owned();
        let o = self.lifeboat(
            &[
                "setup",
                "--url",
                &url,
                "--fingerprint",
                &fp,
                "--name",
                "admin",
                "--setup-token",
                &token,
            ],
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

mod azurite;
mod roots;
mod vm;
pub use azurite::*;
pub use roots::*;
pub use vm::*;

/// The VMware target's test kit: vcsim on loopback.
pub use lifeboat_plugin_vmware::testkit::{self as vmware, Vcsim};

/// The body of `[plugins.grants.vmware]` for vcsim `v`: its authority and CA, host-disks on
/// its datastore folder, and its settings with `extra` overriding them.
pub fn vmware_grant(v: &Vcsim, extra: &[(&str, &str)]) -> String {
    let mut settings = v.settings();
    for (k, val) in extra {
        settings.retain(|(a, _)| a != k);
        settings.push(((*k).to_owned(), (*val).to_owned()));
    }
    let settings: Vec<String> = settings.iter().map(|(k, val)| format!("{k} = {val:?}")).collect();
    format!(
        "clock = true\nhttp_hosts = [\"{}\"]\ntls_roots = [{:?}]\nattached_disks = {{ datastores = {{ {} = {:?} }} }}\nsettings = {{ {} }}\n",
        v.authority(),
        v.ca_pem.display().to_string(),
        vmware::DATASTORE,
        v.datastore_dir.display().to_string(),
        settings.join(", ")
    )
}

/// `qemu-img compare` of two raw images: true when they read the same.
pub fn same_raw(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// The folder `cargo xtask package` fills: `<target>/packages`.
pub fn packages_dir() -> PathBuf {
    let dir = build_dirs().0.parent().unwrap().join("packages");
    assert!(
        dir.join("SHA256SUMS").exists(),
        "{} missing: run `cargo xtask package`",
        dir.display()
    );
    dir
}

/// Makes the appliance configuration `cfg` serve `dir` at `/downloads/`.
pub fn serve_downloads(cfg: &Path, dir: &Path) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains("[config_server]\n"), "{text}");
    let text = text.replacen(
        "[config_server]\n",
        &format!("[config_server]\ndownloads = \"{}\"\n", dir.display()),
        1,
    );
    std::fs::write(cfg, text).unwrap();
}
