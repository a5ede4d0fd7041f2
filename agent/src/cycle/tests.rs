#![allow(clippy::cast_possible_truncation)]

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use lifeboat_wire::Extent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::collect::Pending;
use super::*;
use crate::tracker::{HashScan, HashScanConfig};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const MACHINE: MachineId = MachineId([3; 16]);

struct Env {
    dir: tempfile::TempDir,
    disks: Vec<PathBuf>,
    replicas: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
}

impl Env {
    fn new(sizes: &[u64]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut disks = Vec::new();
        let mut replicas = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let d = dir.path().join(format!("disk{i}.img"));
            let r = dir.path().join(format!("replica{i}.img"));
            File::create(&d).unwrap().set_len(size).unwrap();
            File::create(&r).unwrap().set_len(size).unwrap();
            disks.push(d);
            replicas.push(r);
        }
        Self { dir, disks, replicas, stop: Arc::new(AtomicBool::new(false)) }
    }

    fn journal_dir(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    fn journal(&self) -> Arc<Journal> {
        Arc::new(Journal::open(&self.journal_dir(), self.disks.len() as u32, MACHINE).unwrap())
    }

    fn cycler(&self, journal: Arc<Journal>, batch_max: u64, journal_max: u64) -> Cycler {
        let slots = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let map = self.dir.path().join(format!("hashscan-d{i}.map"));
                let mut cfg = HashScanConfig::new(&map);
                cfg.drop_cache = false;
                DiskSlot {
                    index: i as u32,
                    path: p.clone(),
                    tracker: Box::new(HashScan::new(cfg).unwrap()),
                    baseline_path: Some(map),
                }
            })
            .collect();
        Cycler::new(
            MACHINE,
            slots,
            journal,
            CycleLimits { batch_max_bytes: batch_max, journal_max_bytes: journal_max },
            self.stop.clone(),
            Arc::new(ProgressBoard::new(self.disks.len() as u32)),
        )
    }

    fn write(&self, disk: usize, off: u64, data: &[u8]) {
        let f = OpenOptions::new().write(true).open(&self.disks[disk]).unwrap();
        f.write_all_at(data, off).unwrap();
    }

    fn write_random(&self, rng: &mut StdRng, disk: usize, off: u64, len: usize) {
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        for c in data.chunks_mut(4096) {
            c[0] |= 1;
        }
        self.write(disk, off, &data);
    }

    /// Decodes every pending batch of every disk, applies it to the replica (as a master
    /// target would), acks it, and returns the batches' headers and extents.
    fn drain(&self, journal: &Journal) -> Vec<Vec<Shipped>> {
        let mut all = Vec::new();
        for d in 0..self.disks.len() as u32 {
            let replica = OpenOptions::new().write(true).open(&self.replicas[d as usize]).unwrap();
            let mut out = Vec::new();
            for p in journal.pending(d).unwrap() {
                let bytes = journal.read(d, p.seq).unwrap().unwrap();
                let batch = lifeboat_wire::decode(&bytes).unwrap();
                assert_eq!(batch.header().sequence, p.seq);
                assert_eq!(batch.header().disk_index, d);
                assert_eq!(batch.header().machine, MACHINE);
                let mut s =
                    Shipped { tag: batch.header().tag, data: 0, zero: Vec::new(), extents: 0 };
                for e in batch.extents() {
                    s.extents += 1;
                    match e {
                        Extent::Data { offset, data } => {
                            replica.write_all_at(data, *offset).unwrap();
                            s.data += data.len() as u64;
                        }
                        Extent::Zero { offset, length } => {
                            replica.write_all_at(&vec![0; *length as usize], *offset).unwrap();
                            s.zero.push((*offset, *length));
                        }
                    }
                }
                out.push(s);
                journal.ack(d, p.seq).unwrap();
            }
            all.push(out);
        }
        all
    }

    fn assert_replicas_equal(&self) {
        for (d, r) in self.disks.iter().zip(&self.replicas) {
            assert!(
                fs::read(d).unwrap() == fs::read(r).unwrap(),
                "replica of {} differs",
                d.display()
            );
        }
    }
}

