#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::map::{Entry, Hasher, Header, ZEROS, is_zero};
use super::scan::{changed_mask, valid_mask};
use super::*;
use crate::tracker::{Change, SinkError, Tracker};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const SUB: u64 = SUB_BLOCK_SIZE;

/// A change as the agent's journal would keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

impl Owned {
    fn offset(&self) -> u64 {
        match self {
            Owned::Data(o, _) | Owned::Zero(o, _) => *o,
        }
    }
    fn len(&self) -> u64 {
        match self {
            Owned::Data(_, d) => d.len() as u64,
            Owned::Zero(_, l) => *l,
        }
    }
    fn end(&self) -> u64 {
        self.offset() + self.len()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    img: PathBuf,
    replica: PathBuf,
    map: PathBuf,
}

impl Env {
    fn new(size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let replica = dir.path().join("replica.img");
        File::create(&img).unwrap().set_len(size).unwrap();
        File::create(&replica).unwrap().set_len(size).unwrap();
        let map = dir.path().join("state").join("disk.map");
        Self { _dir: dir, img, replica, map }
    }

    /// A tracker with small chunks and map segments, so tests cross their boundaries.
    fn tracker(&self) -> HashScan {
        let mut cfg = HashScanConfig::new(&self.map);
        cfg.chunk_size = 256 * KIB;
        cfg.max_change = 64 * KIB;
        let mut t = HashScan::new(cfg).unwrap();
        t.segment_blocks = 8;
        t
    }

    fn write(&self, off: u64, data: &[u8]) {
        let f = OpenOptions::new().write(true).open(&self.img).unwrap();
        f.write_all_at(data, off).unwrap();
    }

    fn write_random(&self, rng: &mut StdRng, off: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        // Never an all-zero sub-block by accident.
        data[0] |= 1;
        self.write(off, &data);
        data
    }

    fn set_len(&self, len: u64) {
        OpenOptions::new().write(true).open(&self.img).unwrap().set_len(len).unwrap();
    }

    fn punch(&self, off: u64, len: u64) {
        let f = OpenOptions::new().write(true).open(&self.img).unwrap();
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            off,
            len,
        )
        .unwrap();
    }

    fn image(&self) -> Vec<u8> {
        fs::read(&self.img).unwrap()
    }

    /// Applies changes to the replica as the master target would, resizing it like the disk.
    fn apply(&self, changes: &[Owned]) {
        let f = OpenOptions::new().write(true).open(&self.replica).unwrap();
        f.set_len(fs::metadata(&self.img).unwrap().len()).unwrap();
        for c in changes {
            match c {
                Owned::Data(o, d) => f.write_all_at(d, *o).unwrap(),
                Owned::Zero(o, l) => f.write_all_at(&vec![0u8; *l as usize], *o).unwrap(),
            }
        }
    }

    fn assert_replica_equal(&self) {
        let src = self.image();
        let dst = fs::read(&self.replica).unwrap();
        assert_eq!(src.len(), dst.len(), "replica size");
        if let Some(i) = src.iter().zip(&dst).position(|(a, b)| a != b) {
            panic!("replica differs from the disk first at byte {i}");
        }
    }
}

/// Collects into owned changes, checking the contract: ascending, non-overlapping, within
/// the disk, data equal to the disk's content, counts matching the stats.
fn collect(t: &mut HashScan, img: &Path) -> (Vec<Owned>, CycleStats) {
    let disk = Disk::open(img).unwrap();
    let mut out = Vec::new();
    let stats = t
        .collect(&disk, &mut |c: Change<'_>| {
            out.push(match c {
                Change::Data { offset, data } => Owned::Data(offset, data.to_vec()),
                Change::Zero { offset, len } => Owned::Zero(offset, len),
            });
            Ok(())
        })
        .unwrap();
    check(&out, &stats, img);
    (out, stats)
}

fn check(changes: &[Owned], stats: &CycleStats, img: &Path) {
    check_free(changes, stats, img, &[]);
}

/// Like [`check`], where `free` is what the filesystem called free: a `Zero` change there may
/// cover bytes that are not zeros on the disk (a free block with no trusted baseline).
fn check_free(changes: &[Owned], stats: &CycleStats, img: &Path, free: &[Range<u64>]) {
    let content = fs::read(img).unwrap();
    let mut prev_end = 0;
    for c in changes {
        assert!(c.len() > 0, "empty change {c:?}");
        assert!(c.offset() >= prev_end, "not ascending: {c:?} after {prev_end}");
        prev_end = c.offset() + c.len();
        assert!(prev_end <= content.len() as u64, "past the end: {c:?}");
        let have = &content[c.offset() as usize..prev_end as usize];
        match c {
            Owned::Data(o, d) => {
                assert!(d.as_slice() == have, "data at {o} differs from the disk");
                assert!(d.len() as u64 <= 64 * KIB, "change over max_change");
            }
            Owned::Zero(o, _) => {
                for (i, piece) in have.chunks(SUB as usize).enumerate() {
                    let at = o + i as u64 * SUB;
                    let is_free =
                        free.iter().any(|r| r.start <= at && at + piece.len() as u64 <= r.end);
                    assert!(is_free || piece.iter().all(|&b| b == 0), "zero at {at} is not");
                }
            }
        }
    }
    assert_eq!(stats.extents, changes.len() as u64);
    let data: u64 = changes.iter().filter(|c| matches!(c, Owned::Data(..))).map(Owned::len).sum();
    let zero: u64 = changes.iter().filter(|c| matches!(c, Owned::Zero(..))).map(Owned::len).sum();
    assert_eq!((stats.data_bytes, stats.zero_bytes), (data, zero));
    assert_eq!(stats.disk_size, content.len() as u64);
}

