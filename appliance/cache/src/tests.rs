//! Unit tests: replay, crash repair, corruption, rolling, pressure, duplicates.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;
use crate::format::{RELEASE_ENTRY_LEN, RELEASE_HEADER_LEN, SEGMENT_HEADER_LEN};

fn key(machine: u64, disk: u32, sequence: u64) -> RecordKey {
    RecordKey { machine, disk, sequence }
}

/// Deterministic payload of `len` bytes for `k`.
fn payload(k: RecordKey, len: usize) -> Vec<u8> {
    let seed = k.machine.wrapping_mul(31) ^ u64::from(k.disk).wrapping_mul(7) ^ k.sequence;
    (0..len).map(|i| (seed as usize).wrapping_add(i * 13) as u8).collect()
}

fn small() -> CacheConfig {
    CacheConfig { max_bytes: 1 << 20, high_water_bytes: 1 << 19, segment_bytes: 4096 }
}

fn open(dir: &Path, config: CacheConfig) -> (Cache, Vec<Pending>) {
    Cache::open(dir, config).expect("open cache")
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

fn segment_files(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| match classify(e.unwrap().file_name().to_str()?) {
            FileKind::Segment(n) => Some(n),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v
}

fn keys(p: &[Pending]) -> Vec<RecordKey> {
    p.iter().map(|p| p.key).collect()
}

/// Appends one record per key, each with its own fsync.
fn fill(cache: &mut Cache, ks: &[RecordKey], len: usize) -> Vec<RecordRef> {
    ks.iter().map(|&k| cache.append(k, &payload(k, len)).unwrap()).collect()
}

#[test]
fn crash_without_release_replays_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Interleaved streams, appended out of key order.
    let mut ks = Vec::new();
    for s in (0..10u64).rev() {
        ks.push(key(2, 0, s));
        ks.push(key(1, 1, s));
        ks.push(key(1, 0, s));
    }
    {
        let (mut cache, pending) = open(dir.path(), small());
        assert!(pending.is_empty());
        fill(&mut cache, &ks, 300);
        // "Crash": dropped without releasing anything.
    }
    let (cache, pending) = open(dir.path(), small());
    let mut want = ks.clone();
    want.sort();
    assert_eq!(keys(&pending), want);
    for p in &pending {
        assert_eq!(cache.read(&p.record).unwrap(), payload(p.key, 300));
    }
    assert!(segment_files(dir.path()).len() > 1, "the test should span segments");
}

#[test]
fn released_records_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..20).map(|s| key(7, 3, s)).collect();
    {
        let (mut cache, _) = open(dir.path(), small());
        let refs = fill(&mut cache, &ks, 200);
        for r in refs.iter().step_by(3) {
            cache.release(r).unwrap();
        }
        // Releasing twice is harmless.
        cache.release(&refs[0]).unwrap();
    }
    let (mut cache, pending) = open(dir.path(), small());
    let want: Vec<_> = ks.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, k)| *k).collect();
    assert_eq!(keys(&pending), want);

    // Release the rest in one call; after another restart nothing is pending.
    let refs: Vec<_> = pending.iter().map(|p| p.record).collect();
    cache.release_many(&refs).unwrap();
    assert!(cache.pending().is_empty());
    drop(cache);
    let (cache, pending) = open(dir.path(), small());
    assert!(pending.is_empty());
    // Only the highest segment is left, as the numbering anchor.
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(
        cache.usage() <= small().segment_bytes + 2 * RELEASE_HEADER_LEN + 40 * RELEASE_ENTRY_LEN
    );
}