#[derive(Debug)]
struct Shipped {
    tag: Option<ConsistencyTag>,
    data: u64,
    zero: Vec<(u64, u64)>,
    extents: usize,
}

fn done(o: CycleOutcome) -> (u64, Vec<DiskReport>) {
    match o {
        CycleOutcome::Done { point, disks, .. } => (point, disks),
        other => panic!("cycle did not run: {other:?}"),
    }
}

fn crash(point_id: u64) -> Option<ConsistencyTag> {
    Some(ConsistencyTag { kind: PointKind::Crash, point_id })
}

#[test]
fn data_is_split_across_batches_and_the_last_batch_of_every_disk_is_tagged() {
    let env = Env::new(&[2 * MIB, MIB]);
    let mut rng = StdRng::seed_from_u64(1);
    // 1 MiB contiguous: one tracker change of 1 MiB, larger than a 64 KiB batch.
    env.write_random(&mut rng, 0, 0, MIB as usize);
    env.write_random(&mut rng, 0, MIB + 100 * KIB, 12 * KIB as usize);
    env.write_random(&mut rng, 1, 512 * KIB, 4 * KIB as usize);
    let journal = env.journal();
    let mut c = env.cycler(journal.clone(), 64 * KIB, 64 * MIB);
    let (point, reports) = done(c.run_cycle().unwrap());
    assert_eq!(point, 1);
    assert_eq!(reports.len(), 2);
    let shipped = env.drain(&journal);
    env.assert_replicas_equal();

    let d0 = &shipped[0];
    assert!(d0.len() >= 17, "1 MiB + 12 KiB in 64 KiB batches: {}", d0.len());
    assert!(d0.iter().all(|b| b.data <= 64 * KIB), "{d0:?}");
    assert_eq!(d0.iter().map(|b| b.data).sum::<u64>(), MIB + 12 * KIB);
    assert_eq!(reports[0].batches, d0.len() as u64);
    // Only the last batch of each disk carries the tag, the same point on both.
    for disk in &shipped {
        let (last, rest) = disk.split_last().unwrap();
        assert_eq!(last.tag, crash(1));
        assert!(rest.iter().all(|b| b.tag.is_none()));
    }
    assert_eq!(shipped[1].len(), 1);
    assert_eq!(shipped[1][0].data, 4 * KIB);

    // Next cycle: nothing changed on disk 1, an empty batch carries its tag.
    env.write_random(&mut rng, 0, 300 * KIB, 4 * KIB as usize);
    let (point, _) = done(c.run_cycle().unwrap());
    assert_eq!(point, 2);
    let shipped = env.drain(&journal);
    assert_eq!(shipped[0].len(), 1);
    assert_eq!((shipped[0][0].data, shipped[0][0].tag), (4 * KIB, crash(2)));
    assert_eq!(shipped[1].len(), 1);
    assert_eq!((shipped[1][0].extents, shipped[1][0].tag), (0, crash(2)));
    env.assert_replicas_equal();
}

#[test]
fn a_change_that_does_not_fit_goes_to_the_next_batch() {
    let env = Env::new(&[MIB]);
    let mut rng = StdRng::seed_from_u64(2);
    // Two separate 40 KiB changes, 64 KiB batches: the second does not fit after the first
    // (24 KiB left) and goes whole to the next batch.
    env.write_random(&mut rng, 0, 0, 40 * KIB as usize);
    env.write_random(&mut rng, 0, 512 * KIB, 40 * KIB as usize);
    let journal = env.journal();
    let mut c = env.cycler(journal.clone(), 64 * KIB, 64 * MIB);
    done(c.run_cycle().unwrap());
    let shipped = env.drain(&journal);
    let sizes: Vec<u64> = shipped[0].iter().map(|b| b.data).collect();
    assert_eq!(sizes, vec![40 * KIB, 40 * KIB]);
    env.assert_replicas_equal();
}

