//! Tests of the state store.

use super::machines::hash_passphrase;
use super::*;
use lifeboat_api::PointKind;
use lifeboat_wire::MachineId;
use rusqlite::params;

/// Machines of the tests.
const M: MachineId = MachineId([1; 16]);
const M1: MachineId = MachineId([2; 16]);
const M2: MachineId = MachineId([3; 16]);

#[test]
fn migrates_once_and_reopens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.db");
    let s = State::open(&p).unwrap();
    s.add_passphrase("alpha-bravo").unwrap();
    drop(s);
    let s = State::open(&p).unwrap();
    assert_eq!(s.unused_passphrases().unwrap(), 1);
}

#[test]
fn refuses_a_newer_schema() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state.db");
    drop(State::open(&p).unwrap());
    let c = Connection::open(&p).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let e = State::open(&p).unwrap_err();
    assert!(matches!(e, StateError::TooNew { found: 99, .. }), "{e}");
}

#[test]
fn one_durable_sync_covers_every_commit_before_it() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("s.db")).unwrap();
    let synced = |s: &State| {
        s.counters().unwrap().into_iter().find(|c| c.0 == "durable_commits").map_or(0, |c| c.1)
    };
    s.set_received_next(M, 0, 1).unwrap();
    let first = s.durable_mark();
    s.set_received_next(M, 0, 2).unwrap();
    let second = s.durable_mark();
    s.make_durable_since(second).unwrap();
    assert_eq!(synced(&s), 1);
    // Both commits came before that sync: nothing more to do for either.
    s.make_durable_since(first).unwrap();
    s.make_durable_since(second).unwrap();
    assert_eq!(synced(&s), 1);
    s.set_received_next(M, 0, 3).unwrap();
    s.make_durable_since(s.durable_mark()).unwrap();
    assert_eq!(synced(&s), 2, "a commit after the sync needs another");
}