/// The 4 KiB pieces the changes cover, with whether each was reported as zeros.
fn pieces(changes: &[Owned]) -> BTreeSet<(u64, bool)> {
    let mut set = BTreeSet::new();
    for c in changes {
        let zero = matches!(c, Owned::Zero(..));
        let mut o = c.offset();
        while o < c.offset() + c.len() {
            set.insert((o, zero));
            o += SUB;
        }
    }
    set
}

fn supports_holes(img: &Path) -> bool {
    let disk = Disk::open(img).unwrap();
    let covered: u64 = disk.data_ranges().map(|r| r.unwrap()).map(|r| r.end - r.start).sum();
    covered < disk.size()
}

/// Captures what the tracker logs while `f` runs.
fn with_logs<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (r, logs)
}

#[test]
fn initial_copy_skips_holes_and_zeros() {
    let size = 4 * MIB + 1000;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(1);
    env.write_random(&mut rng, 64 * KIB, 4096);
    env.write_random(&mut rng, MIB + 100, 10_000);
    env.write(2 * MIB, &vec![0u8; 256 * KIB as usize]); // allocated zeros
    env.write_random(&mut rng, size - 500, 500);

    let mut t = env.tracker();
    let (changes, stats) = collect(&mut t, &env.img);
    assert!(stats.initial);
    assert!(changes.iter().all(|c| matches!(c, Owned::Data(..))), "{changes:?}");
    // Exactly the 4 KiB pieces holding non-zero bytes.
    let content = env.image();
    let expected: BTreeSet<(u64, bool)> = content
        .chunks(SUB as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, _)| (i as u64 * SUB, false))
        .collect();
    assert_eq!(pieces(&changes), expected);
    // The unaligned 10 000-byte write spans three sub-blocks, sent as one change.
    assert!(
        changes.contains(&Owned::Data(MIB, content[MIB as usize..(MIB + 12288) as usize].to_vec()))
    );
    // The partial last sub-block ends at the disk's end.
    assert_eq!(changes.last().unwrap().offset() + changes.last().unwrap().len(), size);
    if supports_holes(&env.img) {
        assert!(stats.hole_bytes_skipped >= 3 * MIB, "{stats:?}");
        assert!(stats.zero_bytes_skipped >= 256 * KIB, "{stats:?}");
        assert!(stats.bytes_read < MIB, "{stats:?}");
    } else {
        assert_eq!(stats.bytes_read, size);
    }
    assert_eq!(stats.unknown_bytes, 0);
    t.commit().unwrap();

    // The replica was blank: after the initial copy it equals the disk.
    env.apply(&changes);
    env.assert_replica_equal();

    // Nothing changed: nothing to send.
    let (changes, stats) = collect(&mut t, &env.img);
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!stats.initial);
}

#[test]
fn random_4k_writes_report_exactly_those_pieces() {
    let size = 8 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(2);
    env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    let (initial, _) = collect(&mut t, &env.img);
    t.commit().unwrap();
    env.apply(&initial);

    let mut written = BTreeSet::new();
    while written.len() < 40 {
        let off = rng.random_range(0..size / SUB) * SUB;
        env.write_random(&mut rng, off, SUB as usize);
        written.insert((off, false));
    }
    // Two adjacent writes are coalesced into one change.
    env.write_random(&mut rng, 5 * MIB, 2 * SUB as usize);
    written.insert((5 * MIB, false));
    written.insert((5 * MIB + SUB, false));

    let (changes, stats) = collect(&mut t, &env.img);
    assert_eq!(pieces(&changes), written);
    assert!(changes.iter().any(|c| c.offset() == 5 * MIB && c.len() >= 2 * SUB));
    assert_eq!(stats.data_bytes, written.len() as u64 * SUB);
    assert_eq!(stats.bytes_read, size);
    t.commit().unwrap();
    env.apply(&changes);
    env.assert_replica_equal();
}

#[test]
fn block_overwritten_with_zeros_reports_zero() {
    let env = Env::new(MIB);
    let mut rng = StdRng::seed_from_u64(3);
    env.write_random(&mut rng, 0, MIB as usize);
    let mut t = env.tracker();
    collect(&mut t, &env.img);
    t.commit().unwrap();

    env.write(128 * KIB, &[0u8; 64 * 1024]);
    env.write(512 * KIB + 8 * KIB, &[0u8; 4096]);
    let (changes, stats) = collect(&mut t, &env.img);
    assert_eq!(
        changes,
        vec![Owned::Zero(128 * KIB, 64 * KIB), Owned::Zero(512 * KIB + 8 * KIB, 4 * KIB)]
    );
    assert_eq!(stats.zero_bytes, 68 * KIB);
    assert_eq!(stats.data_bytes, 0);
}

