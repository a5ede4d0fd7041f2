//! Tests of the state store.

use super::machines::hash_passphrase;
use super::*;
use lifeboat_api::PointKind;
use rusqlite::params;

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
    s.set_received_next("m", 0, 1).unwrap();
    let first = s.durable_mark();
    s.set_received_next("m", 0, 2).unwrap();
    let second = s.durable_mark();
    s.make_durable_since(second).unwrap();
    assert_eq!(synced(&s), 1);
    // Both commits came before that sync: nothing more to do for either.
    s.make_durable_since(first).unwrap();
    s.make_durable_since(second).unwrap();
    assert_eq!(synced(&s), 1);
    s.set_received_next("m", 0, 3).unwrap();
    s.make_durable_since(s.durable_mark()).unwrap();
    assert_eq!(synced(&s), 2, "a commit after the sync needs another");
}

#[test]
fn passphrases_are_one_time() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("s.db")).unwrap();
    s.add_passphrase("one-time").unwrap();
    assert!(!s.register_machine("wrong", "m1", "h").unwrap());
    // Issue 11, finding 8: passphrases never expired, unlike docs/security.md.
    s.add_passphrase("stale").unwrap();
    s.conn()
        .execute(
            "UPDATE passphrases SET created_unix_ms = ?1 WHERE hash = ?2",
            params![(now_ms() - PASSPHRASE_TTL_MS - 1000) as i64, hash_passphrase("stale")],
        )
        .unwrap();
    assert!(!s.register_machine("stale", "m0", "h").unwrap(), "an expired passphrase");
    assert!(s.register_machine(" one-time ", "m1", "h").unwrap());
    assert!(!s.register_machine("one-time", "m2", "h").unwrap());
    assert!(s.machine_exists("m1").unwrap());
    assert!(!s.machine_exists("m2").unwrap());
}

#[test]
fn cursors_points_and_disks() {
    let d = tempfile::tempdir().unwrap();
    let s = State::open(&d.path().join("s.db")).unwrap();
    assert_eq!(s.received_next("m", 0).unwrap(), 0);
    s.set_received_next("m", 0, 5).unwrap();
    s.set_received_next("m", 0, 3).unwrap();
    assert_eq!(s.received_next("m", 0).unwrap(), 5, "never moves back");
    assert_eq!(s.applied_kind("m", 0).unwrap(), PointKind::Crash);
    s.set_applied("m", 0, 2, Some((7, PointKind::App))).unwrap();
    s.set_applied("m", 0, 3, None).unwrap();
    assert_eq!(s.applied("m", 0).unwrap(), (3, Some(7)));
    assert_eq!(s.applied_kind("m", 0).unwrap(), PointKind::App, "kept across untagged logs");
    s.set_applied("m", 0, 4, Some((8, PointKind::Crash))).unwrap();
    assert_eq!(s.applied_kind("m", 0).unwrap(), PointKind::Crash);
    s.upsert_disk("m", 1, 100, "/dev/b").unwrap();
    s.upsert_disk("m", 0, 50, "/dev/a").unwrap();
    s.upsert_disk("m", 0, 60, "/dev/a").unwrap();
    assert_eq!(s.disks("m").unwrap(), vec![(0, 60), (1, 100)]);
    let p = PointRow {
        id: "m-p1".into(),
        machine_id: "m".into(),
        point: 1,
        kind: PointKind::Crash,
        created_unix_ms: 5,
        disks: vec![0, 1],
    };
    s.add_point(&p).unwrap();
    s.add_point(&p).unwrap();
    assert_eq!(s.points("m").unwrap(), vec![p]);
    s.delete_point("m-p1").unwrap();
    assert!(s.points("m").unwrap().is_empty());
}
