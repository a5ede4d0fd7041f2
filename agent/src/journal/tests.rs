use super::*;
use lifeboat_wire::{Batch, BatchHeader, ConsistencyTag, PointKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const M: MachineId = MachineId([7; 16]);

fn batch(disk: u32, seq: u64, fill: u8) -> Vec<u8> {
    let mut b = Batch::builder(BatchHeader {
        machine: M,
        disk_index: disk,
        sequence: seq,
        tag: (fill == 0).then_some(ConsistencyTag { kind: PointKind::Crash, point_id: 1 }),
    });
    if fill != 0 {
        b.push_data(seq * 4096, vec![fill; 4096]).unwrap();
    }
    lifeboat_wire::encode(&b.build())
}

fn append(j: &Journal, disk: u32, fill: u8) -> u64 {
    j.append(disk, |seq| batch(disk, seq, fill)).unwrap()
}

fn seqs(j: &Journal, disk: u32) -> Vec<u64> {
    j.pending(disk).unwrap().iter().map(|p| p.seq).collect()
}

#[test]
fn append_ack_reload() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 2, M).unwrap();
    assert!(j.is_empty());
    assert_eq!(append(&j, 0, 1), 0);
    assert_eq!(append(&j, 0, 2), 1);
    assert_eq!(append(&j, 1, 3), 0);
    assert_eq!(append(&j, 0, 4), 2);
    assert_eq!(seqs(&j, 0), vec![0, 1, 2]);
    assert_eq!(j.len(), 4);
    let one = batch(0, 0, 1).len() as u64;
    assert_eq!(j.bytes(), 4 * one);
    assert!(dir.path().join("d0/00000000000000000001.batch").exists());
    assert_eq!(j.read(0, 1).unwrap().unwrap(), batch(0, 1, 2));
    assert_eq!(j.read(0, 9).unwrap(), None);

    j.ack(0, 1).unwrap();
    assert_eq!(seqs(&j, 0), vec![2]);
    assert_eq!(j.bytes(), 2 * one);
    assert!(!dir.path().join("d0/00000000000000000000.batch").exists());
    assert_eq!(j.read(0, 0).unwrap(), None);
    // Acking again or below is a no-op.
    j.ack(0, 0).unwrap();
    drop(j);

    let j = Journal::open(dir.path(), 2, M).unwrap();
    assert_eq!(seqs(&j, 0), vec![2]);
    assert_eq!(seqs(&j, 1), vec![0]);
    assert_eq!(j.next_sequence(0).unwrap(), 3);
    assert_eq!(j.bytes(), 2 * one);
    assert_eq!(append(&j, 0, 5), 3);
}

#[test]
fn next_sequence_survives_an_empty_queue() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    for _ in 0..5 {
        append(&j, 0, 1);
    }
    j.ack(0, 4).unwrap();
    assert!(j.is_empty());
    drop(j);
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(j.next_sequence(0).unwrap(), 5);
    assert_eq!(append(&j, 0, 1), 5);
}

#[test]
fn points_are_reserved_durably() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(j.next_point(), 1);
    assert_eq!(j.reserve_point().unwrap(), 1);
    assert_eq!(j.reserve_point().unwrap(), 2);
    drop(j);
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(j.next_point(), 3);
}

#[test]
fn torn_last_file_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    for _ in 0..3 {
        append(&j, 0, 9);
    }
    drop(j);
    let last = dir.path().join("d0/00000000000000000002.batch");
    let bytes = fs::read(&last).unwrap();
    fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    // A leftover temp file of an append that never renamed.
    fs::write(dir.path().join("d0/00000000000000000003.batch.tmp"), b"junk").unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(seqs(&j, 0), vec![0, 1]);
    assert!(!last.exists());
    assert!(!dir.path().join("d0/00000000000000000003.batch.tmp").exists());
    // The torn batch's sequence is used again: the appliance never saw it.
    assert_eq!(append(&j, 0, 9), 2);
}

#[test]
fn corrupt_middle_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    for _ in 0..3 {
        append(&j, 0, 9);
    }
    drop(j);
    let mid = dir.path().join("d0/00000000000000000001.batch");
    let mut bytes = fs::read(&mid).unwrap();
    bytes[200] ^= 0xff;
    fs::write(&mid, &bytes).unwrap();
    let err = Journal::open(dir.path(), 1, M).unwrap_err();
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("00000000000000000001.batch") && msg.contains("delete"), "{msg}");

    // Deleting the disk's directory recovers, with a resync mark.
    fs::remove_dir_all(dir.path().join("d0")).unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert!(j.is_empty());
    assert_eq!(j.resync_requested(0).unwrap(), Some(1));
}

