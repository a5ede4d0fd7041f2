#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::tracker::HashScanConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::Write as _;
use std::time::Duration;

#[test]
fn pending_round_trips_and_refuses_malformed_files() {
    let ranges = vec![(0u64, 3u64), (10, 11), (1 << 40, (1 << 40) + 7)];
    let enc = encode_pending(&ranges, false);
    assert_eq!(decode_pending(&enc), Some((ranges.clone(), false)));
    assert_eq!(decode_pending(&encode_pending(&[], false)), Some((vec![], false)));
    assert_eq!(decode_pending(&encode_pending(&ranges, true)), Some((ranges.clone(), true)));
    // Truncated anywhere, one byte flipped anywhere: refused.
    for n in 0..enc.len() {
        assert_eq!(decode_pending(&enc[..n]), None, "truncated to {n}");
    }
    for i in 0..enc.len() {
        let mut bad = enc.clone();
        bad[i] ^= 0x40;
        assert_eq!(decode_pending(&bad), None, "byte {i} flipped");
    }
    // Well sealed but meaningless: an empty range, a count that lies, another version.
    let reseal = |mut body: Vec<u8>| {
        body.truncate(body.len() - 8);
        let sum = xxhash_rust::xxh3::xxh3_64(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        body
    };
    assert_eq!(decode_pending(&encode_pending(&[(5, 5)], false)), None);
    let mut unknown_flag = encode_pending(&ranges, false);
    unknown_flag[12] = 2;
    assert_eq!(decode_pending(&reseal(unknown_flag)), None);
    let mut lying = encode_pending(&ranges, false);
    lying[16] = 9;
    assert_eq!(decode_pending(&reseal(lying)), None);
    let mut v2 = encode_pending(&ranges, false);
    v2[8] = 2;
    assert_eq!(decode_pending(&reseal(v2)), None);
    let mut huge = encode_pending(&[], false);
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(decode_pending(&reseal(huge)), None);
}

#[test]
fn a_damaged_pending_file_means_the_whole_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.ebpf-pending");
    assert_eq!(load_pending(&p, 100).unwrap(), (vec![], false));
    fs::write(&p, b"garbage").unwrap();
    assert_eq!(load_pending(&p, 100).unwrap(), (vec![(0, 100)], false));
    store_pending(&p, &[(1, 2)], false).unwrap();
    assert_eq!(load_pending(&p, 100).unwrap(), (vec![(1, 2)], false));
    // Incomplete and empty is still a file: the flag is what matters.
    store_pending(&p, &[], true).unwrap();
    assert_eq!(load_pending(&p, 100).unwrap(), (vec![], true));
    store_pending(&p, &[], false).unwrap();
    assert!(!p.exists());
}

#[test]
fn the_shipped_map_sets_bits_per_64k_and_knows_missing_from_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.ebpf-shipped");
    assert_eq!(load_shipped(&p), Shipped::Missing);
    // 4 KiB blocks 0..1 and 17..40 of a 100-block disk: 64 KiB blocks 0, 1 and 2.
    mark_shipped(&p, &[(0, 1), (17, 40)], 100).unwrap();
    let Shipped::Bits(bits) = load_shipped(&p) else { panic!("{:?}", load_shipped(&p)) };
    assert_eq!(bit_ranges(&bits).collect::<Vec<_>>(), vec![(0, 3)]);
    mark_shipped(&p, &[(96, 100)], 100).unwrap();
    let Shipped::Bits(bits) = load_shipped(&p) else { panic!() };
    assert_eq!(bit_ranges(&bits).collect::<Vec<_>>(), vec![(0, 3), (6, 7)]);
    for n in [0, 10, 23, 25] {
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..n.min(b.len())]).unwrap();
        assert_eq!(load_shipped(&p), Shipped::Damaged, "truncated to {n}");
    }
    // A damaged map counts as "everything shipped".
    mark_shipped(&p, &[(0, 1)], 100).unwrap();
    let Shipped::Bits(bits) = load_shipped(&p) else { panic!() };
    assert_eq!(bit_ranges(&bits).collect::<Vec<_>>(), vec![(0, 8)]);
}