#[test]
fn truncation_anywhere_in_the_last_record_is_repaired() {
    let src = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..4).map(|s| key(1, 0, s)).collect();
    let refs = {
        let (mut cache, _) = open(src.path(), small());
        fill(&mut cache, &ks, 150)
    };
    let last = refs[3];
    assert_eq!(last.segment(), 1);
    let bytes = fs::read(segment_path(src.path(), 1)).unwrap();
    assert_eq!(bytes.len() as u64, last.offset() + last.stored_len());

    for cut in last.offset()..last.offset() + last.stored_len() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), &bytes[..cut as usize]).unwrap();
        let (mut cache, pending) = Cache::open(dir.path(), small())
            .unwrap_or_else(|e| panic!("open after cut at {cut} failed: {e}"));
        assert_eq!(keys(&pending), ks[..3], "cut at {cut}");
        for p in &pending {
            assert_eq!(cache.read(&p.record).unwrap(), payload(p.key, 150));
        }
        assert_eq!(
            fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
            last.offset(),
            "torn tail truncated (cut at {cut})"
        );
        // The agent never got an ack for the torn batch and sends it again.
        cache.append(ks[3], &payload(ks[3], 150)).unwrap();
        drop(cache);
        let (_, pending) = open(dir.path(), small());
        assert_eq!(keys(&pending), ks, "cut at {cut}");
    }
}

/// Collects what `tracing` logs while `f` runs.
fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }
    let sink = Sink::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn torn_tail_repair_warns_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let r = {
        let (mut cache, _) = open(dir.path(), small());
        cache.append(key(1, 0, 0), b"kept").unwrap();
        cache.append(key(1, 0, 1), b"torn by the crash").unwrap()
    };
    let path = segment_path(dir.path(), 1);
    let len = fs::metadata(&path).unwrap().len();
    fs::File::options().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
    let (res, logs) = logs_of(|| Cache::open(dir.path(), small()));
    let (_, pending) = res.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains(&path.display().to_string()), "{logs}");
    assert!(logs.contains(&format!("offset={}", r.offset())), "{logs}");
    assert!(logs.contains("torn write"), "{logs}");
}

#[test]
fn torn_group_commit_is_dropped_whole() {
    // A crash in the middle of a group commit can leave any of its pages
    // unwritten; a later record of the same group may be intact. Its sync floor
    // shows it was not fsynced either, so the whole group tail goes.
    let dir = tempfile::tempdir().unwrap();
    let first = key(1, 0, 0);
    let group: Vec<_> = (1..4).map(|s| key(1, 0, s)).collect();
    let refs = {
        let (mut cache, _) = open(dir.path(), small());
        cache.append(first, &payload(first, 100)).unwrap();
        let data: Vec<_> = group.iter().map(|&k| payload(k, 100)).collect();
        let batch: Vec<_> = group.iter().zip(&data).map(|(&k, d)| (k, d.as_slice())).collect();
        cache.append_many(&batch).unwrap()
    };
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(refs[1].offset() + RECORD_HEADER_LEN + 10) as usize] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let (_, pending) = open(dir.path(), small());
    assert_eq!(keys(&pending), vec![first, group[0]]);
    assert_eq!(fs::metadata(&path).unwrap().len(), refs[1].offset());
}

#[test]
fn corrupt_record_in_the_middle_of_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..5).map(|s| key(1, 0, s)).collect();
    let refs = {
        let (mut cache, _) = open(dir.path(), small());
        fill(&mut cache, &ks, 100)
    };
    let path = segment_path(dir.path(), 1);
    let original = fs::read(&path).unwrap();
    // Every byte of a middle record: header or payload.
    let mid = refs[2];
    for at in mid.offset()..mid.offset() + mid.stored_len() {
        let mut bytes = original.clone();
        bytes[at as usize] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        match Cache::open(dir.path(), small()) {
            Err(Error::CorruptRecord { path: p, offset, reason }) => {
                assert_eq!(p, path);
                assert_eq!(offset, mid.offset(), "flip at {at}: {reason}");
            }
            other => panic!("flip at {at}: expected CorruptRecord, got {other:?}"),
        }
        // Nothing was truncated.
        assert_eq!(fs::read(&path).unwrap().len(), original.len());
    }
    let err = {
        let mut bytes = original.clone();
        bytes[(mid.offset() + 70) as usize] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        Cache::open(dir.path(), small()).unwrap_err().to_string()
    };
    assert!(err.contains("00000000000000000001.segment"), "{err}");
    assert!(err.contains(&format!("offset {}", mid.offset())), "{err}");
    assert!(err.contains("not a torn write"), "{err}");
}