#[test]
fn without_commit_the_same_changes_come_again() {
    let env = Env::new(2 * MIB);
    let mut rng = StdRng::seed_from_u64(4);
    env.write_random(&mut rng, 0, 2 * MIB as usize);
    let mut t = env.tracker();
    collect(&mut t, &env.img);
    t.commit().unwrap();

    for _ in 0..10 {
        let off = rng.random_range(0..(2 * MIB) / SUB) * SUB;
        env.write_random(&mut rng, off, SUB as usize);
    }
    env.write(MIB, &[0u8; 4096]);
    let (first, _) = collect(&mut t, &env.img);
    assert!(!first.is_empty());
    let (again, _) = collect(&mut t, &env.img);
    assert_eq!(first, again);

    // A crash before commit (a new tracker on the same state) too.
    drop(t);
    let mut t = env.tracker();
    let (after_restart, _) = collect(&mut t, &env.img);
    assert_eq!(first, after_restart);

    t.commit().unwrap();
    assert!(matches!(t.commit(), Err(TrackerError::NothingToCommit { .. })));
    let (nothing, stats) = collect(&mut t, &env.img);
    assert!(nothing.is_empty(), "{nothing:?}");
    assert_eq!(stats.extents, 0);
    assert_eq!(stats.unknown_bytes, 0);
}

#[test]
fn a_failed_collect_loses_nothing_even_if_the_disk_reverts() {
    // The journal may ship a change of a cycle that is never committed; if the disk then goes
    // back to the old content, comparing with the old baseline alone would miss it.
    let size = 2 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(5);
    let original = env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    let (initial, _) = collect(&mut t, &env.img);
    t.commit().unwrap();
    env.apply(&initial);

    env.write_random(&mut rng, 100 * KIB, 8 * 1024);
    env.write_random(&mut rng, 1500 * KIB, 4 * 1024);
    // The sink takes the first change (it reaches the replica), then fails.
    let disk = Disk::open(&env.img).unwrap();
    let mut shipped = Vec::new();
    let err = t
        .collect(&disk, &mut |c: Change<'_>| {
            if !shipped.is_empty() {
                return Err(SinkError::from("journal full"));
            }
            if let Change::Data { offset, data } = c {
                shipped.push(Owned::Data(offset, data.to_vec()));
            }
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, TrackerError::Sink { .. }), "{err}");
    assert!(err.to_string().contains("journal full"));
    assert!(matches!(t.commit(), Err(TrackerError::NothingToCommit { .. })));
    env.apply(&shipped);

    // The process dies; the disk goes back to what the baseline says.
    drop(t);
    env.write(0, &original);
    let mut t = env.tracker();
    let (changes, stats) = collect(&mut t, &env.img);
    assert!(!changes.is_empty());
    assert!(stats.unknown_bytes > 0);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty(), "{nothing:?}");
}

#[test]
fn an_interrupted_initial_copy_loses_nothing() {
    // Dense changes are covered by intent windows; a crash mid-copy, then a shipped block
    // going back to zeros (what a blank baseline says), must still reach the replica.
    let size = 4 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(14);
    env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    let disk = Disk::open(&env.img).unwrap();
    let mut shipped = Vec::new();
    let err = t
        .collect(&disk, &mut |c: Change<'_>| {
            if shipped.len() == 20 {
                return Err(SinkError::from("agent stopping"));
            }
            if let Change::Data { offset, data } = c {
                shipped.push(Owned::Data(offset, data.to_vec()));
            }
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, TrackerError::Sink { .. }), "{err}");
    env.apply(&shipped);
    drop(t);

    env.write(64 * KIB, &[0u8; 4096]);
    env.write(640 * KIB, &[0u8; 64 * 1024]);
    let mut t = env.tracker();
    let (changes, stats) = collect(&mut t, &env.img);
    assert!(stats.initial);
    assert!(changes.contains(&Owned::Zero(64 * KIB, 4 * KIB)), "{changes:?}");
    assert!(changes.contains(&Owned::Zero(640 * KIB, 64 * KIB)), "{changes:?}");
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());
}