#[test]
fn words_cover_both_epochs() {
    assert_eq!(words_for(&[64 * 4096]), 2);
    assert_eq!(words_for(&[64 * 4096 + 1, 1]), 4 + 2);
}

// ---- With the kernel: root, bpffs, loop devices. Skipped (and said so) elsewhere. ----

use crate::testutil::sh;

/// A loop device over a sparse image, detached (and its pins removed) on drop.
struct Lab {
    dir: tempfile::TempDir,
    dev: String,
    size: u64,
    pin_name: String,
    mounted: Option<PathBuf>,
}

impl Lab {
    fn new(size: u64, tag: &str) -> Option<Lab> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: the eBPF tracker tests need root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        File::create(&img).unwrap().set_len(size).unwrap();
        let dev = match sh("losetup", &["--find", "--show", img.to_str().unwrap()]) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("SKIPPED: cannot create a loop device here: {e}");
                return None;
            }
        };
        let pin_name = format!("test-{}-{tag}", std::process::id());
        Some(Lab { dir, dev, size, pin_name, mounted: None })
    }

    fn bpf(&self) -> Arc<Bpf> {
        let (b, _) = Bpf::open_or_load(&self.pin_name, words_for(&[self.size])).unwrap();
        Arc::new(b)
    }

    fn tracker(&self, bpf: Arc<Bpf>) -> Ebpf {
        let hs = HashScan::new(HashScanConfig::new(self.dir.path().join("map"))).unwrap();
        Ebpf::new(hs, bpf, Path::new(&self.dev)).unwrap()
    }

    fn mkfs_mount(&mut self, mkfs: &[&str]) {
        sh(mkfs[0], &[&mkfs[1..], &[self.dev.as_str()]].concat()).unwrap();
        let mnt = self.dir.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        sh("mount", &[&self.dev, mnt.to_str().unwrap()]).unwrap();
        self.mounted = Some(mnt);
    }

    fn mnt(&self) -> &Path {
        self.mounted.as_deref().expect("mounted")
    }

    /// The device's content as it is on disk (direct reads).
    fn content(&self) -> Vec<u8> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(&self.dev)
            .unwrap();
        let mut buf = vec![0u8; self.size as usize + 4096];
        let off = buf.as_ptr().align_offset(4096);
        f.read_exact_at(&mut buf[off..off + self.size as usize], 0).unwrap();
        buf[off..off + self.size as usize].to_vec()
    }

    fn freeze(&self, on: bool) {
        sh("fsfreeze", &[if on { "-f" } else { "-u" }, self.mnt().to_str().unwrap()]).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(m) = &self.mounted {
            let _ = sh("fsfreeze", &["-u", m.to_str().unwrap()]);
            let _ = sh("umount", &[m.to_str().unwrap()]);
        }
        let _ = sh("losetup", &["--detach", &self.dev]);
        let _ = fs::remove_dir_all(Path::new(kernel::BPFFS).join("lifeboat").join(format!(
            "v{}-{}",
            kernel::LAYOUT_VERSION,
            self.pin_name
        )));
    }
}

/// Runs a collect into `replica`, commits, and returns (stats, bytes of data sent).
fn cycle(t: &mut Ebpf, dev: &str, replica: &mut [u8]) -> CycleStats {
    let disk = Disk::open(dev).unwrap();
    let stats = t
        .collect(&disk, &mut |c: Change<'_>| {
            match c {
                Change::Data { offset, data } => {
                    replica[offset as usize..offset as usize + data.len()].copy_from_slice(data)
                }
                Change::Zero { offset, len } => {
                    replica[offset as usize..(offset + len) as usize].fill(0)
                }
            }
            Ok(())
        })
        .unwrap();
    t.commit().unwrap();
    stats
}