#[test]
fn corrupt_record_in_a_sealed_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..40).map(|s| key(1, 0, s)).collect();
    let refs = {
        let (mut cache, _) = open(dir.path(), small());
        fill(&mut cache, &ks, 500)
    };
    // The last record of segment 1 is followed by segment 2, so it is sealed.
    let victim = refs.iter().rev().find(|r| r.segment() == 1).copied().unwrap();
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(victim.offset() + victim.stored_len() - 1) as usize] ^= 0x80;
    fs::write(&path, &bytes).unwrap();
    match Cache::open(dir.path(), small()) {
        Err(Error::CorruptRecord { path: p, offset, .. }) => {
            assert_eq!(p, path);
            assert_eq!(offset, victim.offset());
        }
        other => panic!("expected CorruptRecord, got {other:?}"),
    }
    // A truncated sealed segment is an error too, not a torn write.
    fs::write(&path, &bytes[..(victim.offset() + 10) as usize]).unwrap();
    assert!(matches!(Cache::open(dir.path(), small()), Err(Error::CorruptRecord { .. })));
}

#[test]
fn damage_before_a_released_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..3).map(|s| key(1, 0, s)).collect();
    let data: Vec<_> = ks.iter().map(|&k| payload(k, 100)).collect();
    let batch: Vec<_> = ks.iter().zip(&data).map(|(&k, d)| (k, d.as_slice())).collect();
    let refs = {
        let (mut cache, _) = open(dir.path(), small());
        let refs = cache.append_many(&batch).unwrap();
        cache.release(&refs[2]).unwrap();
        refs
    };
    // Same group, so sync floors prove nothing, but the release of record 2
    // proves record 1 was durable.
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(refs[1].offset() + RECORD_HEADER_LEN) as usize] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let err = Cache::open(dir.path(), small()).unwrap_err();
    assert!(
        matches!(err, Error::CorruptRecord { offset, .. } if offset == refs[1].offset()),
        "{err}"
    );
}

#[test]
fn read_verifies_the_payload_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = open(dir.path(), small());
    let r = cache.append(key(1, 0, 0), b"hello").unwrap();
    let path = segment_path(dir.path(), r.segment());
    let mut bytes = fs::read(&path).unwrap();
    bytes[(r.offset() + RECORD_HEADER_LEN + 1) as usize] = b'a';
    fs::write(&path, &bytes).unwrap();
    let err = cache.read(&r).unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { offset, .. } if offset == r.offset()), "{err}");
}

#[test]
fn segments_roll_and_fully_released_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = open(dir.path(), small());
    let ks: Vec<_> = (0..30).map(|s| key(1, 0, s)).collect();
    let refs = fill(&mut cache, &ks, 1000);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 7, "{segs:?}");
    assert_eq!(segs, (1..=segs.len() as u64).collect::<Vec<_>>(), "numbered 1, 2, ...");
    for n in &segs {
        let len = fs::metadata(segment_path(dir.path(), *n)).unwrap().len();
        assert!(len <= small().segment_bytes, "segment {n} is {len} bytes");
    }
    // A record bigger than a segment gets a segment of its own.
    let big = cache.append(key(9, 0, 0), &vec![7u8; 10_000]).unwrap();
    assert_eq!(big.offset(), SEGMENT_HEADER_LEN);
    cache.release(&big).unwrap();

    // Release everything in segment 1: it goes; segment 2 stays.
    let usage_before = cache.usage();
    for r in refs.iter().filter(|r| r.segment() == 1) {
        assert!(segment_path(dir.path(), 1).exists());
        cache.release(r).unwrap();
    }
    assert!(!segment_path(dir.path(), 1).exists());
    assert!(!dir.path().join(release_name(1)).exists());
    assert!(cache.usage() < usage_before);
    // Release the rest: every segment but the newest is deleted.
    cache.release_many(&refs).unwrap();
    let left = segment_files(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    // Numbers keep growing across a restart.
    drop(cache);
    let (mut cache, pending) = open(dir.path(), small());
    assert!(pending.is_empty());
    let r = cache.append(key(1, 0, 99), b"x").unwrap();
    assert!(r.segment() > left[0]);
    assert_eq!(segment_files(dir.path()), vec![r.segment()], "the old anchor is deleted");
}