#[test]
fn corrupt_map_means_a_full_compare_with_a_warning() {
    let size = 2 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(6);
    env.write_random(&mut rng, 0, MIB as usize);
    let mut t = env.tracker();
    let (initial, _) = collect(&mut t, &env.img);
    t.commit().unwrap();
    env.apply(&initial);

    // Header damage: no baseline at all.
    let map = OpenOptions::new().write(true).open(&env.map).unwrap();
    map.write_all_at(&[0xff], 40).unwrap();
    env.write_random(&mut rng, 300 * KIB, 4096);
    let ((changes, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("baseline map is unusable"), "{logs}");
    assert!(logs.contains("checksum"), "{logs}");
    assert_eq!(stats.unknown_bytes, size);
    // Everything is sent: data as data, the rest (holes, zeros) as zero ranges.
    let covered: u64 = changes.iter().map(Owned::len).sum();
    assert_eq!(covered, size);
    assert!(stats.data_bytes >= MIB);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();

    // Damage inside one segment (8 blocks = 512 KiB here): only that range is sent whole.
    env.write_random(&mut rng, 1536 * KIB, 4096); // in segment 3
    let entry_in_segment_1 = MAP_HEADER_LEN + (8 * MAP_ENTRY_LEN + 8) + 3 * MAP_ENTRY_LEN + 5;
    let map = OpenOptions::new().write(true).open(&env.map).unwrap();
    map.write_all_at(&[0x55], entry_in_segment_1).unwrap();
    let ((changes, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("segment is unusable"), "{logs}");
    assert_eq!(stats.unknown_bytes, 512 * KIB);
    let expected: BTreeSet<u64> =
        (512 * KIB..MIB).step_by(SUB as usize).chain([1536 * KIB]).collect();
    assert_eq!(pieces(&changes).into_iter().map(|p| p.0).collect::<BTreeSet<_>>(), expected);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();

    // Garbage instead of a map, and a truncated map.
    fs::write(&env.map, b"not a map at all").unwrap();
    let ((changes, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("unusable"), "{logs}");
    assert_eq!(stats.unknown_bytes, size);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    let len = fs::metadata(&env.map).unwrap().len();
    OpenOptions::new().write(true).open(&env.map).unwrap().set_len(len - 100).unwrap();
    let ((changes, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("segment is unusable"), "{logs}");
    assert_eq!(stats.unknown_bytes, 512 * KIB);
    env.apply(&changes);
    env.assert_replica_equal();
}

#[test]
fn map_of_another_disk_is_not_used() {
    let env = Env::new(MIB);
    let mut rng = StdRng::seed_from_u64(7);
    env.write_random(&mut rng, 0, MIB as usize);
    let mut t = env.tracker();
    collect(&mut t, &env.img);
    t.commit().unwrap();
    drop(t);

    let mut cfg = HashScanConfig::new(&env.map);
    cfg.disk_id = [7; 16];
    cfg.max_change = 64 * KIB;
    let mut t = HashScan::new(cfg).unwrap();
    let ((_, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("another disk"), "{logs}");
    assert_eq!(stats.unknown_bytes, MIB);
}

#[test]
fn grown_disk_reports_the_new_tail_and_shrink_works() {
    let env = Env::new(MIB);
    let mut rng = StdRng::seed_from_u64(8);
    env.write_random(&mut rng, 0, MIB as usize);
    let mut t = env.tracker();
    let (initial, _) = collect(&mut t, &env.img);
    t.commit().unwrap();
    env.apply(&initial);

    env.set_len(2 * MIB + 3000);
    env.write_random(&mut rng, MIB + 200 * KIB, 10_000);
    env.write_random(&mut rng, 2 * MIB, 3000);
    let ((changes, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("resized"), "{logs}");
    // Nothing before the old end; everything after it, data as data and the rest as zeros.
    assert_eq!(changes.first().unwrap().offset(), MIB);
    let covered: u64 = changes.iter().map(Owned::len).sum();
    assert_eq!(covered, MIB + 3000);
    assert_eq!(stats.unknown_bytes, MIB + 3000);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());

    // Shrink to an unaligned size: the new last (partial) block is sent again.
    env.set_len(MIB + 100 * KIB + 10);
    let (changes, _) = collect(&mut t, &env.img);
    assert_eq!(changes.first().unwrap().offset(), MIB + 64 * KIB);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());
}

#[test]
fn invalidate_forces_a_resend_and_survives_a_commit() {
    let env = Env::new(MIB);
    let mut rng = StdRng::seed_from_u64(9);
    env.write_random(&mut rng, 0, MIB as usize);
    let mut t = env.tracker();
    collect(&mut t, &env.img);
    t.commit().unwrap();

    // 100 000 .. 105 000 lies in block 1 (64 KiB .. 128 KiB).
    t.invalidate(100_000, 5000).unwrap();
    let (changes, stats) = collect(&mut t, &env.img);
    assert_eq!(
        pieces(&changes),
        (64 * KIB..128 * KIB).step_by(SUB as usize).map(|o| (o, false)).collect()
    );
    assert_eq!(stats.unknown_bytes, 64 * KIB);
    // An invalidation between collect and commit is kept for the next cycle.
    t.invalidate(MIB - 1, 1).unwrap();
    t.commit().unwrap();
    let (changes, _) = collect(&mut t, &env.img);
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].offset(), changes[0].len()), (MIB - 64 * KIB, 64 * KIB));
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());

    // Also when there was no intent log at all during the collect.
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());
    t.invalidate(0, 1).unwrap();
    t.commit().unwrap();
    let (changes, stats) = collect(&mut t, &env.img);
    assert_eq!(stats.unknown_bytes, 64 * KIB);
    assert_eq!((changes[0].offset(), changes[0].len()), (0, 64 * KIB));
    t.commit().unwrap();

    // The whole disk.
    t.invalidate(0, u64::MAX).unwrap();
    let (changes, stats) = collect(&mut t, &env.img);
    assert_eq!(stats.unknown_bytes, MIB);
    assert_eq!(changes.iter().map(Owned::len).sum::<u64>(), MIB);
}