fn assert_same(replica: &[u8], content: &[u8], what: &str) {
    if replica != content {
        let bad: Vec<usize> = (0..content.len() / 4096)
            .filter(|b| replica[b * 4096..(b + 1) * 4096] != content[b * 4096..(b + 1) * 4096])
            .take(10)
            .collect();
        panic!("{what}: the replica misses changed 4 KiB blocks, e.g. {bad:?}");
    }
}

/// Random direct writes to the raw device, some discards and write-zeroes: every changed
/// block is shipped, and little else.
#[test]
fn raw_device_writes_discards_and_zeroes_are_all_caught() {
    let size = 64u64 << 20;
    let Some(lab) = Lab::new(size, "raw") else { return };
    let mut t = lab.tracker(lab.bpf());
    let mut replica = vec![0u8; size as usize];
    let first = cycle(&mut t, &lab.dev, &mut replica);
    assert!(first.initial, "the first collect is the initial copy");
    let mut rng = StdRng::seed_from_u64(7);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&lab.dev)
        .unwrap();
    let mut buf = vec![0u8; (256 << 10) + 4096];
    let off = buf.as_ptr().align_offset(4096);
    // [32, 40) MiB and the 8 KiB at 4096 are filled in even rounds and discarded or zeroed
    // in odd ones, so those changes are caught only if discards and write-zeroes are.
    let (hole, hole_len) = (32u64 << 20, 8u64 << 20);
    for round in 0..6 {
        let mut written = 0u64;
        for _ in 0..200 {
            let len = 4096 * rng.random_range(1..=64usize);
            let mut at = 4096 * rng.random_range(2..(size - len as u64) / 4096);
            if at + len as u64 > hole && at < hole + hole_len {
                at = hole + hole_len;
            }
            rng.fill(&mut buf[off..off + len]);
            f.write_all_at(&buf[off..off + len], at).unwrap();
            written += len as u64;
        }
        if round % 2 == 0 {
            for piece in (hole..hole + hole_len).step_by(256 << 10) {
                rng.fill(&mut buf[off..off + (256 << 10)]);
                f.write_all_at(&buf[off..off + (256 << 10)], piece).unwrap();
            }
            rng.fill(&mut buf[off..off + 8192]);
            f.write_all_at(&buf[off..off + 8192], 4096).unwrap();
            written += hole_len + 8192;
        } else {
            sh("blkdiscard", &["-o", &hole.to_string(), "-l", &hole_len.to_string(), &lab.dev])
                .unwrap();
            sh("blkdiscard", &["-z", "-o", "4096", "-l", "8192", &lab.dev]).unwrap();
        }
        // Buffered writes through the page cache too, flushed.
        let g = OpenOptions::new().write(true).open(&lab.dev).unwrap();
        g.write_all_at(&[round as u8 + 1; 12288], 8 << 20).unwrap();
        g.sync_all().unwrap();
        let stats = cycle(&mut t, &lab.dev, &mut replica);
        assert_same(&replica, &lab.content(), &format!("raw round {round}"));
        assert!(
            stats.bytes_read <= written + hole_len + (1 << 20),
            "round {round}: read {} for {written} written",
            stats.bytes_read
        );
    }
    let c = t.counters();
    assert!(c.writes > 0 && c.discards > 0 && c.write_zeroes > 0, "{c:?}");
    assert!(c.ring_events > 0, "the large discard went through the ring buffer: {c:?}");
}