#[test]
fn pressure_thresholds_and_a_full_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig { max_bytes: 20_000, high_water_bytes: 10_000, segment_bytes: 4096 };
    let (mut cache, _) = open(dir.path(), config);
    assert_eq!(cache.pressure(), Pressure::Ok);
    assert_eq!(cache.usage(), 0);
    let mut refs = Vec::new();
    let mut s = 0;
    while cache.usage() < 10_000 {
        assert_eq!(cache.pressure(), Pressure::Ok);
        refs.push(cache.append(key(1, 0, s), &payload(key(1, 0, s), 900)).unwrap());
        s += 1;
    }
    assert_eq!(cache.pressure(), Pressure::SlowDown);
    // Fill until refused; a refusal stores nothing.
    let err = loop {
        match cache.append(key(1, 0, s), &payload(key(1, 0, s), 900)) {
            Ok(r) => refs.push(r),
            Err(e) => break e,
        }
        s += 1;
    };
    assert!(matches!(err, Error::Full { max_bytes: 20_000, .. }), "{err}");
    assert!(err.to_string().contains("retry later"), "{err}");
    assert!(cache.usage() <= 20_000);
    let usage = cache.usage();
    assert!(cache.pending().iter().all(|p| p.key.sequence < s));
    // A duplicate of a cached batch is still answered when full.
    assert_eq!(cache.append(refs[0].key(), &payload(refs[0].key(), 900)).unwrap(), refs[0]);
    assert_eq!(cache.usage(), usage);
    // Exactly at the limit: Full.
    drop(cache);
    let tight = CacheConfig { max_bytes: usage, high_water_bytes: usage, segment_bytes: 4096 };
    let (mut cache, pending) = open(dir.path(), tight);
    assert_eq!(pending.len(), refs.len());
    assert_eq!(cache.pressure(), Pressure::Full);
    // Releasing (the pipeline caught up) makes room again.
    let released: Vec<_> = pending.iter().map(|p| p.record).collect();
    cache.release_many(&released).unwrap();
    assert_eq!(cache.pressure(), Pressure::Ok);
    cache.append(key(1, 0, s), &payload(key(1, 0, s), 900)).unwrap();
}

#[test]
fn a_fully_released_active_segment_is_reclaimed_before_refusing() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig { max_bytes: 4096, high_water_bytes: 4096, segment_bytes: 4096 };
    let (mut cache, _) = open(dir.path(), config);
    for s in 0..20 {
        let k = key(1, 0, s);
        let r = cache.append(k, &payload(k, 1500)).unwrap();
        cache.release(&r).unwrap();
    }
    assert!(cache.usage() <= 4096);
}

#[test]
fn duplicate_appends_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(5, 1, 42);
    let data = payload(k, 777);
    let (mut cache, _) = open(dir.path(), small());
    let first = cache.append(k, &data).unwrap();
    let usage = cache.usage();
    let again = cache.append(k, &data).unwrap();
    assert_eq!(first, again);
    assert_eq!(cache.usage(), usage, "nothing stored twice");

    // Different contents under the same key: refused.
    let err = cache.append(k, b"something else").unwrap_err();
    assert!(matches!(err, Error::KeyConflict { .. }), "{err}");
    assert!(err.to_string().contains("reused a sequence number"), "{err}");

    // Within one group commit.
    let k2 = key(5, 1, 43);
    let d2 = payload(k2, 10);
    let refs = cache
        .append_many(&[(k2, d2.as_slice()), (k, data.as_slice()), (k2, d2.as_slice())])
        .unwrap();
    assert_eq!(refs[0], refs[2]);
    assert_eq!(refs[1], first);
    let conflicting: [(RecordKey, &[u8]); 2] = [(key(6, 0, 0), b"a"), (key(6, 0, 0), b"b")];
    assert!(matches!(cache.append_many(&conflicting), Err(Error::KeyConflict { .. })));

    // After a restart too.
    drop(cache);
    let (mut cache, pending) = open(dir.path(), small());
    assert_eq!(keys(&pending), vec![k, k2]);
    let usage = cache.usage();
    assert_eq!(cache.append(k, &data).unwrap(), first);
    assert_eq!(cache.usage(), usage);
    assert_eq!(segment_files(dir.path()), vec![1], "no new segment for a duplicate");
}