#[test]
fn torn_or_corrupt_intent_log() {
    let env = Env::new(MIB);
    let mut rng = StdRng::seed_from_u64(10);
    env.write_random(&mut rng, 0, MIB as usize);
    let mut t = env.tracker();
    collect(&mut t, &env.img);
    t.commit().unwrap();
    let intent = sibling(&env.map, ".intent");

    // A torn record at the end (a crash during its append) is cut off and ignored.
    t.invalidate(0, 1).unwrap();
    let len = fs::metadata(&intent).unwrap().len();
    let f = OpenOptions::new().append(true).open(&intent).unwrap();
    (&f).write_all(&[1, 0, 0, 0, 9]).unwrap();
    let (changes, stats) = collect(&mut t, &env.img);
    assert_eq!(stats.unknown_bytes, 64 * KIB);
    assert_eq!(changes.len(), 1);
    assert!(fs::metadata(&intent).unwrap().len() > len, "appended after the cut");
    t.commit().unwrap();
    assert!(!intent.exists());

    // Damage in the middle of a long log: everything is uncertain.
    for i in 0..40 {
        t.invalidate(i * 16 * KIB, 1).unwrap();
    }
    let f = OpenOptions::new().write(true).open(&intent).unwrap();
    f.write_all_at(&[0xee], INTENT_HEADER_LEN + 3).unwrap();
    let ((changes, stats), logs) = with_logs(|| collect(&mut t, &env.img));
    assert!(logs.contains("intent log is corrupt"), "{logs}");
    assert_eq!(stats.unknown_bytes, MIB);
    assert_eq!(changes.iter().map(Owned::len).sum::<u64>(), MIB);
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());
}

#[test]
fn replica_reconstruction_over_many_rounds() {
    let size = 12 * MIB + 5000;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..20 {
        let off = rng.random_range(0..size - 70_000);
        let len = rng.random_range(1..70_000);
        env.write_random(&mut rng, off, len);
    }
    let mut t = env.tracker();
    let hole_support = supports_holes(&env.img);
    for round in 0..12 {
        let (changes, stats) = collect(&mut t, &env.img);
        env.apply(&changes);
        env.assert_replica_equal();
        if round == 0 {
            assert!(stats.initial);
        }
        match round % 4 {
            // Sometimes the cycle is not committed (or the process restarts before it is).
            1 => {}
            2 => {
                drop(t);
                t = env.tracker();
            }
            _ => t.commit().unwrap(),
        }
        // Next round's writes: random data, zeros, punched holes, unaligned.
        for _ in 0..rng.random_range(1..30) {
            let off = rng.random_range(0..size - 1);
            let len = rng.random_range(1..(size - off).min(200_000));
            match rng.random_range(0..10) {
                0 => env.write(off, &vec![0u8; len as usize]),
                1 if hole_support => env.punch(off, len),
                _ => {
                    env.write_random(&mut rng, off, len as usize);
                }
            }
        }
        if round == 7 {
            env.set_len(size + 3 * MIB + 17);
            env.write_random(&mut rng, size + MIB, 9999);
        }
    }
    let (changes, _) = collect(&mut t, &env.img);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    let (nothing, _) = collect(&mut t, &env.img);
    assert!(nothing.is_empty());
}

#[test]
fn second_tracker_on_the_same_map_is_refused() {
    let env = Env::new(MIB);
    let _t = env.tracker();
    let err = HashScan::new(HashScanConfig::new(&env.map)).unwrap_err();
    assert!(err.to_string().contains("another agent"), "{err}");
}

#[test]
fn bad_configuration_is_refused() {
    let env = Env::new(MIB);
    let mut cfg = HashScanConfig::new(&env.map);
    cfg.chunk_size = 100_000;
    assert!(matches!(HashScan::new(cfg), Err(TrackerError::Config { .. })));
    let mut cfg = HashScanConfig::new(&env.map);
    cfg.max_change = 8 << 20;
    assert!(matches!(HashScan::new(cfg), Err(TrackerError::Config { .. })));
}

#[test]
fn throttle_applies_to_reads() {
    let env = Env::new(8 * MIB);
    let mut rng = StdRng::seed_from_u64(12);
    env.write_random(&mut rng, 0, 8 * MIB as usize);
    let mut t = env.tracker();
    // 4 MiB burst, then 4 MiB/s: the other 4 MiB take a second, most of it waiting.
    t.set_read_rate(NonZeroU64::new(4 * MIB));
    let (_, stats) = collect(&mut t, &env.img);
    assert!(stats.throttled >= std::time::Duration::from_millis(500), "{stats:?}");
    assert!(stats.throttled <= std::time::Duration::from_millis(1000), "{stats:?}");
    assert!(stats.duration >= std::time::Duration::from_millis(1000), "{stats:?}");
    t.set_read_rate(None);
}

#[test]
fn map_size_per_tib() {
    let tib = 1u64 << 40;
    let size = map_file_size(tib);
    // 2^24 blocks of 72 bytes = 1.125 GiB, plus a 96-byte header and 4096 segment checksums.
    assert_eq!(size, 96 + (1 << 24) * 72 + 4096 * 8);
    assert_eq!((1u64 << 24) * 72, 1152 * MIB);
    assert_eq!(map_file_size(0), MAP_HEADER_LEN);
}