/// ext4 and XFS on the device: file copies, overwrites, deletes and fstrim; every point
/// (taken frozen) equals the device.
#[test]
fn filesystem_workloads_on_ext4_and_xfs_are_all_caught() {
    for (tag, mkfs) in [
        ("ext4", &["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"][..]),
        ("xfs", &["mkfs.xfs", "-q", "-f"][..]),
    ] {
        let size = 320u64 << 20;
        let Some(mut lab) = Lab::new(size, tag) else { return };
        let mut t = lab.tracker(lab.bpf());
        lab.mkfs_mount(mkfs);
        let mut replica = vec![0u8; size as usize];
        lab.freeze(true);
        cycle(&mut t, &lab.dev, &mut replica);
        lab.freeze(false);
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..4 {
            let mut written = 0u64;
            for i in 0..30 {
                let n = 4096 * rng.random_range(1..200usize) + rng.random_range(0..4096);
                written += n as u64;
                let mut data = vec![0u8; n];
                rng.fill(&mut data[..]);
                fs::write(lab.mnt().join(format!("f{round}-{i}")), &data).unwrap();
            }
            if round > 0 {
                for i in (0..30).step_by(2) {
                    fs::remove_file(lab.mnt().join(format!("f{}-{i}", round - 1))).unwrap();
                }
                let src = lab.mnt().join(format!("f{round}-1"));
                fs::copy(&src, lab.mnt().join(format!("copy{round}"))).unwrap();
            }
            rustix::fs::sync();
            let _ = sh("fstrim", &[lab.mnt().to_str().unwrap()]);
            lab.freeze(true);
            let stats = cycle(&mut t, &lab.dev, &mut replica);
            assert_same(&replica, &lab.content(), &format!("{tag} round {round}"));
            lab.freeze(false);
            // fstrim discards free space (the first time, all of it): those ranges are read
            // and go as zero ranges. The data sent is what was written, plus metadata.
            assert!(
                stats.data_bytes <= 2 * written + (16 << 20),
                "{tag} round {round}: {} bytes of data sent for {written} written",
                stats.data_bytes
            );
        }
    }
}

/// The agent stops and starts again: the pinned tracker kept tracking, nothing is missed and
/// nothing is compared whole. After the pins are gone (as after a reboot), the gap is
/// answered by a hash compare that sends only what changed.
#[test]
fn tracking_survives_a_restart_and_a_lost_tracker_means_a_hash_compare() {
    let size = 64u64 << 20;
    let Some(lab) = Lab::new(size, "restart") else { return };
    let mut replica = vec![0u8; size as usize];
    {
        let mut t = lab.tracker(lab.bpf());
        cycle(&mut t, &lab.dev, &mut replica);
    }
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&lab.dev)
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let off = buf.as_ptr().align_offset(4096);
    buf[off..off + 4096].fill(0xab);
    // Written while no agent runs.
    f.write_all_at(&buf[off..off + 4096], 40 << 20).unwrap();
    let (bpf, reused) = Bpf::open_or_load(&lab.pin_name, words_for(&[size])).unwrap();
    assert!(reused, "the pinned tracker is reused");
    let mut t = lab.tracker(Arc::new(bpf));
    let stats = cycle(&mut t, &lab.dev, &mut replica);
    assert!(!stats.initial && stats.bytes_read == 4096, "{stats:?}");
    assert_same(&replica, &lab.content(), "after a restart");

    // Lost tracker: pins removed, as after a reboot; a block changed meanwhile.
    drop(t);
    fs::remove_dir_all(Path::new(kernel::BPFFS).join("lifeboat").join(format!(
        "v{}-{}",
        kernel::LAYOUT_VERSION,
        lab.pin_name
    )))
    .unwrap();
    buf[off..off + 4096].fill(0xcd);
    f.write_all_at(&buf[off..off + 4096], 50 << 20).unwrap();
    let mut t = lab.tracker(lab.bpf());
    let stats = cycle(&mut t, &lab.dev, &mut replica);
    assert_same(&replica, &lab.content(), "after losing the tracker");
    assert!(stats.bytes_read >= size / 2, "a gap compares the whole disk: {stats:?}");
    assert!(
        stats.data_bytes <= 2 * 64 * 1024,
        "only the changed and the shipped blocks are sent: {stats:?}"
    );
}

