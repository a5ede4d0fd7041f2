//! `cargo xtask bench failover`: how long a failover takes, and whether it stays flat as
//! disks grow (issue 5's target: `failover_s` ≤ 10 s at every size).
//!
//! For 1, 4 and 16 GiB disks (sparse image files, every other MiB filled with random
//! data, so half full) the bench protects the disk with one agent cycle onto the local
//! target on XFS with reflinks (a loop-mounted image, as the appliance's data disk will
//! be), then through the `lifeboat` CLI runs a test failover, its cleanup and a failover,
//! all at the latest processed point. The times are the jobs' own (from the request being
//! accepted to the job's end: the disks at the point and the VM spec are ready; nothing is
//! booted). `bytes_copied` is how much the target filesystem's used space grew over the
//! failover: the data a failover copied (near zero with reflinks). Writes
//! `target/bench/failover.json`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench_replication::{Lifeboat, XfsMount, mount_xfs_sized, out};
use crate::target_dir;

const SIZES_GIB: &[u64] = &[1, 4, 16];
const PASSWORD: &str = "bench password 1234";

/// Fills every other MiB of a new sparse `bytes`-long image with random data.
fn half_full_disk(path: &Path, bytes: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path)?;
    f.set_len(bytes)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for mib in (0..bytes >> 20).step_by(2) {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&buf, mib << 20)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Used bytes of the filesystem at `path`.
fn used_bytes(path: &Path) -> Result<u64> {
    let _ = Command::new("sync").status();
    let text = out(Command::new("df").args(["--output=used", "-B1"]).arg(path))?;
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).context("df answered no used bytes")
}

/// `lifeboat <args> --json` with the bench's session; its JSON answer.
fn lifeboat(lb: &Lifeboat, args: &[&str]) -> Result<serde_json::Value> {
    let text = out(Command::new(lb.bin.join("lifeboat"))
        .arg("--session")
        .arg(lb.dir.join("session.json"))
        .args(args)
        .arg("--json")
        .env("LIFEBOAT_PASSWORD", PASSWORD))?;
    Ok(serde_json::from_str(&text)?)
}

/// A finished job's duration in seconds, from its own timestamps.
fn job_seconds(job: &serde_json::Value) -> Result<f64> {
    if job["state"] != "succeeded" {
        bail!("job did not succeed: {job}");
    }
    let (Some(a), Some(b)) = (job["created_unix_ms"].as_u64(), job["finished_unix_ms"].as_u64())
    else {
        bail!("job without timestamps: {job}");
    };
    Ok((b - a) as f64 / 1000.0)
}

fn one_size(work: &Path, gib: u64) -> Result<serde_json::Value> {
    let dir = work.join(format!("{gib}gib"));
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.img");
    eprintln!("bench: {gib} GiB disk, half full of random data");
    half_full_disk(&disk, gib << 30)?;
    let _xfs: XfsMount = mount_xfs_sized(
        &dir.join("target-xfs.img"),
        &dir.join("lifeboat/target"),
        (2 * gib + 8) << 30,
    )?;
    let lb = Lifeboat::start_with(&dir.join("lifeboat"), &disk, "interval_secs = 3600\n")?;
    let t0 = Instant::now();
    crate::run(
        Command::new(lb.bin.join("lifeboat-agent"))
            .args(["run", "--once", "--config"])
            .arg(&lb.agent_config),
    )?;
    while lb.point_list()?.is_empty() {
        if t0.elapsed() > Duration::from_secs(3600) {
            bail!("no point after an hour; see {}", lb.dir.join("appliance.log").display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let protect_s = t0.elapsed().as_secs_f64();
    eprintln!("bench: protected in {protect_s:.1} s");

    let fingerprint = out(Command::new(lb.bin.join("lifeboat-appliance"))
        .args(["fingerprint", "--config"])
        .arg(&lb.config))?;
    let token = out(Command::new(lb.bin.join("lifeboat-appliance"))
        .args(["setup-token", "--config"])
        .arg(&lb.config))?;
    lifeboat(
        &lb,
        &[
            "setup",
            "--url",
            &lb.config_url,
            "--fingerprint",
            fingerprint.trim(),
            "--name",
            "bench",
            "--setup-token",
            token.trim(),
        ],
    )?;
    let machines = lifeboat(&lb, &["machines"])?;
    let machine = machines["machines"][0]["id"].as_str().context("no machine")?.to_owned();

    let tf = lifeboat(&lb, &["test-failover", &machine, "--point", "latest-processed"])?;
    let test_failover_s = job_seconds(&tf)?;
    let tf_id = tf["result"]["test_failover"].as_str().context("no test failover id")?.to_owned();
    let cleanup = lifeboat(&lb, &["cleanup", &tf_id])?;
    let cleanup_s = job_seconds(&cleanup)?;

    let target = lb.dir.join("target");
    let before = used_bytes(&target)?;
    let fo = lifeboat(&lb, &["failover", &machine, "--point", "latest-processed"])?;
    let failover_s = job_seconds(&fo)?;
    let bytes_copied = used_bytes(&target)?.saturating_sub(before);
    let instant = fo["result"]["disks"][0]["instant"].as_bool().unwrap_or(false);
    eprintln!(
        "bench: {gib} GiB: test failover {test_failover_s:.3} s, cleanup {cleanup_s:.3} s, \
         failover {failover_s:.3} s, {bytes_copied} bytes copied (reflink: {instant})"
    );
    drop(lb);
    Ok(serde_json::json!({
        "disk_gib": gib,
        "data_gib": gib as f64 / 2.0,
        "protect_s": protect_s,
        "test_failover_s": test_failover_s,
        "failover_s": failover_s,
        "cleanup_s": cleanup_s,
        "bytes_copied": bytes_copied,
        "reflink": instant,
    }))
}

/// Runs the benchmark.
pub fn failover() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the failover benchmark mounts XFS on loop devices: run it as root");
    }
    crate::setup::toolchain()?;
    crate::setup::apt(&["xfsprogs", "util-linux"])?;
    crate::plugins::build()?;
    crate::build_binaries()?;
    let work = target_dir().join("bench-failover");
    let mut sizes = Vec::new();
    for &gib in SIZES_GIB {
        if work.exists() {
            for e in std::fs::read_dir(&work)?.flatten() {
                let _ = Command::new("umount").arg(e.path().join("lifeboat/target")).status();
            }
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work)?;
        sizes.push(one_size(&work, gib)?);
        let _ = std::fs::remove_dir_all(&work);
    }
    let result = serde_json::json!({ "sizes": sizes });
    println!("{}", serde_json::to_string_pretty(&result)?);
    crate::write_bench_json("failover", &result)
}
