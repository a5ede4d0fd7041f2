//! Tests of the process server.

use super::*;
use lifeboat_plugin_host::Host;
use lifeboat_plugin_host::config::PluginsConfig;
use lifeboat_plugin_host::keys::KeyRing;
use lifeboat_wire::{Batch, BatchHeader};

fn batch(machine: MachineId, disk: u32, sequence: u64) -> bytes::Bytes {
    let mut b = Batch::builder(BatchHeader { machine, disk_index: disk, sequence, tag: None });
    b.push_data(4096, vec![7u8; 4096]).unwrap();
    lifeboat_wire::encode(&b.build()).into()
}

/// A process server with no plugins: receiving works, shipping waits (and retries).
fn server(dir: &std::path::Path) -> (ProcessServer, State) {
    let state = State::open(&dir.join("state.db")).unwrap();
    let plugins = PluginsConfig {
        dir: dir.join("plugins"),
        cache_dir: None,
        trusted_keys: vec![],
        allow_unsigned: false,
        grants: Default::default(),
    };
    let registry = Arc::new(Registry::new(Host::new(KeyRing::default()).unwrap(), plugins));
    let ps = ProcessServer::start(
        state.clone(),
        registry,
        config::ProcessServer::default(),
        &dir.join("cache"),
        tokio_util::sync::CancellationToken::new(),
        None,
    )
    .unwrap();
    (ps, state)
}

#[tokio::test]
async fn an_agent_writes_only_its_own_disks_in_sequence() {
    let d = tempfile::tempdir().unwrap();
    let (ps, state) = server(d.path());
    let a = MachineId([1; 16]);
    let b = MachineId([2; 16]);
    state.add_passphrase("p").unwrap();
    assert!(state.register_machine("p", a, "a").unwrap());
    state.upsert_disk(a, 0, 1 << 20, "/dev/a").unwrap();

    // Machine a presenting a batch of machine b's disk: refused.
    let e = ps.batch(a, batch(b, 0, 0)).await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Forbidden, "forbidden"), "{}", e.message);
    // A disk never announced: refused.
    let e = ps.batch(a, batch(a, 1, 0)).await.unwrap_err();
    assert_eq!(e.code, "unknown-disk");
    // In order: stored; again: a duplicate; ahead: a gap naming the expected one.
    let ack = ps.batch(a, batch(a, 0, 0)).await.unwrap();
    assert!(!ack.duplicate);
    let ack = ps.batch(a, batch(a, 0, 0)).await.unwrap();
    assert!(ack.duplicate);
    let e = ps.batch(a, batch(a, 0, 5)).await.unwrap_err();
    assert_eq!((e.kind, e.expected_sequence), (Kind::Conflict, Some(1)));
    // A corrupt batch never reaches the cache.
    let mut bad = batch(a, 0, 1).to_vec();
    let n = bad.len();
    bad[n / 2] ^= 1;
    let e = ps.batch(a, bad.into()).await.unwrap_err();
    assert_eq!(e.code, "bad-batch");
    assert_eq!(state.received_next(a, 0).unwrap(), 1);
    assert_eq!(ps.backlog(), 1, "the stored batch waits to be shipped");
}

/// Issue 11, finding 3: extents past the disk's end were accepted and stalled the
/// master target; hello sizes had no bound; a shrink went through silently.
#[tokio::test]
async fn extents_past_the_end_and_bad_sizes_are_refused_before_anything_is_cached() {
    let d = tempfile::tempdir().unwrap();
    let (ps, state) = server(d.path());
    let a = MachineId([1; 16]);
    let id = a;
    state.add_passphrase("p").unwrap();
    assert!(state.register_machine("p", id, "a").unwrap());
    // The test batch writes 4096 bytes at 4096: it ends at 8192.
    state.upsert_disk(id, 0, 8192 - 512, "/dev/a").unwrap();
    let e = ps.batch(id, batch(a, 0, 0)).await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Invalid, "extent-out-of-range"), "{}", e.message);
    assert!(e.message.contains("8192"), "{}", e.message);
    assert_eq!(ps.backlog(), 0, "nothing cached");
    assert_eq!(state.received_next(id, 0).unwrap(), 0);
    state.upsert_disk(id, 0, 8192, "/dev/a").unwrap();
    assert!(ps.batch(id, batch(a, 0, 0)).await.is_ok(), "exactly to the end is fine");

    let hello = |size: u64| Hello {
        protocol_versions: lifeboat_wire::PROTOCOL_VERSIONS.to_vec(),
        disks: vec![lifeboat_api::DiskDescriptor { index: 0, size, path: "/dev/a".into() }],
        system: None,
    };
    for bad in [0, 1000, (64u64 << 40) + 512] {
        let e = ps.hello(id, hello(bad)).await.unwrap_err();
        assert_eq!((e.kind, e.code), (Kind::Invalid, "bad-disk-size"), "{bad}: {}", e.message);
    }
    let e = ps.hello(id, hello(4096)).await.unwrap_err();
    assert_eq!((e.kind, e.code), (Kind::Conflict, "disk-shrunk"), "{}", e.message);
    assert_eq!(state.disks(id).unwrap(), vec![(0, 8192)], "the replica's size is kept");
    let alerts = state.disk_alerts().unwrap();
    assert_eq!((alerts.len(), alerts[0].kind.as_str()), (1, "disk-shrunk"));
    assert!(
        crate::config_server::policy::alerts(&state)
            .unwrap()
            .iter()
            .any(|a| a.kind == "disk-shrunk")
    );
}

/// Issue 11, finding 8: acknowledgements read the cache's pressure under the cache's
/// mutex, which appends and releases hold across `fdatasync`, so async workers waited
/// on the disk. With the mutex held (as by a slow fsync), an acknowledgement and the
/// cache status are still answered.
#[tokio::test]
async fn acknowledging_never_waits_for_the_cache_lock() {
    let d = tempfile::tempdir().unwrap();
    let (ps, _state) = server(d.path());
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let inner = ps.inner.clone();
    let holder = std::thread::spawn(move || {
        let _g = lock(&inner.cache);
        held_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    });
    held_rx.recv().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let ps2 = ps.clone();
    std::thread::spawn(move || {
        let ack = ps2.ack(0, 1, false);
        let status = ps2.cache_status();
        done_tx.send((ack.slow_down_ms, status.2)).unwrap();
    });
    let answered = done_rx.recv_timeout(Duration::from_secs(20));
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let (slow_down, max) = answered.expect("answered while the cache was locked");
    assert_eq!((slow_down, max), (0, (16 * 1024) << 20));
}