/// Parses the write-order oracle's records from the front of `bytes`: returns how many
/// are whole and valid, in sequence from 0.
fn valid_records(bytes: &[u8]) -> u64 {
    let (mut at, mut n) = (0usize, 0u64);
    while at + 12 <= bytes.len() {
        let seq = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        if seq != n || at + 12 + len + 8 > bytes.len() {
            break;
        }
        let body = &bytes[at..at + 12 + len];
        let sum = u64::from_le_bytes(bytes[at + 12 + len..at + 20 + len].try_into().unwrap());
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            break;
        }
        n += 1;
        at += 20 + len;
    }
    n
}

/// The write-order oracle: while an application appends sequence-numbered, checksummed
/// records with fsync to an ext4 file, the cycler cuts points under a freeze (pre-copy,
/// freeze, capture, thaw). Every point, rebuilt from the journal's batches, passes
/// `fsck -n` with no journal replay needed and holds a gap-free run of records including
/// every record whose fsync returned before the cycle started.
#[test]
fn points_cut_under_a_freeze_are_clean_and_keep_every_fsynced_record() {
    use crate::cycle::{CutPolicy, CycleLimits, CycleOutcome, Cycler, DiskSlot};
    use crate::journal::Journal;
    use crate::progress::ProgressBoard;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let size = 128u64 << 20;
    let Some(mut lab) = Lab::new(size, "cut") else { return };
    let bpf = lab.bpf();
    let t = lab.tracker(bpf);
    lab.mkfs_mount(&["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]);
    let machine = lifeboat_wire::MachineId([3; 16]);
    let jdir = lab.dir.path().join("journal");
    let journal = Arc::new(Journal::open(&jdir, 1, machine).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut cycler = Cycler::new(
        machine,
        vec![DiskSlot {
            index: 0,
            path: PathBuf::from(&lab.dev),
            tracker: Box::new(t),
            baseline_path: Some(lab.dir.path().join("map")),
        }],
        journal.clone(),
        CycleLimits { batch_max_bytes: 1 << 20, journal_max_bytes: 1 << 30 },
        stop.clone(),
        Arc::new(ProgressBoard::new(1)),
    );
    cycler.set_cuts(Some(CutPolicy::default()));

    // The application: records of [seq][len][payload][xxh3], each fsynced.
    let acked = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (acked, writing) = (acked.clone(), writing.clone());
        let path = lab.mnt().join("records");
        std::thread::spawn(move || {
            let mut f = OpenOptions::new().create(true).append(true).open(path).unwrap();
            let mut rng = StdRng::seed_from_u64(9);
            let mut seq = 0u64;
            while writing.load(Ordering::Relaxed) {
                let len = rng.random_range(16..3000usize);
                let mut rec = Vec::with_capacity(len + 20);
                rec.extend_from_slice(&seq.to_le_bytes());
                rec.extend_from_slice(&(len as u32).to_le_bytes());
                let mut payload = vec![0u8; len];
                rng.fill(&mut payload[..]);
                rec.extend_from_slice(&payload);
                let sum = xxhash_rust::xxh3::xxh3_64(&rec);
                rec.extend_from_slice(&sum.to_le_bytes());
                f.write_all(&rec).unwrap();
                f.sync_data().unwrap();
                seq += 1;
                acked.store(seq, Ordering::SeqCst);
            }
        })
    };

    let mut replica = vec![0u8; size as usize];
    let mut next_seq = 0u64;
    let mut cut = 0;
    let mut attempts = 0;
    while cut < 4 {
        attempts += 1;
        assert!(attempts < 30, "too many deferred cuts");
        std::thread::sleep(Duration::from_millis(300));
        let acked_before = acked.load(Ordering::SeqCst);
        let freeze = match cycler.run_cycle().unwrap() {
            CycleOutcome::Done { freeze, .. } => {
                freeze.expect("an eBPF machine is cut under a freeze")
            }
            CycleOutcome::Deferred { reason } => {
                eprintln!("deferred: {reason}");
                continue;
            }
            other => panic!("{other:?}"),
        };
        assert!(freeze < Duration::from_millis(500), "{freeze:?}");
        // Apply the journal's batches (as the appliance would) up to the tag.
        let last = journal.next_sequence(0).unwrap();
        let mut tagged = false;
        for seq in next_seq..last {
            let bytes = journal.read(0, seq).unwrap().expect("batch in the journal");
            let batch = lifeboat_wire::decode(&bytes).unwrap();
            for e in batch.extents() {
                let (o, l) = (e.offset() as usize, e.length() as usize);
                match e {
                    lifeboat_wire::Extent::Data { data, .. } => {
                        replica[o..o + l].copy_from_slice(data)
                    }
                    lifeboat_wire::Extent::Zero { .. } => replica[o..o + l].fill(0),
                }
            }
            tagged = batch.header().tag.is_some();
        }
        assert!(tagged, "the cycle's last batch carries the point");
        journal.ack(0, last - 1).unwrap();
        next_seq = last;

        // Materialise the point and look inside.
        let img = lab.dir.path().join(format!("point{cut}.img"));
        fs::write(&img, &replica).unwrap();
        let fsck =
            std::process::Command::new("fsck.ext4").args(["-n", "-f"]).arg(&img).output().unwrap();
        assert!(
            fsck.status.success(),
            "point {cut} is not a clean filesystem: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let pm = lab.dir.path().join(format!("pm{cut}"));
        fs::create_dir_all(&pm).unwrap();
        sh("mount", &["-o", "ro,loop,noload", img.to_str().unwrap(), pm.to_str().unwrap()])
            .unwrap();
        let records = fs::read(pm.join("records")).unwrap_or_default();
        let _ = sh("umount", &[pm.to_str().unwrap()]);
        let n = valid_records(&records);
        assert!(
            n >= acked_before,
            "point {cut}: {n} records, but {acked_before} were fsynced before the cycle"
        );
        eprintln!("point {cut}: {n} records ({acked_before} acked before), frozen {freeze:?}");
        let _ = fs::remove_file(&img);
        cut += 1;
    }
    writing.store(false, Ordering::Relaxed);
    writer.join().unwrap();
}

/// The counters behind the churn profiler: requests by kind and size, and the profiler
/// itself measuring a writer on a loop device.
#[test]
fn churn_counters_count_requests_by_kind_and_size() {
    let size = 64u64 << 20;
    let Some(lab) = Lab::new(size, "churn") else { return };
    let t = lab.tracker(lab.bpf());
    let before = t.counters();
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&lab.dev)
        .unwrap();
    let mut buf = vec![7u8; (64 << 10) + 4096];
    let off = buf.as_ptr().align_offset(4096);
    for i in 0..50u64 {
        f.write_all_at(&buf[off..off + 4096], i * 8192).unwrap();
    }
    buf[off..off + (64 << 10)].fill(9);
    for i in 0..10u64 {
        f.write_all_at(&buf[off..off + (64 << 10)], (8 << 20) + i * (128 << 10)).unwrap();
    }
    sh("blkdiscard", &["-o", &(32u64 << 20).to_string(), "-l", "1048576", &lab.dev]).unwrap();
    let after = t.counters();
    let d = |a: u64, b: u64| b - a;
    assert!(d(before.writes, after.writes) >= 60, "{after:?}");
    assert!(d(before.sizes[0], after.sizes[0]) >= 50, "{after:?}");
    assert!(d(before.sizes[2], after.sizes[2]) >= 10, "{after:?}");
    assert!(d(before.discards, after.discards) >= 1, "{after:?}");
    assert!(d(before.bytes, after.bytes) >= 50 * 4096 + 10 * (64 << 10) + (1 << 20), "{after:?}");

    // The profiler, with a writer running meanwhile.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, dev) = (stop.clone(), lab.dev.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(dev)
                .unwrap();
            let buf = vec![1u8; 8192];
            let off = buf.as_ptr().align_offset(4096);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all_at(&buf[off..off + 4096], (i % 4096) * 4096).unwrap();
                i += 1;
            }
        })
    };
    let samples = crate::churn::profile(
        &[PathBuf::from(&lab.dev)],
        Duration::from_millis(1200),
        Duration::from_millis(400),
        |_, _| {},
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(samples.len() >= 2, "{samples:?}");
    let sum = crate::churn::summarize(0, &samples);
    assert!(sum.mean_iops > 100.0 && sum.mean_mb_per_s > 0.4, "{sum:?}");
    // Every write is 4 KiB: no other size bucket moves. (`writes` and `sizes` are read one after the
    // other while the writer runs, so they may differ by the few requests completed in between.)
    assert!(
        samples.iter().all(|s| s.sizes[1..].iter().all(|&n| n == 0) && s.sizes[0] > 0),
        "every write is 4 KiB: {samples:?}"
    );
    assert!(
        !Path::new(kernel::BPFFS)
            .join("lifeboat")
            .join(format!("v{}-profile-{}", kernel::LAYOUT_VERSION, std::process::id()))
            .exists(),
        "the profiler unpins its tracker"
    );
}