#[test]
fn zeroed_blocks_become_zero_extents() {
    let env = Env::new(&[MIB]);
    let mut rng = StdRng::seed_from_u64(3);
    env.write_random(&mut rng, 0, 0, MIB as usize);
    let journal = env.journal();
    let mut c = env.cycler(journal.clone(), 64 * KIB, 64 * MIB);
    done(c.run_cycle().unwrap());
    env.drain(&journal);
    env.write(0, 128 * KIB, &[0u8; 64 * 1024]);
    env.write(0, 700 * KIB, &[0u8; 4096]);
    done(c.run_cycle().unwrap());
    let shipped = env.drain(&journal);
    assert_eq!(shipped[0].len(), 1);
    assert_eq!(shipped[0][0].data, 0);
    assert_eq!(shipped[0][0].zero, vec![(128 * KIB, 64 * KIB), (700 * KIB, 4 * KIB)]);
    env.assert_replicas_equal();
}

#[test]
fn a_journal_failure_commits_nothing_and_the_next_cycle_reports_the_changes() {
    let env = Env::new(&[MIB, MIB]);
    let mut rng = StdRng::seed_from_u64(4);
    env.write_random(&mut rng, 0, 0, 256 * KIB as usize);
    env.write_random(&mut rng, 1, 0, 256 * KIB as usize);
    let journal = env.journal();
    let mut c = env.cycler(journal.clone(), 64 * KIB, 64 * MIB);
    done(c.run_cycle().unwrap());
    env.drain(&journal);
    let break_dir = |d: &str| {
        let p = env.journal_dir().join(d);
        fs::remove_dir_all(&p).unwrap();
        fs::write(&p, b"not a directory").unwrap();
        p
    };
    let mend_dir = |p: &Path| {
        fs::remove_file(p).unwrap();
        fs::create_dir(p).unwrap();
    };

    // Disk 0's appends fail for real in the middle of its collect (200 KiB > one batch).
    env.write_random(&mut rng, 0, 512 * KIB, 200 * KIB as usize);
    env.write_random(&mut rng, 1, 512 * KIB, 8 * KIB as usize);
    let d0 = break_dir("d0");
    let err = c.run_cycle().unwrap_err();
    assert!(matches!(err, CycleError::Tracker { index: 0, .. }), "{err}");
    assert!(err.to_string().contains("d0"), "{err}");
    mend_dir(&d0);
    // Nothing was committed: the next cycle reports every change again.
    let (point, reports) = done(c.run_cycle().unwrap());
    assert_eq!(point, 2);
    assert_eq!(reports[0].stats.data_bytes, 200 * KIB);
    assert_eq!(reports[1].stats.data_bytes, 8 * KIB);
    env.drain(&journal);
    env.assert_replicas_equal();

    // Disk 1's tagged batch fails after disk 0's was journaled: disk 0 commits (its batches
    // are durable), disk 1 does not, and reports its change again.
    env.write_random(&mut rng, 0, 100 * KIB, 8 * KIB as usize);
    env.write_random(&mut rng, 1, 100 * KIB, 8 * KIB as usize);
    let d1 = break_dir("d1");
    let err = c.run_cycle().unwrap_err();
    assert!(matches!(err, CycleError::Journal(_)), "{err}");
    assert!(err.to_string().contains("d1"), "{err}");
    mend_dir(&d1);
    let (point, reports) = done(c.run_cycle().unwrap());
    assert_eq!(point, 4, "the failed cycle's point number (3) is not reused");
    assert_eq!(reports[0].stats.data_bytes, 0);
    assert_eq!(reports[1].stats.data_bytes, 8 * KIB);
    env.drain(&journal);
    env.assert_replicas_equal();
}

