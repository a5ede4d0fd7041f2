//! `cargo xtask bench replication`: Lifeboat against rsync (over ssh to 127.0.0.1) and
//! restic (local repository), on a generated 2 GiB mixed disk image (about 40 % zeros,
//! 30 % text-like, 30 % random): the initial copy, then a delta after 1 % of the disk
//! was rewritten by random 4 KiB writes. Writes `target/bench/replication.json` under
//! the workspace root and prints a table. Not a test; not part of CI.
//!
//! Lifeboat's local target is put on a fresh XFS loop mount when running as root (points
//! are reflinks, as `docs/targets/local.md` recommends); `LIFEBOAT_BENCH_TARGET_FS=plain`
//! keeps it on the work directory's filesystem instead (on ext4, each point is a copy).
//! For profiling: `LIFEBOAT_BENCH_ONLY_LIFEBOAT=1` stops after Lifeboat's initial copy,
//! `LIFEBOAT_BENCH_APPLIANCE_LOG` sets the appliance's `RUST_LOG` (its log is
//! `target/bench-replication/lifeboat/appliance.log`; `lifeboat_appliance=debug` prints
//! per-batch timings).

use crate::{run, target_dir};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DISK_BYTES: u64 = 2 << 30;

pub(crate) struct Kill(pub(crate) Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

fn mixed_image(path: &Path) -> Result<()> {
    const WORDS: &[&str] = &[
        "replica",
        "disk",
        "lifeboat",
        "the",
        "recovery",
        "point",
        "of",
        "server",
        "data",
        "and",
        "log",
        "error",
        "INFO",
        "2026-11-26",
        "GET",
        "/index.html",
        "200",
        "user",
        "session",
        "=",
    ];
    let f = std::fs::File::create(path)?;
    f.set_len(DISK_BYTES)?;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let region = 64u64 << 10;
    let mut buf = Vec::with_capacity(region as usize + 32);
    for i in 0..DISK_BYTES / region {
        buf.clear();
        match i % 10 {
            0..=3 => continue, // zeros (left as holes: a real image has both)
            4..=6 => {
                while buf.len() < region as usize {
                    buf.extend_from_slice(WORDS[(next() % WORDS.len() as u64) as usize].as_bytes());
                    buf.push(if next() % 8 == 0 { b'\n' } else { b' ' });
                }
            }
            _ => {
                while buf.len() < region as usize {
                    buf.extend_from_slice(&next().to_le_bytes());
                }
            }
        }
        f.write_all_at(&buf[..region as usize], i * region)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Rewrites 1 % of the disk with random 4 KiB writes; returns the distinct bytes changed.
fn rewrite_one_percent(path: &Path) -> Result<u64> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let blocks = DISK_BYTES / 4096;
    let writes = blocks / 100;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut touched = BTreeSet::new();
    let mut buf = [0u8; 4096];
    for _ in 0..writes {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        let b = next() % blocks;
        f.write_all_at(&buf, b * 4096)?;
        touched.insert(b);
    }
    f.sync_all()?;
    Ok(touched.len() as u64 * 4096)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn out(cmd: &mut Command) -> Result<String> {
    let o = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed ({})", o.status);
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub(crate) fn drop_caches() {
    // Fair starts: every tool reads the image from disk, not from the page cache.
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// An XFS filesystem in an image file, loop-mounted; unmounted on drop.
pub(crate) struct XfsMount(PathBuf);
impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a fresh XFS (reflinks on) at `at`, backed by `image`: the filesystem the local
/// target documentation recommends, where a recovery point is a reflink and not a copy.
pub(crate) fn mount_xfs(image: &Path, at: &Path) -> Result<XfsMount> {
    mount_xfs_sized(image, at, 16 << 30)
}

/// [`mount_xfs`] of `bytes` (a sparse image: only what is written takes space).
pub(crate) fn mount_xfs_sized(image: &Path, at: &Path, bytes: u64) -> Result<XfsMount> {
    let f = std::fs::File::create(image)?;
    f.set_len(bytes)?;
    drop(f);
    run(Command::new("mkfs.xfs").args(["-q", "-f", "-m", "reflink=1"]).arg(image))?;
    std::fs::create_dir_all(at)?;
    run(Command::new("mount").args(["-o", "loop"]).arg(image).arg(at))?;
    Ok(XfsMount(at.to_path_buf()))
}

pub(crate) struct Lifeboat {
    pub(crate) bin: PathBuf,
    pub(crate) config: PathBuf,
    /// The configuration server, `https://127.0.0.1:<port>`.
    pub(crate) config_url: String,
    pub(crate) agent_config: PathBuf,
    pub(crate) dir: PathBuf,
    _procs: Kill,
}

impl Lifeboat {
    pub(crate) fn start(dir: &Path, disk: &Path) -> Result<Lifeboat> {
        Self::start_with(dir, disk, "")
    }

    /// With `agent_extra` appended to the agent's configuration.
    pub(crate) fn start_with(dir: &Path, disk: &Path, agent_extra: &str) -> Result<Lifeboat> {
        Self::start_polling(dir, disk, agent_extra, 20)
    }

    /// [`Lifeboat::start_with`], the master target looking for new logs every `poll_ms`
    /// (the replication benchmarks use 20 ms; the appliance's default is 500).
    pub(crate) fn start_polling(
        dir: &Path,
        disk: &Path,
        agent_extra: &str,
        poll_ms: u64,
    ) -> Result<Lifeboat> {
        let bin = target_dir().join("release");
        let plugins = crate::plugins::dir();
        std::fs::create_dir_all(dir.join("plugins"))?;
        let mut grants = String::new();
        for n in ["zstd", "aes-gcm", "local"] {
            for ext in ["wasm", "toml"] {
                std::fs::copy(
                    plugins.join(format!("{n}.{ext}")),
                    dir.join(format!("plugins/{n}.{ext}")),
                )?;
            }
            let sha = out(Command::new("sha256sum").arg(plugins.join(format!("{n}.wasm"))))?;
            grants.push_str(&format!("\n[plugins.grants.{n}]\nsha256 = \"{}\"\n", &sha[..64]));
        }
        grants.push_str(&format!(
            "clock = true\ndirectories = {{ \"/target\" = \"{0}\" }}\nsettings = {{ root = \"/target\", host_root = \"{0}\" }}\n",
            dir.join("target").display()
        ));
        let (cp, pp) = (free_port()?, free_port()?);
        let config = dir.join("appliance.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"state\"\n[config_server]\nlisten = \"127.0.0.1:{cp}\"\n[process_server]\nlisten = \"127.0.0.1:{pp}\"\n\
                 codec_level = 1\n[master_target]\npoll_ms = {poll_ms}\nkeep_points = 100000\n[plugins]\ndir = \"plugins\"\n{grants}"
            ),
        )?;
        let log = std::fs::File::create(dir.join("appliance.log"))?;
        let child = Command::new(bin.join("lifeboat-appliance"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("LIFEBOAT_BENCH_APPLIANCE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()?;
        let procs = Kill(vec![child]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", pp)).is_err() {
            if Instant::now() > deadline {
                bail!("the appliance did not start; see {}", dir.join("appliance.log").display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let passphrase = out(Command::new(bin.join("lifeboat-appliance"))
            .args(["passphrase", "--config"])
            .arg(&config))?;
        let fingerprint = out(Command::new(bin.join("lifeboat-appliance"))
            .args(["fingerprint", "--config"])
            .arg(&config))?;
        let state = dir.join("agent");
        run(Command::new(bin.join("lifeboat-agent"))
            .args(["register", "--appliance", &format!("https://127.0.0.1:{cp}")])
            .args([
                "--fingerprint",
                fingerprint.trim(),
                "--passphrase",
                passphrase.trim(),
                "--state-dir",
            ])
            .arg(&state))?;
        let agent_config = dir.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "state_dir = \"{}\"\ndisks = [\"{}\"]\nnice = 0\n{agent_extra}",
                state.display(),
                disk.display()
            ),
        )?;
        Ok(Lifeboat {
            bin,
            config,
            config_url: format!("https://127.0.0.1:{cp}"),
            agent_config,
            dir: dir.to_path_buf(),
            _procs: procs,
        })
    }

    /// CPU seconds (user + system) used so far by the appliance and by the agents run.
    fn cpu_seconds(&self) -> f64 {
        let tick = 100.0; // USER_HZ on Linux
        let appliance = self._procs.0.last().and_then(|c| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / tick)
        });
        // SAFETY: getrusage writes into the struct it is given.
        let children = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
            let t = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            t(u.ru_utime) + t(u.ru_stime)
        };
        appliance.unwrap_or(0.0) + children
    }

    /// Starts the agent as a daemon (stopped with the appliance), logging to `agent.log`.
    pub(crate) fn spawn_agent(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("agent.log"))?;
        let child = Command::new(self.bin.join("lifeboat-agent"))
            .args(["run", "--config"])
            .arg(&self.agent_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // Stopped first: before the appliance.
        self._procs.0.insert(0, child);
        Ok(())
    }

    /// The recovery points: (point number, id, created unix ms).
    pub(crate) fn point_list(&self) -> Result<Vec<(u64, String, u64)>> {
        let text = out(Command::new(self.bin.join("lifeboat-appliance"))
            .args(["points", "--config"])
            .arg(&self.config))?;
        let mut v = Vec::new();
        for line in text.lines() {
            let j: serde_json::Value = serde_json::from_str(line)?;
            v.push((
                j["point"].as_u64().unwrap_or(0),
                j["id"].as_str().unwrap_or_default().to_string(),
                j["created_unix_ms"].as_u64().unwrap_or(0),
            ));
        }
        v.sort();
        Ok(v)
    }

    fn points(&self) -> Result<usize> {
        Ok(out(Command::new(self.bin.join("lifeboat-appliance"))
            .args(["points", "--config"])
            .arg(&self.config))?
        .lines()
        .count())
    }

    /// Bytes shipped before this call: the appliance writes its counters behind, at least
    /// every second, so they are read 1.2 s from now.
    pub(crate) fn shipped_bytes(&self) -> Result<u64> {
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let s = out(Command::new(self.bin.join("lifeboat-appliance"))
            .args(["stats", "--config"])
            .arg(&self.config))?;
        let v: serde_json::Value = serde_json::from_str(s.trim())?;
        Ok(v["shipped_bytes"].as_u64().unwrap_or(0))
    }

    /// One cycle: from the agent's start until the next recovery point exists.
    fn cycle(&self) -> Result<f64> {
        let before = self.points()?;
        let t = Instant::now();
        run(Command::new(self.bin.join("lifeboat-agent"))
            .args(["run", "--once", "--config"])
            .arg(&self.agent_config)
            .stdin(Stdio::null()))?;
        while self.points()? <= before {
            if t.elapsed() > Duration::from_secs(1800) {
                bail!("no recovery point after 30 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

struct Sshd {
    port: u16,
    key: PathBuf,
    _proc: Kill,
}

fn start_sshd(dir: &Path) -> Result<Sshd> {
    std::fs::create_dir_all(dir)?;
    std::fs::create_dir_all("/run/sshd")?;
    let host_key = dir.join("host_key");
    let key = dir.join("client_key");
    for k in [&host_key, &key] {
        if !k.exists() {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(k))?;
        }
    }
    std::fs::copy(key.with_extension("pub"), dir.join("authorized_keys"))?;
    let port = free_port()?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin yes\n\
             PasswordAuthentication no\nStrictModes no\nPidFile {}\nUsePAM no\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )?;
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("sshd did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Sshd { port, key, _proc: Kill(vec![child]) })
}

/// rsync over ssh; returns (seconds, bytes sent).
fn rsync(sshd: &Sshd, src: &Path, dest_dir: &Path) -> Result<(f64, u64)> {
    let t = Instant::now();
    let stats = out(Command::new("rsync")
        .args(["-a", "--inplace", "--compress-choice=zstd", "--compress-level=1", "--stats", "-e"])
        .arg(format!(
            "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            sshd.port,
            sshd.key.display()
        ))
        .arg(src)
        .arg(format!("root@127.0.0.1:{}/", dest_dir.display())))?;
    let secs = t.elapsed().as_secs_f64();
    let sent = stats
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0);
    Ok((secs, sent))
}

fn restic(repo: &Path, src: &Path) -> Result<f64> {
    let t = Instant::now();
    run(Command::new("restic")
        .args(["backup", "--quiet", "-r"])
        .arg(repo)
        .arg(src)
        .env("RESTIC_PASSWORD", "lifeboat-bench"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the benchmark.
pub fn replication() -> Result<()> {
    crate::setup::toolchain()?;
    crate::setup::apt(&["rsync", "openssh-server", "openssh-client", "restic", "xfsprogs"])?;
    crate::plugins::build()?;
    crate::build_binaries()?;
    let work = target_dir().join("bench-replication");
    if work.exists() {
        // A mount left by an interrupted run.
        let _ =
            Command::new("umount").arg(work.join("lifeboat/target")).stderr(Stdio::null()).status();
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let disk = work.join("disk.img");
    eprintln!("bench: generating a 2 GiB mixed disk image");
    mixed_image(&disk)?;

    // The local target's directory: XFS when we may mount one (points are reflinks), else
    // the work directory's filesystem (points are copies); LIFEBOAT_BENCH_TARGET_FS=plain
    // forces the latter.
    let plain = std::env::var("LIFEBOAT_BENCH_TARGET_FS").is_ok_and(|v| v == "plain");
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    let _xfs = if !plain && root_user {
        Some(mount_xfs(&work.join("target-xfs.img"), &work.join("lifeboat/target"))?)
    } else {
        None
    };
    let target_fs =
        if _xfs.is_some() { "xfs (reflink points)" } else { "work directory's (copied points)" };
    eprintln!("bench: Lifeboat's local target on {target_fs}");

    // Initial copies.
    drop_caches();
    let lifeboat = Lifeboat::start(&work.join("lifeboat"), &disk)?;
    let cpu_before = lifeboat.cpu_seconds();
    let lb_initial = lifeboat.cycle()?;
    let cpu = lifeboat.cpu_seconds() - cpu_before;
    eprintln!(
        "bench: lifeboat initial {lb_initial:.1} s (CPU: {cpu:.1} s in the appliance and agent)"
    );
    if std::env::var_os("LIFEBOAT_BENCH_ONLY_LIFEBOAT").is_some() {
        return Ok(());
    }
    let shipped_after_initial = lifeboat.shipped_bytes()?;

    let sshd = start_sshd(&work.join("sshd"))?;
    let rsync_dest = work.join("rsync-dest");
    std::fs::create_dir_all(&rsync_dest)?;
    drop_caches();
    let (rs_initial, rs_initial_bytes) = rsync(&sshd, &disk, &rsync_dest)?;
    eprintln!("bench: rsync initial {rs_initial:.1} s ({rs_initial_bytes} bytes sent)");

    let repo = work.join("restic-repo");
    run(Command::new("restic")
        .args(["init", "--quiet", "--repository-version", "2", "-r"])
        .arg(&repo)
        .env("RESTIC_PASSWORD", "lifeboat-bench"))?;
    drop_caches();
    let re_initial = restic(&repo, &disk)?;
    eprintln!("bench: restic initial {re_initial:.1} s");

    // Delta: 1 % of the disk rewritten by random 4 KiB writes.
    let changed = rewrite_one_percent(&disk)?;
    drop_caches();
    let lb_delta = lifeboat.cycle()?;
    let lb_wire = lifeboat.shipped_bytes()? - shipped_after_initial;
    drop_caches();
    let (rs_delta, rs_wire) = rsync(&sshd, &disk, &rsync_dest)?;
    drop_caches();
    let re_delta = restic(&repo, &disk)?;

    let result = serde_json::json!({
        "lifeboat_target_fs": target_fs,
        "initial": {"lifeboat_s": r(lb_initial), "rsync_s": r(rs_initial), "restic_s": r(re_initial)},
        "delta": {"lifeboat_s": r(lb_delta), "rsync_s": r(rs_delta), "restic_s": r(re_delta),
                  "lifeboat_wire_bytes": lb_wire, "rsync_wire_bytes": rs_wire, "changed_bytes": changed},
    });
    println!("replication benchmark: 2 GiB mixed image, loopback, seconds (lower is better)");
    println!("{:<10} {:>10} {:>10} {:>10}", "", "lifeboat", "rsync", "restic");
    println!("{:<10} {:>10.1} {:>10.1} {:>10.1}", "initial", lb_initial, rs_initial, re_initial);
    println!("{:<10} {:>10.1} {:>10.1} {:>10.1}", "delta", lb_delta, rs_delta, re_delta);
    println!(
        "delta wire bytes: lifeboat {lb_wire}, rsync {rs_wire} (changed: {changed}); ratio {:.2}",
        lb_wire as f64 / rs_wire.max(1) as f64
    );
    crate::write_bench_json("replication", &result)
}

fn r(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