#[test]
fn map_file_is_what_the_format_says() {
    let env = Env::new(MIB + 10);
    let mut t = env.tracker();
    collect(&mut t, &env.img);
    t.commit().unwrap();
    let bytes = fs::read(&env.map).unwrap();
    assert_eq!(&bytes[..8], b"LBHSMAP\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), MAP_VERSION);
    assert_eq!(u64::from_le_bytes(bytes[32..40].try_into().unwrap()), MIB + 10);
    // 17 blocks in segments of 8: 8 + 8 + 1 entries, each segment with its checksum.
    assert_eq!(bytes.len() as u64, MAP_HEADER_LEN + 17 * MAP_ENTRY_LEN + 3 * 8);
    assert!(!sibling(&env.map, ".next").exists());
    assert!(!sibling(&env.map, ".intent").exists());
}

#[test]
fn sub_block_collision_sends_the_whole_block() {
    let h = Hasher::new(42);
    let (old, _) = h.block(&[1u8; 65536]);
    let mut cur = old;
    cur.hash ^= 1; // the block hash differs but every sub-block hash matches
    assert_eq!(changed_mask(&old, &cur, 0, FULL), FULL);
    assert_eq!(changed_mask(&old, &old, 0, FULL), 0);
    assert_eq!(changed_mask(&old, &old, 0b100, FULL), 0b100);
    let mut one = cur;
    one.sub[3] ^= 1;
    assert_eq!(changed_mask(&old, &one, 0, FULL), 1 << 3);
    // Partial last block: only existing sub-blocks.
    assert_eq!(changed_mask(&old, &cur, 0, valid_mask(5000)), 0b11);
}

#[test]
fn zero_detection_and_hashes() {
    assert!(is_zero(&[]));
    assert!(is_zero(&[0; 4096]));
    let mut b = [0u8; 4096];
    b[4095] = 1;
    assert!(!is_zero(&b));
    b[4095] = 0;
    b[17] = 1;
    assert!(!is_zero(&b));
    let h = Hasher::new(7);
    let (e, zero) = h.block(&ZEROS);
    assert_eq!(zero, FULL);
    assert_eq!(e, h.zero_entry(BLOCK_SIZE as usize));
    // Different seeds give different hashes.
    assert_ne!(Hasher::new(8).zero_entry(4096), h.zero_entry(4096));
    let mut e2 = Entry { hash: 5, ..Entry::default() };
    e2.sub[15] = 9;
    let mut enc = Vec::new();
    e2.encode(&mut enc);
    assert_eq!(enc.len() as u64, MAP_ENTRY_LEN);
    assert_eq!(Entry::decode(&enc), e2);
}

// ---- Free space of a mounted filesystem (given here as a fixed list) ----

/// Collects with `free` as what the mounted filesystem reports free, checking the contract.
fn collect_free(t: &mut HashScan, img: &Path, free: &[Range<u64>]) -> (Vec<Owned>, CycleStats) {
    t.free_override = Some(free.to_vec());
    let disk = Disk::open(img).unwrap();
    let mut out = Vec::new();
    let stats = t
        .collect(&disk, &mut |c: Change<'_>| {
            out.push(match c {
                Change::Data { offset, data } => Owned::Data(offset, data.to_vec()),
                Change::Zero { offset, len } => Owned::Zero(offset, len),
            });
            Ok(())
        })
        .unwrap();
    check_free(&out, &stats, img, free);
    (out, stats)
}

/// The 4 KiB pieces of `range` (aligned), as `pieces` gives them for data.
fn data_pieces(range: Range<u64>) -> BTreeSet<(u64, bool)> {
    range.step_by(SUB as usize).map(|o| (o, false)).collect()
}

/// The committed map describes the replica: every entry is the hash of the replica's block.
/// This is the tracker's invariant, "the baseline map describes what the target holds".
fn assert_map_describes_replica(env: &Env) {
    let file = File::open(&env.map).unwrap();
    let header = Header::read(&file).unwrap();
    let hasher = Hasher::new(header.seed);
    let replica = fs::read(&env.replica).unwrap();
    assert_eq!(replica.len() as u64, header.disk_size);
    let bytes = fs::read(&env.map).unwrap();
    for (block, data) in replica.chunks(BLOCK_SIZE as usize).enumerate() {
        let block = block as u64;
        let seg = block / header.segment_blocks;
        let at = MAP_HEADER_LEN
            + seg * (header.segment_blocks * MAP_ENTRY_LEN + 8)
            + (block - seg * header.segment_blocks) * MAP_ENTRY_LEN;
        let entry = Entry::decode(&bytes[at as usize..(at + MAP_ENTRY_LEN) as usize]);
        assert_eq!(entry, hasher.block(data).0, "map entry of block {block} is not the replica's");
    }
}

/// The replica equals the disk outside `skipped` (ranges the last collects skipped as free).
fn assert_replica_equal_outside(env: &Env, skipped: &[Range<u64>]) {
    let src = env.image();
    let dst = fs::read(&env.replica).unwrap();
    assert_eq!(src.len(), dst.len(), "replica size");
    for (i, (a, b)) in src.iter().zip(&dst).enumerate() {
        let i = i as u64;
        if a != b && !skipped.iter().any(|r| r.contains(&i)) {
            panic!("replica differs from the disk at byte {i}, outside the free space");
        }
    }
}