#[test]
fn a_full_journal_skips_the_cycle_and_loses_nothing() {
    let env = Env::new(&[MIB]);
    let mut rng = StdRng::seed_from_u64(5);
    env.write_random(&mut rng, 0, 0, 200 * KIB as usize);
    let journal = env.journal();
    let mut c = env.cycler(journal.clone(), 64 * KIB, 128 * KIB);
    // The collect waits for room while the journal is full: a sender acks in the background.
    done(cycle_while_draining(&mut c, &journal, &env.replicas[0]));
    env.drain(&journal);
    env.assert_replicas_equal();

    // Nobody acks now: the journal fills past its limit and the next cycle is skipped.
    env.write_random(&mut rng, 0, 0, 200 * KIB as usize);
    let stop = env.stop.clone();
    let handle = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    let err = c.run_cycle().unwrap_err();
    handle.join().unwrap();
    assert!(matches!(err, CycleError::Stopped), "{err}");
    env.stop.store(false, Ordering::Relaxed);
    assert!(journal.bytes() > 0);
    // Over the limit (an appliance that is away): skipped.
    env.write_random(&mut rng, 0, 600 * KIB, 64 * KIB as usize);
    let journal_bytes = journal.bytes();
    journal
        .append(0, |seq| {
            Batcher::encode(MACHINE, 0, seq, None, &{
                let mut p = Pending::default();
                p.extents.push(Extent::Data { offset: 0, data: Cow::Owned(vec![1; 128 * 1024]) });
                p
            })
        })
        .unwrap();
    assert!(journal.bytes() > 128 * KIB, "{journal_bytes}");
    assert!(matches!(c.run_cycle().unwrap(), CycleOutcome::Skipped { .. }));
    // The appliance comes back: once acked, the next cycle sends every change since.
    env.drain(&journal);
    let (_, reports) = done(cycle_while_draining(&mut c, &journal, &env.replicas[0]));
    assert!(reports[0].stats.data_bytes >= 264 * KIB, "{:?}", reports[0].stats);
    env.drain(&journal);
    env.assert_replicas_equal();
}

/// Runs a cycle while another thread applies and acks disk 0's batches, as the sender would.
fn cycle_while_draining(c: &mut Cycler, journal: &Arc<Journal>, replica: &Path) -> CycleOutcome {
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (journal, replica, stop) = (journal.clone(), replica.to_path_buf(), stop.clone());
        std::thread::spawn(move || drain_until(&journal, &replica, &stop))
    };
    let outcome = c.run_cycle();
    stop.store(true, Ordering::Relaxed);
    drainer.join().unwrap();
    outcome.unwrap()
}

fn drain_until(journal: &Journal, replica: &Path, stop: &AtomicBool) {
    let f = OpenOptions::new().write(true).open(replica).unwrap();
    while !stop.load(Ordering::Relaxed) {
        for p in journal.pending(0).unwrap() {
            let bytes = journal.read(0, p.seq).unwrap().unwrap();
            let batch = lifeboat_wire::decode(&bytes).unwrap();
            for e in batch.extents() {
                if let Extent::Data { offset, data } = e {
                    f.write_all_at(data, *offset).unwrap();
                }
            }
            journal.ack(0, p.seq).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn resync_mark_invalidates_the_whole_disk() {
    let env = Env::new(&[MIB]);
    let mut rng = StdRng::seed_from_u64(6);
    env.write_random(&mut rng, 0, 0, MIB as usize);
    let journal = env.journal();
    let mut c = env.cycler(journal.clone(), 256 * KIB, 64 * MIB);
    done(c.run_cycle().unwrap());
    env.drain(&journal);
    // The appliance lost everything it had of disk 0.
    fs::write(&env.replicas[0], vec![0u8; MIB as usize]).unwrap();
    journal.reset(0, 100).unwrap();
    let (_, reports) = done(c.run_cycle().unwrap());
    assert_eq!(reports[0].stats.data_bytes, MIB);
    assert_eq!(journal.resync_requested(0).unwrap(), None);
    assert_eq!(journal.pending(0).unwrap()[0].seq, 100);
    env.drain(&journal);
    env.assert_replicas_equal();
}

#[test]
fn unaligned_disk_size_is_refused_with_advice() {
    let env = Env::new(&[MIB + 100]);
    let journal = env.journal();
    let mut c = env.cycler(journal, 64 * KIB, 64 * MIB);
    let err = c.run_cycle().unwrap_err();
    assert!(matches!(err, CycleError::UnalignedSize { .. }), "{err}");
    assert!(err.to_string().contains("multiple of 512"), "{err}");
}