#[test]
fn release_of_a_foreign_or_stale_ref_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (mut ca, _) = open(a.path(), small());
    let (mut cb, _) = open(b.path(), small());
    let k = key(1, 0, 0);
    let _ = ca.append(k, b"xx").unwrap();
    cb.append(key(1, 0, 1), b"yyy").unwrap();
    let rb = cb.append(k, b"some other payload").unwrap();
    assert!(matches!(ca.release(&rb), Err(Error::UnknownRecord { .. })));
    assert!(matches!(ca.read(&rb), Err(Error::UnknownRecord { .. })));
}

#[test]
fn malformed_segment_headers_are_errors() {
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("wrong magic", Box::new(|b: &mut Vec<u8>| b[0] ^= 1)),
        ("checksum", Box::new(|b: &mut Vec<u8>| b[20] ^= 1)),
        ("shorter than", Box::new(|b: &mut Vec<u8>| b.truncate(10))),
        ("shorter than", Box::new(|b: &mut Vec<u8>| b.clear())),
        (
            "file name says 1",
            Box::new(|b: &mut Vec<u8>| b[..32].copy_from_slice(&format::encode_segment_header(2))),
        ),
        (
            "version 2",
            Box::new(|b: &mut Vec<u8>| {
                b[8] = 2;
                let crc = crc32c::crc32c(&b[0..28]);
                b[28..32].copy_from_slice(&crc.to_le_bytes());
            }),
        ),
    ];
    for (want, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut cache, _) = open(dir.path(), small());
            cache.append(key(1, 0, 0), b"data").unwrap();
        }
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        damage(&mut bytes);
        fs::write(&path, &bytes).unwrap();
        match Cache::open(dir.path(), small()) {
            Err(e @ Error::BadSegmentHeader { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{msg}");
                assert!(msg.contains("00000000000000000001.segment"), "{msg}");
            }
            other => panic!("{want}: expected BadSegmentHeader, got {other:?}"),
        }
    }
}

#[test]
fn record_of_an_unknown_version_is_an_error_even_at_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let r = {
        let (mut cache, _) = open(dir.path(), small());
        cache.append(key(1, 0, 0), b"data").unwrap()
    };
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    let h = r.offset() as usize;
    bytes[h + 8] = 2;
    let crc = crc32c::crc32c(&bytes[h..h + 60]);
    bytes[h + 60..h + 64].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = Cache::open(dir.path(), small()).unwrap_err();
    assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn foreign_files_are_ignored_and_crash_leftovers_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut cache, _) = open(dir.path(), small());
        cache.append(key(1, 0, 0), b"data").unwrap();
    }
    let foreign =
        ["notes.txt", "1.segment", "0000000000000000000x.segment", "00000000000000000001.seg"];
    for f in foreign {
        fs::write(dir.path().join(f), b"not ours").unwrap();
    }
    fs::create_dir(dir.path().join("subdir")).unwrap();
    // Leftovers of a crash: a half-created segment, an orphan release log.
    fs::write(dir.path().join("00000000000000000002.segment.new"), b"partial").unwrap();
    fs::write(dir.path().join(release_name(9)), format::encode_release_header(9)).unwrap();

    let (_, pending) = open(dir.path(), small());
    assert_eq!(keys(&pending), vec![key(1, 0, 0)]);
    for f in foreign {
        assert!(dir.path().join(f).exists(), "{f} must be left alone");
    }
    assert!(dir.path().join("subdir").exists());
    assert!(!dir.path().join("00000000000000000002.segment.new").exists());
    assert!(!dir.path().join(release_name(9)).exists());
}

