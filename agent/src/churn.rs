//! The churn profiler: how fast each disk is written (MB/s, IOPS, write sizes), from the eBPF
//! tracker's per-disk counters, so that a link and a process server can be sized before a
//! machine is protected (`lifeboat-agent churn`). It needs no registration and no appliance:
//! it loads its own instance of the tracker, only reads counters, and unloads it at exit.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tracker::ebpf::{Bpf, SlotCounters, kernel_dev, words_for};

/// Labels of the write-size buckets.
pub const SIZE_LABELS: [&str; 5] = ["<=4K", "<=16K", "<=64K", "<=256K", ">256K"];

/// One disk's writes over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Disk index in the configuration.
    pub disk: usize,
    /// Length of the interval, seconds.
    pub seconds: f64,
    /// Megabytes (10^6 bytes) per second written, discarded or zeroed.
    pub mb_per_s: f64,
    /// Write-like requests per second.
    pub iops: f64,
    /// Requests in the interval: writes, discards, write-zeroes, secure erases.
    pub writes: u64,
    /// Discards in the interval.
    pub discards: u64,
    /// Write-zeroes in the interval.
    pub write_zeroes: u64,
    /// Requests by size ([`SIZE_LABELS`]).
    pub sizes: [u64; 5],
}

impl Sample {
    /// The sample between two readings of one disk's counters `seconds` apart.
    pub fn between(disk: usize, a: &SlotCounters, b: &SlotCounters, seconds: f64) -> Sample {
        let d = |x: u64, y: u64| y.saturating_sub(x);
        let requests = d(a.writes, b.writes)
            + d(a.discards, b.discards)
            + d(a.write_zeroes, b.write_zeroes)
            + d(a.secure_erases, b.secure_erases);
        let s = seconds.max(1e-9);
        Sample {
            disk,
            seconds,
            mb_per_s: d(a.bytes, b.bytes) as f64 / 1e6 / s,
            iops: requests as f64 / s,
            writes: d(a.writes, b.writes),
            discards: d(a.discards, b.discards),
            write_zeroes: d(a.write_zeroes, b.write_zeroes),
            sizes: std::array::from_fn(|i| d(a.sizes[i], b.sizes[i])),
        }
    }

    /// One line for people.
    pub fn line(&self, path: &Path) -> String {
        let total: u64 = self.sizes.iter().sum();
        let sizes: Vec<String> = SIZE_LABELS
            .iter()
            .zip(self.sizes)
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| format!("{l} {:.0}%", 100.0 * n as f64 / total.max(1) as f64))
            .collect();
        format!(
            "disk {} {}: {:.1} MB/s, {:.0} IOPS ({} writes, {} discards, {} write-zeroes){}{}",
            self.disk,
            path.display(),
            self.mb_per_s,
            self.iops,
            self.writes,
            self.discards,
            self.write_zeroes,
            if sizes.is_empty() { "" } else { "; sizes " },
            sizes.join(" ")
        )
    }
}

/// Mean and peak over a disk's samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Disk index.
    pub disk: usize,
    /// Mean MB/s.
    pub mean_mb_per_s: f64,
    /// Highest interval's MB/s.
    pub peak_mb_per_s: f64,
    /// Mean IOPS.
    pub mean_iops: f64,
    /// Highest interval's IOPS.
    pub peak_iops: f64,
}

/// Sums up the samples of `disk`.
pub fn summarize(disk: usize, samples: &[Sample]) -> Summary {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.disk == disk).collect();
    let secs: f64 = mine.iter().map(|s| s.seconds).sum::<f64>().max(1e-9);
    let peak = |f: fn(&Sample) -> f64| mine.iter().map(|s| f(s)).fold(0.0, f64::max);
    Summary {
        disk,
        mean_mb_per_s: mine.iter().map(|s| s.mb_per_s * s.seconds).sum::<f64>() / secs,
        peak_mb_per_s: peak(|s| s.mb_per_s),
        mean_iops: mine.iter().map(|s| s.iops * s.seconds).sum::<f64>() / secs,
        peak_iops: peak(|s| s.iops),
    }
}