#[test]
fn gaps_and_foreign_batches_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    for _ in 0..3 {
        append(&j, 0, 9);
    }
    drop(j);
    fs::remove_file(dir.path().join("d0/00000000000000000001.batch")).unwrap();
    let err = Journal::open(dir.path(), 1, M).unwrap_err();
    assert!(matches!(err, JournalError::Gap { missing: 1, .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    append(&j, 0, 9);
    append(&j, 0, 9);
    drop(j);
    let err = Journal::open(dir.path(), 1, MachineId([8; 16])).unwrap_err();
    assert!(matches!(err, JournalError::Misplaced { .. }), "{err}");
    assert!(err.to_string().contains("machine"), "{err}");
}

#[test]
fn a_new_journal_has_no_resync_but_a_new_disk_in_an_old_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(j.resync_requested(0).unwrap(), None);
    drop(j);
    let j = Journal::open(dir.path(), 2, M).unwrap();
    assert_eq!(j.resync_requested(0).unwrap(), None);
    assert_eq!(j.resync_requested(1).unwrap(), Some(1));
    j.clear_resync(1, 1).unwrap();
    drop(j);
    let j = Journal::open(dir.path(), 2, M).unwrap();
    assert_eq!(j.resync_requested(1).unwrap(), None);
}

#[test]
fn reset_drops_the_queue_and_marks_a_resync() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    for _ in 0..3 {
        append(&j, 0, 9);
    }
    j.reset(0, 40).unwrap();
    assert!(j.is_empty());
    assert_eq!(j.bytes(), 0);
    let token = j.resync_requested(0).unwrap().unwrap();
    assert_eq!(append(&j, 0, 9), 40);
    // A second reset before the first was handled: clearing the old token keeps the mark.
    j.reset(0, 41).unwrap();
    j.clear_resync(0, token).unwrap();
    assert!(j.resync_requested(0).unwrap().is_some());
    drop(j);
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(j.next_sequence(0).unwrap(), 41);
    let token = j.resync_requested(0).unwrap().unwrap();
    j.clear_resync(0, token).unwrap();
    assert_eq!(j.resync_requested(0).unwrap(), None);
    // skip_to drops what the appliance has.
    append(&j, 0, 9);
    append(&j, 0, 9);
    j.skip_to(0, 42).unwrap();
    assert_eq!(seqs(&j, 0), vec![42]);
}

#[test]
fn append_refuses_a_batch_with_the_wrong_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    let err = j.append(0, |_| batch(0, 5, 1)).unwrap_err();
    assert!(matches!(err, JournalError::BadAppend { .. }), "{err}");
    assert!(j.is_empty());
    assert!(matches!(j.append(3, |s| batch(3, s, 1)), Err(JournalError::NoSuchDisk { .. })));
}

#[test]
fn a_second_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _j = Journal::open(dir.path(), 1, M).unwrap();
    let err = Journal::open(dir.path(), 1, M).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
}

#[test]
fn wait_for_room_returns_on_ack_or_stop() {
    let dir = tempfile::tempdir().unwrap();
    let j = std::sync::Arc::new(Journal::open(dir.path(), 1, M).unwrap());
    append(&j, 0, 1);
    append(&j, 0, 1);
    let one = batch(0, 0, 1).len() as u64;
    let stop = AtomicBool::new(false);
    assert!(j.wait_for_room(3 * one, one, &stop));
    let j2 = j.clone();
    let acker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        j2.ack(0, 0).unwrap();
    });
    assert!(j.wait_for_room(2 * one, one, &stop));
    acker.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(!j.wait_for_room(one, one, &stop));
}

fn file(dir: &Path, disk: u32, seq: u64) -> PathBuf {
    dir.join(format!("d{disk}/{seq:020}.batch"))
}

#[test]
fn batches_in_memory_are_sent_and_acknowledged_without_files() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    let one = batch(0, 0, 1).len() as u64;
    j.set_memory_budget(3 * one).unwrap();
    for fill in 1..=3 {
        append(&j, 0, fill);
    }
    assert_eq!(j.memory_bytes(), 3 * one);
    assert!(!file(dir.path(), 0, 0).exists(), "a batch within the budget is not written");
    assert_eq!(j.read(0, 1).unwrap().unwrap(), batch(0, 1, 2));
    // The reservation covers every number handed out, durably.
    assert!(j.reserved(0).unwrap() >= 3);
    assert_eq!(read_counter(&dir.path().join("d0/reserved")).unwrap(), Some(RESERVE_STEP));

    // A fourth does not fit: the oldest goes to a file; files stay before memory.
    append(&j, 0, 4);
    assert!(file(dir.path(), 0, 0).exists());
    assert!(!file(dir.path(), 0, 1).exists());
    assert_eq!(j.memory_bytes(), 3 * one);
    assert_eq!(j.read(0, 0).unwrap().unwrap(), batch(0, 0, 1));
    assert_eq!(j.bytes(), 4 * one);

    j.ack(0, 2).unwrap();
    assert_eq!(seqs(&j, 0), vec![3]);
    assert_eq!(j.memory_bytes(), one);
    assert_eq!(j.bytes(), one);
    assert!(!file(dir.path(), 0, 0).exists());
    // The counter says only what is acknowledged, not the batch still in memory.
    assert_eq!(read_counter(&dir.path().join("d0/next-sequence")).unwrap(), Some(3));
}

