//! `cargo xtask bench capture` (root): the eBPF tracker and frozen cuts under a random-write
//! workload on ext4 over a loop device, with the appliance and the local target on loopback.
//! Writes `target/bench/capture.json` under the workspace root and prints a table:
//!
//! - `churn_mbps`: what the workload (fio, 4 KiB random writes, rate-capped) really wrote;
//! - `rpo_p50_s`, `rpo_p99_s`: a marker file gets a line every 100 ms (fsynced); a marker's
//!   RPO is the time from its fsync to the creation of the first point at the target that
//!   holds it (read by mounting the point's image);
//! - `freeze_p99_ms`: from the agent's log (first `FIFREEZE` call to thaw);
//! - `iops_overhead_pct`: fio 4 KiB random direct writes (median of three 10 s runs)
//!   without any tracker loaded and then with the agent running;
//! - `missed_blocks`: 4 KiB blocks where the last point differs from the device once the
//!   writes stopped (the filesystem frozen);
//! - `wire_bytes` against `changed_bytes_zstd`: bytes shipped to the target between the
//!   initial copy's point and the last one, against the sum over consecutive points of the
//!   zstd-1 size of the 4 KiB blocks that changed between them, compressed as one stream in
//!   block order.

use crate::bench_replication::{Lifeboat, XfsMount, mount_xfs};
use crate::target_dir;
use anyhow::{Context, Result, bail};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DISK_BYTES: u64 = 1 << 30;
const WORKLOAD_SECS: u64 = 30;
const CHURN_RATE: &str = "24m";
/// The agent's cycle interval: a point every this many seconds.
const INTERVAL_SECS: u64 = 2;

fn sh(program: &str, args: &[&str]) -> Result<String> {
    Ok(crate::bench_replication::out(Command::new(program).args(args))?.trim().to_string())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Unmounts and detaches on drop.
struct Device {
    dev: String,
    mnt: PathBuf,
}
impl Drop for Device {
    fn drop(&mut self) {
        let m = self.mnt.to_string_lossy().to_string();
        let _ = Command::new("fsfreeze").args(["-u", &m]).status();
        let _ = Command::new("umount").arg(&m).status();
        let _ = Command::new("losetup").args(["--detach", &self.dev]).status();
    }
}

/// fio on `file`: returns (write IOPS, write bytes per second).
fn fio(file: &Path, secs: u64, rate: Option<&str>) -> Result<(f64, f64)> {
    let mut cmd = Command::new("fio");
    cmd.args(["--name=w", "--rw=randwrite", "--bs=4k", "--direct=1", "--ioengine=psync"])
        .arg(format!("--filename={}", file.display()))
        .args(["--size=256m", "--time_based", "--output-format=json"])
        .arg(format!("--runtime={secs}"));
    if let Some(r) = rate {
        cmd.arg(format!("--rate={r}"));
    }
    let text = crate::bench_replication::out(&mut cmd)?;
    let j: serde_json::Value = serde_json::from_str(&text).context("fio's JSON output")?;
    let w = &j["jobs"][0]["write"];
    Ok((w["iops"].as_f64().unwrap_or(0.0), w["bw_bytes"].as_f64().unwrap_or(0.0)))
}

/// The text without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The median IOPS of three 10-second fio runs (single runs vary by ±10 % here).
fn median_iops(file: &Path) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(fio(file, 10, None)?.0);
    }
    Ok(percentile(&mut v, 0.5))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

/// The image of a point's only disk at the local target.
fn point_image(lb: &Lifeboat, id: &str) -> Result<PathBuf> {
    let dir = lb.dir.join("target/points").join(id);
    for e in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "img") {
            return Ok(p);
        }
    }
    bail!("no image in {}", dir.display())
}

/// The highest marker sequence in a point (mounting its image read-only, no journal replay).
fn markers_in(image: &Path, at: &Path) -> Result<Option<u64>> {
    std::fs::create_dir_all(at)?;
    sh("mount", &["-o", "ro,loop,noload", &image.to_string_lossy(), &at.to_string_lossy()])?;
    let text = std::fs::read_to_string(at.join("markers")).unwrap_or_default();
    let _ = Command::new("umount").arg(at).status();
    Ok(text.lines().filter_map(|l| l.split(',').next()?.trim().parse::<u64>().ok()).max())
}