#[test]
fn initial_copy_neither_reads_nor_sends_free_space_and_maps_it_as_zeros() {
    let size = 4 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(20);
    // Free blocks hold stale data (a deleted file's), as on a real filesystem.
    env.write_random(&mut rng, 0, size as usize);
    // Whole blocks MIB+64K .. 2MIB+64K are free; the second range holds no whole block.
    let free = [MIB + 1000..2 * MIB + 100 * KIB, 3 * MIB + 8 * KIB..3 * MIB + 40 * KIB];
    let skipped = MIB + 64 * KIB..2 * MIB + 64 * KIB;
    let mut t = env.tracker();
    let (changes, stats) = collect_free(&mut t, &env.img, &free);
    assert!(stats.initial);
    assert_eq!(stats.free_bytes_skipped, MIB, "{stats:?}");
    assert_eq!(stats.bytes_read, size - MIB, "{stats:?}");
    assert_eq!(stats.data_bytes, size - MIB);
    assert_eq!((stats.zero_bytes, stats.unknown_bytes, stats.hole_bytes_skipped), (0, 0, 0));
    let mut expected = data_pieces(0..skipped.start);
    expected.extend(data_pieces(skipped.end..size));
    assert_eq!(pieces(&changes), expected);
    t.commit().unwrap();
    env.apply(&changes);
    // The blank replica keeps zeros where the disk was free, and the map says zeros there.
    assert_replica_equal_outside(&env, std::slice::from_ref(&skipped));
    let replica = fs::read(&env.replica).unwrap();
    assert!(replica[skipped.start as usize..skipped.end as usize].iter().all(|&b| b == 0));
    assert_map_describes_replica(&env);

    // Nothing changed, still free: nothing read there, nothing sent.
    let (changes, stats) = collect_free(&mut t, &env.img, &free);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!((stats.free_bytes_skipped, stats.bytes_read), (MIB, size - MIB));
    t.commit().unwrap();

    // The filesystem allocates 128 KiB of it and writes there, and allocates the next 64 KiB
    // without writing (its stale content now matters): all of it differs from the zeros the
    // map records, so all of it is sent by the normal comparison.
    let written = skipped.start..skipped.start + 128 * KIB;
    env.write_random(&mut rng, written.start, (written.end - written.start) as usize);
    let allocated = skipped.start..written.end + 64 * KIB;
    let still_free = allocated.end..skipped.end;
    let (changes, stats) = collect_free(&mut t, &env.img, std::slice::from_ref(&still_free));
    assert_eq!(pieces(&changes), data_pieces(allocated.clone()));
    assert_eq!(stats.free_bytes_skipped, skipped.end - allocated.end);
    t.commit().unwrap();
    env.apply(&changes);
    assert_replica_equal_outside(&env, std::slice::from_ref(&still_free));
    assert_map_describes_replica(&env);
}

#[test]
fn a_freed_block_keeps_its_stale_copy_until_it_is_reused() {
    let size = 2 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(21);
    env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    let (changes, _) = collect_free(&mut t, &env.img, &[]);
    t.commit().unwrap();
    env.apply(&changes);
    env.assert_replica_equal();

    // A file is deleted (its blocks become free) and the blocks are overwritten meanwhile
    // (reused and freed again, or discarded): free now, so not read and not sent. The target
    // keeps the old content, which the map still describes.
    let freed = 512 * KIB..768 * KIB;
    env.write_random(&mut rng, freed.start, (freed.end - freed.start) as usize);
    // An unrelated write elsewhere is sent as usual.
    env.write_random(&mut rng, 1536 * KIB, 4096);
    let (changes, stats) = collect_free(&mut t, &env.img, std::slice::from_ref(&freed));
    assert_eq!(pieces(&changes), data_pieces(1536 * KIB..1540 * KIB));
    assert_eq!(stats.free_bytes_skipped, 256 * KIB);
    assert_eq!(stats.bytes_read, size - 256 * KIB);
    t.commit().unwrap();
    env.apply(&changes);
    assert_replica_equal_outside(&env, std::slice::from_ref(&freed));
    assert_map_describes_replica(&env);

    // Half of it is allocated again: its current content differs from the old copy, so it
    // is sent; the rest stays free and stale.
    let still_free = 640 * KIB..768 * KIB;
    let (changes, _) = collect_free(&mut t, &env.img, std::slice::from_ref(&still_free));
    assert_eq!(pieces(&changes), data_pieces(512 * KIB..640 * KIB));
    t.commit().unwrap();
    env.apply(&changes);
    assert_replica_equal_outside(&env, std::slice::from_ref(&still_free));
    assert_map_describes_replica(&env);

    // Not mounted any more (no free space known): everything is compared again.
    let (changes, stats) = collect_free(&mut t, &env.img, &[]);
    assert_eq!(pieces(&changes), data_pieces(still_free));
    assert_eq!(stats.free_bytes_skipped, 0);
    t.commit().unwrap();
    env.apply(&changes);
    env.assert_replica_equal();
    assert_map_describes_replica(&env);
}