#[test]
fn torn_release_log_tail_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let ks: Vec<_> = (0..4).map(|s| key(1, 0, s)).collect();
    {
        let (mut cache, _) = open(dir.path(), small());
        let refs = fill(&mut cache, &ks, 10);
        cache.release(&refs[0]).unwrap();
        cache.release(&refs[1]).unwrap();
    }
    let path = dir.path().join(release_name(1));
    let full = fs::read(&path).unwrap();
    assert_eq!(full.len() as u64, RELEASE_HEADER_LEN + 2 * RELEASE_ENTRY_LEN);
    // Every cut inside the second entry: the first release survives.
    for cut in (RELEASE_HEADER_LEN + RELEASE_ENTRY_LEN) as usize..full.len() {
        fs::write(&path, &full[..cut]).unwrap();
        let (_, pending) = open(dir.path(), small());
        assert_eq!(keys(&pending), ks[1..], "cut at {cut}");
        assert_eq!(fs::metadata(&path).unwrap().len(), RELEASE_HEADER_LEN + RELEASE_ENTRY_LEN);
    }
    // A damaged entry before a good one is skipped: the record is shipped again.
    let mut bytes = full.clone();
    bytes[RELEASE_HEADER_LEN as usize + 3] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let (_, pending) = open(dir.path(), small());
    assert_eq!(keys(&pending), vec![ks[0], ks[2], ks[3]]);
    // A bad release-log header is an error.
    let mut bytes = full;
    bytes[0] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(Cache::open(dir.path(), small()), Err(Error::BadReleaseLog { .. })));
}

#[test]
fn a_directory_is_opened_by_one_cache_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), small());
    assert!(matches!(Cache::open(dir.path(), small()), Err(Error::Locked { .. })));
    drop(cache);
    open(dir.path(), small());
}

#[test]
fn invalid_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        CacheConfig { max_bytes: 1 << 20, high_water_bytes: 2 << 20, segment_bytes: 4096 },
        CacheConfig { max_bytes: 1 << 20, high_water_bytes: 1 << 19, segment_bytes: 100 },
        CacheConfig { max_bytes: 4096, high_water_bytes: 4096, segment_bytes: 8192 },
    ];
    for c in bad {
        assert!(matches!(Cache::open(dir.path(), c), Err(Error::InvalidConfig(_))), "{c:?}");
    }
    let d = CacheConfig::default();
    assert_eq!(d.segment_bytes, DEFAULT_SEGMENT_BYTES);
    assert!(d.high_water_bytes < d.max_bytes);
}

#[test]
fn oversized_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cache, _) = open(dir.path(), CacheConfig::with_max_bytes(1 << 30));
    let big = vec![0u8; MAX_PAYLOAD_BYTES as usize + 1];
    assert!(matches!(cache.append(key(1, 0, 0), &big), Err(Error::PayloadTooLarge { .. })));
    assert_eq!(cache.usage(), 0);
}

#[test]
fn file_names_are_classified() {
    assert_eq!(classify("00000000000000000001.segment"), FileKind::Segment(1));
    assert_eq!(classify("00000000000000000042.released"), FileKind::Release(42));
    assert_eq!(classify("00000000000000000042.released.new"), FileKind::Temp);
    assert_eq!(classify("LOCK"), FileKind::Lock);
    assert_eq!(classify("99999999999999999999.segment"), FileKind::Foreign);
    assert_eq!(classify("0000000000000000001.segment"), FileKind::Foreign);
    assert_eq!(classify("00000000000000000001.other"), FileKind::Foreign);
    assert_eq!(classify("x.new"), FileKind::Foreign);
}