/// The newest point the agent cut (from its log).
fn agent_last_point(lb: &Lifeboat) -> u64 {
    let log = strip_ansi(&std::fs::read_to_string(lb.dir.join("agent.log")).unwrap_or_default());
    log.lines()
        .filter_map(|l| l.split("cycle done: point ").nth(1)?.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Whether the agent cut a point after `point` in a cycle that read under 1 MiB.
fn agent_quiet_after(lb: &Lifeboat, point: u64) -> bool {
    let log = strip_ansi(&std::fs::read_to_string(lb.dir.join("agent.log")).unwrap_or_default());
    log.lines().any(|l| {
        let p: Option<u64> =
            l.split("cycle done: point ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok());
        let read: Option<u64> =
            l.split("read_bytes=").nth(1).and_then(|r| r.split(' ').next()?.parse().ok());
        p.is_some_and(|p| p > point) && read.is_some_and(|r| r < 1 << 20)
    })
}

/// Waits until the appliance holds the newest point the agent cut; returns that point.
fn wait_caught_up(lb: &Lifeboat) -> Result<(u64, String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // The agent's newest point, read again each time: the appliance has caught up only
        // when it holds the point the agent cut last, not one it cut minutes ago (a
        // backlog left by the IOPS runs would otherwise be measured as RPO).
        let want = agent_last_point(lb);
        if let Some(p) = lb.point_list()?.into_iter().find(|p| p.0 >= want) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("the appliance did not catch up with the agent's points in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn capture() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the capture benchmark loads BPF and uses loop devices: run it as root");
    }
    crate::setup::toolchain()?;
    crate::setup::apt(&["fio", "e2fsprogs", "xfsprogs", "util-linux"])?;
    crate::plugins::build()?;
    crate::build_binaries()?;
    let work = target_dir().join("bench-capture");
    if work.exists() {
        for m in ["mnt", "lifeboat/target", "pm"] {
            let _ = Command::new("umount").arg(work.join(m)).status();
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    std::fs::create_dir_all(&work)?;
    // No tracker left over from earlier runs or tests: the baseline IOPS are untracked.
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/lifeboat");

    let img = work.join("disk.img");
    std::fs::File::create(&img)?.set_len(DISK_BYTES)?;
    let dev = sh("losetup", &["--find", "--show", &img.to_string_lossy()])?;
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let device = Device { dev: dev.clone(), mnt: mnt.clone() };
    sh("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &dev])?;
    sh("mount", &[&dev, &mnt.to_string_lossy()])?;

    eprintln!("bench: fio 4 KiB random writes, 3 × 10 s, without a tracker");
    let iops_before = median_iops(&mnt.join("fio-iops"))?;

    let _xfs: XfsMount = mount_xfs(&work.join("target-xfs.img"), &work.join("lifeboat/target"))?;
    let mut lb = Lifeboat::start_with(
        &work.join("lifeboat"),
        Path::new(&dev),
        &format!("interval_secs = {INTERVAL_SECS}\n"),
    )?;
    lb.spawn_agent()?;
    let iops_after = initial_copy_then_iops(&lb, &work, &mnt)?;
    let (p0, shipped0) = window_start(&lb)?;

    let (markers, workload_points, churn_bps) = run_workload(&lb, &mnt)?;

    let (points, shipped) = freeze_and_list_points(&lb, &mnt, &p0, shipped0)?;

    let (mut rpo, unplaced) = marker_rpo(&lb, &work, &points, &markers)?;
    let (missed, changed_zstd) = missed_and_changed(&lb, &img, &points)?;
    let (cuts, freeze_p99) = workload_freezes(&work, workload_points);
    let rpo_p50 = percentile(&mut rpo.clone(), 0.5);
    let rpo_p99 = percentile(&mut rpo, 0.99);
    let overhead = (1.0 - iops_after / iops_before.max(1.0)) * 100.0;
    drop(device);

    report(&Measured {
        churn_bps,
        missed,
        rpo_p50,
        rpo_p99,
        freeze_p99,
        overhead,
        shipped,
        changed_zstd,
        cuts,
        points: &points,
        markers: &markers,
        unplaced,
        iops_before,
        iops_after,
    })
}

/// Waits for the initial copy's point, then measures the IOPS with the tracker.
fn initial_copy_then_iops(lb: &Lifeboat, work: &Path, mnt: &Path) -> Result<f64> {
    let started = Instant::now();
    while lb.point_list()?.is_empty() {
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "no initial point after 5 minutes; see {}",
                work.join("lifeboat/agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("bench: initial copy done; fio again with the tracker");
    let iops_after = median_iops(&mnt.join("fio-iops"))?;
    Ok(iops_after)
}

/// Waits for the start of the measured window; its first point and the bytes shipped so far.
fn window_start(lb: &Lifeboat) -> Result<(Point, u64)> {
    // The window starts once the agent has caught up with the writes (a cycle that read
    // almost nothing) and the appliance has everything the agent cut so far.
    let since = agent_last_point(lb);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !agent_quiet_after(lb, since) {
        if Instant::now() > deadline {
            bail!("the agent did not catch up with the IOPS runs in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let p0 = wait_caught_up(lb)?;
    let shipped0 = lb.shipped_bytes()?;
    Ok((p0, shipped0))
}

/// The rate-capped random-write workload with markers written alongside; the markers
/// (sequence, fsync time), the first and last points the agent cut during the workload, and
/// the churn in bytes per second.
fn run_workload(lb: &Lifeboat, mnt: &Path) -> Result<(Vec<Marker>, (u64, u64), f64)> {
    eprintln!(
        "bench: {WORKLOAD_SECS} s of random writes capped at {CHURN_RATE}B/s, markers every 100 ms"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let marker = {
        let (stop, path) = (stop.clone(), mnt.join("markers"));
        std::thread::spawn(move || -> Result<Vec<(u64, u64)>> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            let mut out = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                writeln!(f, "{seq},{}", unix_ms())?;
                f.sync_data()?;
                out.push((seq, unix_ms()));
                seq += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(out)
        })
    };
    let first_cut = agent_last_point(lb);
    let (_, churn_bps) = fio(&mnt.join("fio-churn"), WORKLOAD_SECS, Some(CHURN_RATE))?;
    let workload_points = (first_cut, agent_last_point(lb));
    stop.store(true, Ordering::Relaxed);
    let markers = marker.join().map_err(|_| anyhow::anyhow!("marker thread panicked"))??;
    Ok((markers, workload_points, churn_bps))
}

/// Freezes the filesystem and waits for the appliance to hold a point cut after that; the
/// points of the window and the bytes shipped during it.
fn freeze_and_list_points(
    lb: &Lifeboat,
    mnt: &Path,
    p0: &Point,
    shipped0: u64,
) -> Result<(Vec<Point>, u64)> {
    // Writes stop: hold the filesystem still, let the agent cut a point after that, and wait
    // until the appliance has it.
    sh("sync", &[])?;
    sh("fsfreeze", &["-f", &mnt.to_string_lossy()])?;
    std::thread::sleep(Duration::from_secs(2 * INTERVAL_SECS + 1));
    let last = wait_caught_up(lb)?;
    let shipped = lb.shipped_bytes()? - shipped0;
    let points: Vec<_> =
        lb.point_list()?.into_iter().filter(|p| p.0 >= p0.0 && p.0 <= last.0).collect();
    eprintln!("bench: {} points to examine", points.len());
    Ok((points, shipped))
}

/// The RPO of each marker held by a point, and how many markers no point holds.
fn marker_rpo(
    lb: &Lifeboat,
    work: &Path,
    points: &[Point],
    markers: &[Marker],
) -> Result<(Vec<f64>, usize)> {
    // RPO: the first point holding each marker.
    let pm = work.join("pm");
    let mut held = Vec::new();
    for (_, id, created) in points {
        held.push((markers_in(&point_image(lb, id)?, &pm)?, *created));
    }
    let mut rpo: Vec<f64> = Vec::new();
    for (seq, t) in markers {
        if let Some((_, created)) = held.iter().find(|(m, _)| m.is_some_and(|m| m >= *seq)) {
            rpo.push((*created as f64 - *t as f64) / 1000.0);
        }
    }
    let unplaced = markers.len() - rpo.len();
    Ok((rpo, unplaced))
}

/// The blocks where the last point differs from the device, and the zstd-1 size of the
/// blocks changed between consecutive points.
fn missed_and_changed(lb: &Lifeboat, img: &Path, points: &[Point]) -> Result<(usize, u64)> {
    // Missed blocks, and the changed blocks between consecutive points.
    let device_now = std::fs::read(img)?;
    let mut prev = std::fs::read(point_image(lb, &points[0].1)?)?;
    let mut changed_zstd = 0u64;
    for (_, id, _) in &points[1..] {
        let cur = std::fs::read(point_image(lb, id)?)?;
        let mut stream = Vec::new();
        for (a, b) in prev.chunks(4096).zip(cur.chunks(4096)) {
            if a != b {
                stream.extend_from_slice(b);
            }
        }
        changed_zstd += zstd::bulk::compress(&stream, 1)?.len() as u64;
        prev = cur;
    }
    let missed = prev.chunks(4096).zip(device_now.chunks(4096)).filter(|(a, b)| a != b).count();
    Ok((missed, changed_zstd))
}

/// From the agent's log: how many points were cut during the workload, and the p99 of
/// their freezes in milliseconds.
fn workload_freezes(work: &Path, workload_points: (u64, u64)) -> (usize, f64) {
    let log = std::fs::read_to_string(work.join("lifeboat/agent.log")).unwrap_or_default();
    let log = strip_ansi(&log);
    // Freezes of the points cut while the workload ran.
    let mut freezes: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            let point: u64 =
                l.split("cycle done: point ").nth(1)?.split(' ').next()?.parse().ok()?;
            let ms: f64 = l.split("freeze_ms=").nth(1)?.split(' ').next()?.trim().parse().ok()?;
            (point > workload_points.0 && point <= workload_points.1).then_some(ms)
        })
        .collect();
    let cuts = freezes.len();
    let freeze_p99 = percentile(&mut freezes, 0.99);
    (cuts, freeze_p99)
}

/// A point at the target: (number, id, creation time in Unix ms).
type Point = (u64, String, u64);
/// A marker line: (sequence number, Unix ms of its fsync).
type Marker = (u64, u64);

/// What the capture benchmark measured, for its report.
struct Measured<'a> {
    churn_bps: f64,
    missed: usize,
    rpo_p50: f64,
    rpo_p99: f64,
    freeze_p99: f64,
    overhead: f64,
    shipped: u64,
    changed_zstd: u64,
    cuts: usize,
    points: &'a [Point],
    markers: &'a [Marker],
    unplaced: usize,
    iops_before: f64,
    iops_after: f64,
}

/// Prints the table and writes `capture.json`.
fn report(m: &Measured) -> Result<()> {
    let Measured {
        churn_bps,
        missed,
        rpo_p50,
        rpo_p99,
        freeze_p99,
        overhead,
        shipped,
        changed_zstd,
        cuts,
        points,
        markers,
        unplaced,
        iops_before,
        iops_after,
    } = *m;
    let result = serde_json::json!({
        "tracker": "ebpf",
        "churn_mbps": (churn_bps / 1e6 * 100.0).round() / 100.0,
        "missed_blocks": missed,
        "rpo_p50_s": (rpo_p50 * 100.0).round() / 100.0,
        "rpo_p99_s": (rpo_p99 * 100.0).round() / 100.0,
        "freeze_p99_ms": freeze_p99,
        "iops_overhead_pct": (overhead * 10.0).round() / 10.0,
        "wire_bytes": shipped,
        "changed_bytes_zstd": changed_zstd,
    });
    println!("capture benchmark: ext4 on a 1 GiB loop device, fio 4 KiB random writes");
    println!("  churn               {:.1} MB/s for {WORKLOAD_SECS} s", churn_bps / 1e6);
    println!(
        "  points              {} examined, {cuts} cut under a freeze during the workload",
        points.len()
    );
    println!(
        "  RPO                 p50 {rpo_p50:.2} s, p99 {rpo_p99:.2} s ({} markers, {unplaced} in no point)",
        markers.len()
    );
    println!("  freeze              p99 {freeze_p99} ms");
    println!(
        "  IOPS                {iops_before:.0} without, {iops_after:.0} with the tracker ({overhead:.1} % overhead)"
    );
    println!("  missed blocks       {missed}");
    println!(
        "  wire bytes          {shipped}, changed blocks zstd-1 {changed_zstd} (ratio {:.2})",
        shipped as f64 / changed_zstd.max(1) as f64
    );
    crate::write_bench_json("capture", &result)
}