/// What `lifeboat-appliance stats` (another process) would read: the database alone.
fn stored(path: &std::path::Path) -> (u64, u64) {
    let c = rusqlite::Connection::open(path).unwrap();
    let cursor = c
        .query_row(
            "SELECT next_sequence FROM received WHERE machine_id = ?1 AND disk = 0",
            params![M],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as u64;
    let count = c
        .query_row("SELECT value FROM counters WHERE name = 'received_batches'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or(0) as u64;
    (cursor, count)
}

#[test]
fn cursors_and_counters_are_written_behind_once_each() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.db");
    let s = State::open(&p).unwrap();
    s.set_received_next(M, 0, 5).unwrap();
    s.count(&[(Counter::ReceivedBatches, 2)]).unwrap();
    s.count(&[(Counter::ReceivedBatches, 3)]).unwrap();
    // Every reader in the process sees them at once; the database does not yet.
    assert_eq!(s.received_next(M, 0).unwrap(), 5);
    assert!(s.counters().unwrap().contains(&("received_batches".into(), 5)));
    assert_eq!(stored(&p), (0, 0));
    s.flush().unwrap();
    assert_eq!(stored(&p), (5, 5));
    // Flushed once: neither added again nor moved back.
    s.flush().unwrap();
    s.set_received_next(M, 0, 4).unwrap();
    s.flush().unwrap();
    assert_eq!(stored(&p), (5, 5));
    assert!(s.counters().unwrap().contains(&("received_batches".into(), 5)));
    // A durable sync writes them first.
    s.set_received_next(M, 0, 9).unwrap();
    s.count(&[(Counter::ReceivedBatches, 1)]).unwrap();
    s.make_durable_since(s.durable_mark()).unwrap();
    assert_eq!(stored(&p), (9, 6));
    // A new process reads them back.
    drop(s);
    let s = State::open(&p).unwrap();
    assert_eq!(s.received_next(M, 0).unwrap(), 9);
    // Rebasing a disk moves the stored cursor and the one in memory together.
    s.rebase_disk(M, 0, 20).unwrap();
    assert_eq!((s.received_next(M, 0).unwrap(), stored(&p).0), (20, 20));
}

/// The store is called from async code: on the appliance's multi-threaded runtime a call
/// hands the worker's other tasks to another thread while it runs, so they go on even on
/// a runtime with a single worker; a current-thread runtime runs the call in place.
#[test]
fn store_calls_from_async_code_leave_the_worker_free() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("s.db")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = ticks.clone();
    rt.spawn(async move {
        loop {
            t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
    let s2 = s.clone();
    let during = rt
        .block_on(rt.spawn(async move {
            // No await in this loop: without the hand-off the only worker would be busy
            // with it, and the ticker could not run until it ends.
            let before = ticks.load(std::sync::atomic::Ordering::SeqCst);
            for i in 0..50 {
                s2.set_received_next(M, 0, i).unwrap();
                s2.make_durable().unwrap();
            }
            ticks.load(std::sync::atomic::Ordering::SeqCst) - before
        }))
        .unwrap();
    assert!(during > 0, "the other task was held up while the store was called");
    let on_current = tokio::runtime::Builder::new_current_thread().build().unwrap();
    on_current.block_on(async move { s.machines().unwrap() });
}

#[test]
fn passphrases_are_one_time() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("s.db")).unwrap();
    s.add_passphrase("one-time").unwrap();
    assert!(!s.register_machine("wrong", M1, "h").unwrap());
    // Issue 11, finding 8: passphrases never expired, unlike docs/security.md.
    s.add_passphrase("stale").unwrap();
    rusqlite::Connection::open(d.path().join("s.db"))
        .unwrap()
        .execute(
            "UPDATE passphrases SET created_unix_ms = ?1 WHERE hash = ?2",
            params![(now_ms() - PASSPHRASE_TTL_MS - 1000) as i64, hash_passphrase("stale")],
        )
        .unwrap();
    assert!(
        !s.register_machine("stale", MachineId([4; 16]), "h").unwrap(),
        "an expired passphrase"
    );
    assert!(s.register_machine(" one-time ", M1, "h").unwrap());
    assert!(!s.register_machine("one-time", M2, "h").unwrap());
    assert!(s.machine_exists(M1).unwrap());
    assert!(!s.machine_exists(M2).unwrap());
}

#[test]
fn cursors_points_and_disks() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("s.db")).unwrap();
    assert_eq!(s.received_next(M, 0).unwrap(), 0);
    s.set_received_next(M, 0, 5).unwrap();
    s.set_received_next(M, 0, 3).unwrap();
    assert_eq!(s.received_next(M, 0).unwrap(), 5, "never moves back");
    assert_eq!(s.applied_kind(M, 0).unwrap(), PointKind::Crash);
    s.set_applied(M, 0, 2, Some((7, PointKind::App))).unwrap();
    s.set_applied(M, 0, 3, None).unwrap();
    assert_eq!(s.applied(M, 0).unwrap(), (3, Some(7)));
    assert_eq!(s.applied_kind(M, 0).unwrap(), PointKind::App, "kept across untagged logs");
    s.set_applied(M, 0, 4, Some((8, PointKind::Crash))).unwrap();
    assert_eq!(s.applied_kind(M, 0).unwrap(), PointKind::Crash);
    s.upsert_disk(M, 1, 100, "/dev/b").unwrap();
    s.upsert_disk(M, 0, 50, "/dev/a").unwrap();
    s.upsert_disk(M, 0, 60, "/dev/a").unwrap();
    assert_eq!(s.disks(M).unwrap(), vec![(0, 60), (1, 100)]);
    let p = PointRow {
        id: "m-p1".into(),
        machine_id: M,
        point: 1,
        kind: PointKind::Crash,
        created_unix_ms: 5,
        disks: vec![0, 1],
    };
    s.add_point(&p).unwrap();
    s.add_point(&p).unwrap();
    assert_eq!(s.points(M).unwrap(), vec![p]);
    s.delete_point("m-p1").unwrap();
    assert!(s.points(M).unwrap().is_empty());
}