#[test]
fn persist_writes_memory_to_files_and_a_crash_loses_only_uncommitted_batches() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    j.set_memory_budget(64 << 20).unwrap();
    append(&j, 0, 1);
    append(&j, 0, 2);
    j.persist(0).unwrap();
    assert_eq!(j.memory_bytes(), 0);
    assert!(file(dir.path(), 0, 0).exists() && file(dir.path(), 0, 1).exists());
    // Two more in memory, then a crash (drop without persist).
    append(&j, 0, 3);
    append(&j, 0, 4);
    drop(j);

    let j = Journal::open(dir.path(), 1, M).unwrap();
    j.set_memory_budget(64 << 20).unwrap();
    assert_eq!(seqs(&j, 0), vec![0, 1], "the persisted batches survive");
    assert_eq!(j.next_sequence(0).unwrap(), 2);
    let reserved = j.reserved(0).unwrap();
    assert!(reserved >= 4, "numbers 2 and 3 were handed out: {reserved}");
    // The appliance got 2 and 3 before the crash and expects 4: within the reservation,
    // the journal continues there without a resync.
    j.advance_to(0, 4).unwrap();
    assert!(j.is_empty());
    assert_eq!(j.next_sequence(0).unwrap(), 4);
    assert_eq!(j.resync_requested(0).unwrap(), None);
    assert_eq!(append(&j, 0, 5), 4);
    // Beyond the reservation is not this journal's number.
    assert!(j.advance_to(0, j.reserved(0).unwrap() + 1).is_err());
    drop(j);
    let j = Journal::open(dir.path(), 1, M).unwrap();
    assert_eq!(j.next_sequence(0).unwrap(), 4, "advance_to is durable");
}

#[test]
fn a_batch_larger_than_the_budget_goes_to_a_file_after_everything_older() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 2, M).unwrap();
    let one = batch(0, 0, 1).len() as u64;
    j.set_memory_budget(one).unwrap();
    append(&j, 0, 1);
    append(&j, 1, 1);
    // Disk 1's batch pushed disk 0's out (the budget is shared).
    assert!(file(dir.path(), 0, 0).exists());
    assert!(!file(dir.path(), 1, 0).exists());
    j.set_memory_budget(one - 1).unwrap();
    assert!(file(dir.path(), 1, 0).exists(), "lowering the budget spills");
    append(&j, 1, 2);
    assert!(file(dir.path(), 1, 1).exists());
    assert_eq!(j.memory_bytes(), 0);
    // Reset drops memory and files alike.
    j.set_memory_budget(one).unwrap();
    append(&j, 1, 3);
    j.reset(1, 10).unwrap();
    assert_eq!(j.memory_bytes(), 0);
    assert_eq!(j.bytes(), one);
}

#[test]
fn after_a_restart_with_batches_in_memory_appends_wait_for_the_first_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1, M).unwrap();
    j.set_memory_budget(64 << 20).unwrap();
    append(&j, 0, 1);
    drop(j); // crash: batch 0 was only in memory
    let j = Arc::new(Journal::open(dir.path(), 1, M).unwrap());
    let stop = AtomicBool::new(false);
    let waiter = {
        let j = j.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            assert!(j.wait_until_settled(&AtomicBool::new(false)));
            started.elapsed()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // The appliance had received batch 0: it expects 1.
    j.advance_to(0, 1).unwrap();
    assert!(waiter.join().unwrap() >= Duration::from_millis(250), "the cycle waited");
    assert!(j.wait_until_settled(&stop));
    assert_eq!(append(&j, 0, 2), 1, "no number is reused");
    // A journal that never held batches in memory does not wait.
    let other = tempfile::tempdir().unwrap();
    let k = Journal::open(other.path(), 1, M).unwrap();
    append(&k, 0, 1);
    drop(k);
    let k = Journal::open(other.path(), 1, M).unwrap();
    assert!(k.wait_until_settled(&stop));
}