/// Profiles `disks` for `duration`, a sample every `every`, calling `report` with each
/// sample. Loads a tracker of its own (pinned as `profile-<pid>`, removed at the end).
pub fn profile(
    disks: &[PathBuf],
    duration: Duration,
    every: Duration,
    mut report: impl FnMut(&Sample, &Path),
) -> Result<Vec<Sample>, String> {
    let mut devs = Vec::new();
    let mut sizes = Vec::new();
    for p in disks {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !meta.file_type().is_block_device() {
            return Err(format!(
                "{} is not a block device: churn is measured on block devices",
                p.display()
            ));
        }
        let size = crate::disk::Disk::open(p).map_err(|e| e.to_string())?.size();
        devs.push(kernel_dev(meta.rdev()));
        sizes.push(size);
    }
    let (bpf, _) = Bpf::open_or_load(&format!("profile-{}", std::process::id()), words_for(&sizes))
        .map_err(|e| {
            format!("cannot load the eBPF tracker (root, BTF and tracing are needed): {e}")
        })?;
    let result = (|| {
        for (dev, size) in devs.iter().zip(&sizes) {
            bpf.register(*dev, size.div_ceil(4096)).map_err(|e| e.to_string())?;
        }
        let read = |bpf: &Bpf| -> Result<Vec<SlotCounters>, String> {
            devs.iter()
                .map(|d| Ok(bpf.counters_of(*d).map_err(|e| e.to_string())?.unwrap_or_default()))
                .collect()
        };
        let started = Instant::now();
        let mut last = (Instant::now(), read(&bpf)?);
        let mut samples = Vec::new();
        while started.elapsed() < duration {
            std::thread::sleep(
                every
                    .min(duration.saturating_sub(started.elapsed()))
                    .max(Duration::from_millis(10)),
            );
            let now = (Instant::now(), read(&bpf)?);
            let secs = (now.0 - last.0).as_secs_f64();
            for (i, (a, b)) in last.1.iter().zip(&now.1).enumerate() {
                let s = Sample::between(i, a, b, secs);
                report(&s, &disks[i]);
                samples.push(s);
            }
            last = now;
        }
        Ok(samples)
    })();
    if let Err(e) = bpf.unpin() {
        tracing::warn!("cannot unpin the profiler's tracker: {e}");
    }
    result
}

/// The report `lifeboat-agent churn --report` sends to the appliance.
pub fn to_report(disks: &[PathBuf], samples: &[Sample], seconds: f64) -> lifeboat_api::ChurnReport {
    lifeboat_api::ChurnReport {
        seconds,
        disks: disks
            .iter()
            .enumerate()
            .zip(0u32..)
            .map(|((i, path), index)| {
                let sum = summarize(i, samples);
                let mine: Vec<&Sample> = samples.iter().filter(|s| s.disk == i).collect();
                let mut sizes = [0u64; 5];
                for s in &mine {
                    for (t, n) in sizes.iter_mut().zip(s.sizes) {
                        *t += n;
                    }
                }
                lifeboat_api::DiskChurn {
                    index,
                    path: path.display().to_string(),
                    mean_mb_per_s: sum.mean_mb_per_s,
                    peak_mb_per_s: sum.peak_mb_per_s,
                    mean_iops: sum.mean_iops,
                    peak_iops: sum.peak_iops,
                    sizes,
                    samples_mb_per_s: mine.iter().map(|s| s.mb_per_s).collect(),
                    samples_iops: mine.iter().map(|s| s.iops).collect(),
                }
            })
            .collect(),
    }
}

/// Sends `report` to the appliance this agent registered with (its state directory).
pub fn send_report(state_dir: &Path, report: &lifeboat_api::ChurnReport) -> Result<(), String> {
    let reg = crate::registration::Registration::load(state_dir).map_err(|e| e.to_string())?;
    let tls = reg.tls().map_err(|e| e.to_string())?;
    let client = lifeboat_net::Client::new(&reg.record.process_server_url, tls)
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (status, _, body) = rt
        .block_on(client.post_json("/api/v1/churn", report, http::HeaderMap::new()))
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the appliance answered {status}: {}", String::from_utf8_lossy(&body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(writes: u64, bytes: u64, small: u64) -> SlotCounters {
        SlotCounters {
            writes,
            bytes,
            sizes: [small, writes - small, 0, 0, 0],
            ..Default::default()
        }
    }

    #[test]
    fn samples_and_summaries() {
        let a = counters(100, 1_000_000, 50);
        let b = counters(300, 5_000_000, 200);
        let s = Sample::between(0, &a, &b, 2.0);
        assert_eq!((s.writes, s.sizes), (200, [150, 50, 0, 0, 0]));
        assert!((s.mb_per_s - 2.0).abs() < 1e-9 && (s.iops - 100.0).abs() < 1e-9);
        assert!(
            s.line(Path::new("/dev/x")).contains("2.0 MB/s, 100 IOPS"),
            "{}",
            s.line(Path::new("/dev/x"))
        );
        assert!(s.line(Path::new("/dev/x")).contains("<=4K 75% <=16K 25%"));
        // Counters that went backwards (the tracker was reloaded) count as no writes.
        let z = Sample::between(0, &b, &a, 1.0);
        assert_eq!((z.writes, z.mb_per_s), (0, 0.0));
        let t = Sample { seconds: 1.0, mb_per_s: 8.0, iops: 10.0, ..s.clone() };
        let sum = summarize(0, &[s, t]);
        assert!((sum.mean_mb_per_s - 4.0).abs() < 1e-9, "{sum:?}");
        assert_eq!((sum.peak_mb_per_s, sum.peak_iops), (8.0, 100.0));
    }
}