#[test]
fn history_is_thinned_per_hour_after_seven_days_and_dropped_after_ninety() {
    use super::history::{FULL_RESOLUTION_MS, KEEP_MS};
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("state.db")).unwrap();
    const H: u64 = 3600 * 1000;
    let now = 200 * 24 * H + 17 * 60 * 1000; // not on an hour
    let sample = |machine_id, unix_ms, rpo, bytes, backlog| SampleRow {
        machine_id,
        unix_ms,
        span_secs: 60,
        rpo_secs: rpo,
        received_bytes: bytes,
        backlog_batches: backlog,
    };
    // One sample a minute for the 9 days before now, for two machines (the second one
    // with no point yet); and one sample older than 90 days.
    let mut rows = Vec::new();
    let first = now - 9 * 24 * H;
    let mut t = first;
    while t <= now {
        let minute = (t - first) / 60_000;
        rows.push(sample(M, t, Some(minute % 97), 1000 + minute % 7, minute % 5));
        rows.push(sample(M1, t, None, 1, 0));
        t += 60_000;
    }
    rows.push(sample(M, now - KEEP_MS - 1, Some(1), 1, 1));
    s.add_samples(&rows).unwrap();
    let before = s.samples(M, 0).unwrap();
    let total_bytes: u64 = before.iter().map(|r| r.received_bytes).sum();

    let (merged, dropped) = s.thin_samples(now).unwrap();
    assert_eq!(dropped, 1, "the sample older than 90 days");
    let after = s.samples(M, 0).unwrap();
    let cutoff = (now - FULL_RESOLUTION_MS) / H * H;
    // Everything after the cutoff is untouched, minute by minute.
    let recent: Vec<_> = before.iter().filter(|r| r.unix_ms > cutoff).cloned().collect();
    assert_eq!(after.iter().filter(|r| r.unix_ms > cutoff).cloned().collect::<Vec<_>>(), recent);
    // Before it: one sample per hour, stamped at the hour's end, covering 3600 s.
    let old: Vec<_> = after.iter().filter(|r| r.unix_ms <= cutoff).collect();
    assert!(old.iter().all(|r| r.span_secs == 3600 && r.unix_ms % H == 0), "{:?}", &old[..2]);
    assert_eq!(old.len() as u64, (cutoff - (first / H * H)) / H);
    // Bytes are kept, the worst RPO and backlog of each hour too.
    assert_eq!(after.iter().map(|r| r.received_bytes).sum::<u64>(), total_bytes - 1);
    for r in &old {
        let hour: Vec<_> =
            before.iter().filter(|b| b.unix_ms > r.unix_ms - H && b.unix_ms <= r.unix_ms).collect();
        assert_eq!(r.rpo_secs, hour.iter().filter_map(|b| b.rpo_secs).max());
        assert_eq!(r.backlog_batches, hour.iter().map(|b| b.backlog_batches).max().unwrap());
    }
    assert_eq!(s.samples(M1, 0).unwrap().iter().filter(|r| r.unix_ms <= cutoff).count(), old.len());
    assert!(s.samples(M1, 0).unwrap().iter().all(|r| r.rpo_secs.is_none()), "no point: no RPO");
    assert_eq!(usize::try_from(merged).unwrap(), 2 * (before.len() - 1 - recent.len() - old.len()));
    // Thinning again changes nothing; `since` selects.
    assert_eq!(s.thin_samples(now).unwrap(), (0, 0));
    assert_eq!(s.samples(M, 0).unwrap(), after);
    assert_eq!(s.samples(M, now - 60_000).unwrap().len(), 2);
}

#[test]
fn newest_point_and_churn_are_the_last_of_their_lists() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("state.db")).unwrap();
    assert_eq!(s.newest_point(M).unwrap(), None);
    assert_eq!(s.newest_churn(M).unwrap(), None);
    for (n, at) in [(2u64, 20u64), (10, 30), (3, 40)] {
        for m in [M, M1] {
            s.add_point(&PointRow {
                id: format!("{m}-p{n}"),
                machine_id: m,
                point: n,
                kind: PointKind::Crash,
                created_unix_ms: at,
                disks: vec![0],
            })
            .unwrap();
        }
    }
    // The highest point number (points are numbered in order by the agent).
    assert_eq!(s.newest_point(M).unwrap().as_ref(), s.points(M).unwrap().last());
    assert_eq!(s.newest_point(M).unwrap().unwrap().point, 10);
    assert_eq!(s.newest_point(M2).unwrap(), None);
    s.add_churn(M, "{\"a\":1}").unwrap();
    s.add_churn(M1, "{\"b\":1}").unwrap();
    s.add_churn(M, "{\"a\":2}").unwrap();
    assert_eq!(s.newest_churn(M).unwrap().as_deref(), Some("{\"a\":2}"));
    assert_eq!(s.newest_churn(M1).unwrap().as_deref(), Some("{\"b\":1}"));
}