#[test]
fn free_space_without_a_trusted_baseline_is_zeroed_not_read() {
    let size = 2 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(22);
    env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    let (changes, _) = collect_free(&mut t, &env.img, &[]);
    t.commit().unwrap();
    env.apply(&changes);

    // An unusable map: no baseline. Free blocks are not read; what the target holds there is
    // unknown, so they become zeros there (no payload) and the map records zeros.
    let f = OpenOptions::new().write(true).open(&env.map).unwrap();
    f.write_all_at(b"garbage!", 0).unwrap();
    let free = 256 * KIB..MIB;
    let ((changes, stats), logs) =
        with_logs(|| collect_free(&mut t, &env.img, std::slice::from_ref(&free)));
    assert!(logs.contains("baseline map is unusable"), "{logs}");
    assert_eq!(stats.unknown_bytes, size);
    assert_eq!(stats.free_bytes_skipped, 768 * KIB);
    assert_eq!(stats.bytes_read, size - 768 * KIB);
    assert_eq!(stats.zero_bytes, 768 * KIB);
    let zeros: BTreeSet<(u64, bool)> =
        (256 * KIB..MIB).step_by(SUB as usize).map(|o| (o, true)).collect();
    assert!(pieces(&changes).is_superset(&zeros));
    assert!(
        changes
            .iter()
            .all(|c| matches!(c, Owned::Data(..)) == (c.end() <= 256 * KIB || c.offset() >= MIB)),
        "data outside the free range, zeros inside"
    );
    t.commit().unwrap();
    env.apply(&changes);
    assert_replica_equal_outside(&env, std::slice::from_ref(&free));
    assert_map_describes_replica(&env);

    // Allocated again: the stale content differs from the zeros, so it is sent.
    let (changes, _) = collect_free(&mut t, &env.img, &[]);
    assert_eq!(pieces(&changes), data_pieces(256 * KIB..MIB));
    t.commit().unwrap();
    env.apply(&changes);
    env.assert_replica_equal();

    // Uncertain blocks (an invalidation, a half-shipped cycle) that are free: zeros too, not
    // the baseline and not a read. Block 0 is uncertain and free; block 1 only free.
    t.invalidate(100, 1).unwrap();
    let free = 0..128 * KIB;
    let (changes, stats) = collect_free(&mut t, &env.img, std::slice::from_ref(&free));
    assert_eq!(changes, vec![Owned::Zero(0, 64 * KIB)]);
    assert_eq!(stats.free_bytes_skipped, 128 * KIB);
    assert_eq!(stats.unknown_bytes, 64 * KIB);
    t.commit().unwrap();
    env.apply(&changes);
    assert_map_describes_replica(&env);
}

#[test]
fn too_many_free_extents_keep_the_largest() {
    let size = 2 * MIB;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(23);
    env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    t.free_cap = 2;
    // 1, 3, 2 and 1 blocks: only the 3- and 2-block extents fit.
    let free = [0..64 * KIB, 128 * KIB..320 * KIB, 512 * KIB..640 * KIB, MIB..MIB + 64 * KIB];
    let (changes, stats) = collect_free(&mut t, &env.img, &free);
    assert_eq!(stats.free_bytes_skipped, 5 * 64 * KIB);
    assert_eq!(stats.bytes_read, size - 5 * 64 * KIB);
    t.commit().unwrap();
    env.apply(&changes);
    assert_replica_equal_outside(&env, &[128 * KIB..320 * KIB, 512 * KIB..640 * KIB]);
    assert_map_describes_replica(&env);
}

#[test]
fn replica_with_free_space_over_many_rounds() {
    // Random free lists, writes, uncommitted cycles and restarts: after every collect the
    // replica equals the disk outside what that collect skipped as free, and after every
    // commit the map describes the replica.
    let size = 6 * MIB + 4096;
    let env = Env::new(size);
    let mut rng = StdRng::seed_from_u64(24);
    env.write_random(&mut rng, 0, size as usize);
    let mut t = env.tracker();
    for round in 0..16 {
        let mut free = Vec::new();
        let mut at = rng.random_range(0..300 * KIB);
        while at < size {
            let len = rng.random_range(1..600 * KIB);
            free.push(at..(at + len).min(size));
            at += len + rng.random_range(1..800 * KIB);
        }
        if round % 5 == 4 {
            free.clear(); // not mounted this cycle
        }
        let (changes, stats) = collect_free(&mut t, &env.img, &free);
        env.apply(&changes);
        assert_replica_equal_outside(&env, &free);
        assert_eq!(stats.bytes_read + stats.free_bytes_skipped, size, "{stats:?}");
        match round % 3 {
            0 => {
                t.commit().unwrap();
                assert_map_describes_replica(&env);
            }
            1 => {
                drop(t);
                t = env.tracker();
            }
            _ => {}
        }
        for _ in 0..rng.random_range(1..20) {
            let off = rng.random_range(0..size - 1);
            let len = rng.random_range(1..(size - off).min(300_000));
            if rng.random_range(0..5) == 0 {
                env.write(off, &vec![0u8; len as usize]);
            } else {
                env.write_random(&mut rng, off, len as usize);
            }
        }
    }
    let (changes, _) = collect_free(&mut t, &env.img, &[]);
    env.apply(&changes);
    env.assert_replica_equal();
    t.commit().unwrap();
    assert_map_describes_replica(&env);
}