/// A filesystem that cannot be frozen (squashfs, read-only, has no freeze operation:
/// `FIFREEZE` answers EOPNOTSUPP) on a protected disk is found, skipped, and does not fail
/// the cut.
#[test]
fn filesystems_that_cannot_be_frozen_are_skipped() {
    use crate::freeze::{freeze, mounts_of};
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: mounting needs root");
        return;
    }
    if sh("mksquashfs", &["-version"]).is_err() {
        eprintln!("SKIPPED: mksquashfs is missing (cargo xtask setup installs squashfs-tools)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"read-only").unwrap();
    let img = dir.path().join("sq.img");
    sh("mksquashfs", &[src.to_str().unwrap(), img.to_str().unwrap(), "-noappend", "-quiet"])
        .unwrap();
    let dev = match sh("losetup", &["--find", "--show", img.to_str().unwrap()]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cannot create a loop device here: {e}");
            return;
        }
    };
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = sh("mount", &["-t", "squashfs", &dev, mnt.to_str().unwrap()]);
    let disk = crate::disk::Disk::open(Path::new(&dev)).unwrap();
    let mounts = mounts_of(&[&disk]);
    let frozen = mounted.as_ref().ok().map(|_| freeze(&mounts, Duration::from_secs(5)));
    let _ = sh("umount", &[mnt.to_str().unwrap()]);
    let _ = sh("losetup", &["--detach", &dev]);
    mounted.unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].fs_type, "squashfs");
    let frozen = frozen.unwrap().expect("a filesystem that cannot freeze does not fail the cut");
    assert!(frozen.is_empty(), "nothing was frozen, so nothing is thawed");
}

/// An agent killed while filesystems were frozen: the next one thaws them at start.
#[test]
fn frozen_filesystems_left_by_a_killed_agent_are_thawed() {
    use crate::freeze::{Mount, freeze, recover};
    let Some(mut lab) = Lab::new(64 << 20, "freeze") else { return };
    lab.mkfs_mount(&["mkfs.ext4", "-q", "-F"]);
    let st = rustix::fs::stat(lab.dev.as_str()).unwrap();
    let mount = Mount {
        mount_point: lab.mnt().to_path_buf(),
        major: rustix::fs::major(st.st_rdev),
        minor: rustix::fs::minor(st.st_rdev),
        fs_type: "ext4".into(),
    };
    let frozen = freeze(std::slice::from_ref(&mount), Duration::from_secs(120)).unwrap();
    assert_eq!(frozen.len(), 1);
    std::mem::forget(frozen); // the agent dies here
    assert!(sh("fsfreeze", &["-f", lab.mnt().to_str().unwrap()]).is_err(), "it is frozen");
    recover();
    // Thawed: freezing and thawing by hand works again.
    sh("fsfreeze", &["-f", lab.mnt().to_str().unwrap()]).unwrap();
    sh("fsfreeze", &["-u", lab.mnt().to_str().unwrap()]).unwrap();
}
