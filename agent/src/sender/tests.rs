//! The sender against a real HTTPS process server on 127.0.0.1 (lifeboat-net's server, mutual
//! TLS), speaking `lifeboat_api`: it applies the batches to in-memory replicas, so the
//! tests check that what the appliance ends up with equals the disks.
#![allow(clippy::cast_possible_truncation)]

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use lifeboat_api::{DiskCursor, HelloResponse};
use lifeboat_net::server::{self, ApiError, PeerInfo, RequestBody, ResponseBody, ServeOptions};
use lifeboat_net::tls::{ClientAuth, Trust};
use lifeboat_net::{Ca, Identity};
use lifeboat_wire::{ConsistencyTag, Extent, MachineId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::*;
use crate::cycle::{CycleError, CycleLimits, CycleOutcome, Cycler, DiskSlot};
use crate::tracker::{HashScan, HashScanConfig};

const KIB: u64 = 1024;
const MACHINE_ID: &str = "0f0e0d0c-0b0a-0908-0706-050403020100";

/// What the fake process server knows and how it misbehaves.
#[derive(Debug, Default)]
struct State {
    next: Vec<u64>,
    replicas: Vec<Vec<u8>>,
    /// Points seen per disk, in order.
    tags: Vec<Vec<u64>>,
    /// Report this cursor (disk, next) at the next hello instead of the truth.
    hello_lie: Option<(u32, u64)>,
    /// Drop the connection on this batch before making it durable.
    drop_before: Option<(u32, u64)>,
    /// Make this batch durable, then drop the connection before answering.
    drop_after: Option<(u32, u64)>,
    /// Answer 429 (Retry-After: 1) to this batch once.
    throttle: Option<(u32, u64)>,
    /// Answer 409 rather than "duplicate" to a batch already held.
    conflict_below: bool,
    hellos: u32,
    conflicts: u32,
    throttled: u32,
    duplicates: u32,
    progress: Vec<Progress>,
}

struct Appliance {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    ca_pem: String,
    agent: Identity,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Appliance {
    async fn start(disk_sizes: &[u64]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "Lifeboat test CA").unwrap();
        let server_id = ca.issue_server(&[]).unwrap();
        let (key_pem, csr_pem) = Identity::generate_csr("test-agent").unwrap();
        let cert_pem = ca.sign_client_csr(&csr_pem, MACHINE_ID, 30).unwrap();
        let state = Arc::new(Mutex::new(State {
            next: vec![0; disk_sizes.len()],
            replicas: disk_sizes.iter().map(|&s| vec![0; s as usize]).collect(),
            tags: vec![Vec::new(); disk_sizes.len()],
            ..State::default()
        }));
        let tls = lifeboat_net::tls::server_config(
            &server_id,
            ClientAuth::Required { ca_pem: ca.cert_pem().to_string() },
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        // Serves until a handler asks for the connection to be dropped, then starts again on
        // the same address: the agent sees a dead connection and has to reconnect.
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let l = match listener.take() {
                    Some(l) => l,
                    None => TcpListener::bind(addr).await.unwrap(),
                };
                let kill = Arc::new(Notify::new());
                let (st, k) = (st.clone(), kill.clone());
                server::serve_with(
                    l,
                    tls.clone(),
                    move |req| handle(st.clone(), k.clone(), req),
                    async move { kill.notified().await },
                    ServeOptions { shutdown_grace: Duration::ZERO, ..ServeOptions::default() },
                )
                .await;
            }
        });
        Self {
            addr,
            state,
            ca_pem: ca.cert_pem().to_string(),
            agent: Identity { cert_pem, key_pem },
            _dir: dir,
            task,
        }
    }

    fn options(&self, disks: &[PathBuf], progress: Option<Arc<ProgressBoard>>) -> SenderOptions {
        SenderOptions {
            system: None,
            tls_updates: None,
            schedule_updates: None,
            disk_updates: None,
            url: format!("https://{}", self.addr),
            tls: lifeboat_net::tls::client_config(
                Trust::Ca(self.ca_pem.clone()),
                Some(&self.agent),
            )
            .unwrap(),
            disks: disks
                .iter()
                .enumerate()
                .map(|(i, p)| DiskDescriptor {
                    index: i as u32,
                    size: std::fs::metadata(p).unwrap().len(),
                    path: p.display().to_string(),
                })
                .collect(),
            schedule: Schedule::unlimited(),
            progress,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    kill: Arc<Notify>,
    req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ApiError> {
    let peer = req.extensions().get::<PeerInfo>().cloned().expect("peer info");
    let path = req.uri().path().to_string();
    let body = server::read_body(req.into_body()).await?;
    match path.as_str() {
        HELLO_PATH => {
            let hello: Hello = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
            let mut s = state.lock().unwrap();
            s.hellos += 1;
            let lie = s.hello_lie.take();
            let disks = hello
                .disks
                .iter()
                .map(|d| DiskCursor {
                    index: d.index,
                    next_sequence: match lie {
                        Some((disk, n)) if disk == d.index => n,
                        _ => s.next[d.index as usize],
                    },
                })
                .collect();
            server::json(StatusCode::OK, &HelloResponse { protocol_version: 1, disks })
        }
        PROGRESS_PATH => {
            let p: Progress = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
            state.lock().unwrap().progress.push(p);
            server::json(StatusCode::OK, &serde_json::json!({}))
        }
        BATCHES_PATH => {
            let batch = lifeboat_wire::decode(&body)
                .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
            let h = *batch.header();
            if peer.machine_id.as_deref() != Some(h.machine.to_string().as_str()) {
                return Err(ApiError::forbidden("forbidden", "not your machine"));
            }
            let (d, seq) = (h.disk_index, h.sequence);
            let drop_now = {
                let mut s = state.lock().unwrap();
                if s.drop_before == Some((d, seq)) {
                    s.drop_before = None;
                    true
                } else {
                    false
                }
            };
            if drop_now {
                kill.notify_one();
                std::future::pending::<()>().await;
            }
            let (answer, drop_after) = take_batch(&mut state.lock().unwrap(), &batch);
            if drop_after {
                kill.notify_one();
                std::future::pending::<()>().await;
            }
            answer
        }
        _ => Err(ApiError::not_found("not_found", path)),
    }
}

/// Applies a batch as a process server would; returns the answer, and whether to drop the
/// connection instead of answering.
fn take_batch(
    s: &mut State,
    batch: &lifeboat_wire::Batch<'_>,
) -> (Result<Response<ResponseBody>, ApiError>, bool) {
    let h = *batch.header();
    let (d, seq) = (h.disk_index, h.sequence);
    if s.throttle == Some((d, seq)) {
        s.throttle = None;
        s.throttled += 1;
        let r = server::json(
            StatusCode::TOO_MANY_REQUESTS,
            &serde_json::json!({"error": "cache full", "code": "cache-full"}),
        )
        .map(|mut r| {
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        });
        return (r, false);
    }
    let expected = s.next[d as usize];
    if seq < expected && !s.conflict_below {
        s.duplicates += 1;
        let ack = BatchAck { disk: d, sequence: seq, duplicate: true, slow_down_ms: 0 };
        return (server::json(StatusCode::OK, &ack), false);
    }
    if seq != expected {
        s.conflicts += 1;
        let body = serde_json::json!({
            "error": format!("expected batch {expected}"),
            "code": "sequence-gap",
            "expected_sequence": expected,
        });
        return (server::json(StatusCode::CONFLICT, &body), false);
    }
    let replica = &mut s.replicas[d as usize];
    for e in batch.extents() {
        let (o, l) = (e.offset() as usize, e.length() as usize);
        match e {
            Extent::Data { data, .. } => replica[o..o + l].copy_from_slice(data),
            Extent::Zero { .. } => replica[o..o + l].fill(0),
        }
    }
    if let Some(ConsistencyTag { point_id, .. }) = h.tag {
        s.tags[d as usize].push(point_id);
    }
    s.next[d as usize] += 1;
    if s.drop_after == Some((d, seq)) {
        s.drop_after = None;
        return (Err(ApiError::internal("unreachable")), true);
    }
    let ack = BatchAck { disk: d, sequence: seq, duplicate: false, slow_down_ms: 1 };
    (server::json(StatusCode::OK, &ack), false)
}

/// Image files, a journal and a cycler over them.
struct Source {
    dir: tempfile::TempDir,
    disks: Vec<PathBuf>,
    journal: Arc<Journal>,
    cycler: Cycler,
}

/// The journal and a cycler over the disks `disks` whose state lives in `dir`, as an agent
/// (re)starting there opens them.
fn open_agent(
    dir: &std::path::Path,
    disks: &[PathBuf],
    limits: CycleLimits,
    stop: Arc<AtomicBool>,
) -> (Arc<Journal>, Cycler) {
    let machine = MachineId::from_str(MACHINE_ID).unwrap();
    let slots = disks
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let map = dir.join(format!("hashscan-d{i}.map"));
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
    let journal =
        Arc::new(Journal::open(&dir.join("journal"), disks.len() as u32, machine).unwrap());
    let cycler = Cycler::new(
        machine,
        slots,
        journal.clone(),
        limits,
        stop,
        Arc::new(ProgressBoard::new(disks.len() as u32)),
    );
    (journal, cycler)
}

impl Source {
    fn new(sizes: &[u64], rng: &mut StdRng) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut disks = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let p = dir.path().join(format!("disk{i}.img"));
            let f = File::create(&p).unwrap();
            f.set_len(size).unwrap();
            // Random data in about half of the 16 KiB pieces.
            for off in (0..size).step_by(16 * 1024) {
                if rng.random_bool(0.5) {
                    let mut b = vec![0u8; 16 * 1024];
                    rng.fill(&mut b[..]);
                    f.write_all_at(&b, off).unwrap();
                }
            }
            disks.push(p);
        }
        let (journal, cycler) = open_agent(
            dir.path(),
            &disks,
            CycleLimits { batch_max_bytes: 64 * KIB, journal_max_bytes: 1 << 30 },
            Arc::new(AtomicBool::new(false)),
        );
        Self { dir, disks, journal, cycler }
    }

    fn cycle(&mut self) -> u64 {
        match self.cycler.run_cycle().unwrap() {
            CycleOutcome::Done { point, .. } => point,
            other => panic!("{other:?}"),
        }
    }

    fn write(&self, disk: usize, off: u64, data: &[u8]) {
        OpenOptions::new()
            .write(true)
            .open(&self.disks[disk])
            .unwrap()
            .write_all_at(data, off)
            .unwrap();
    }

    fn assert_replicas(&self, app: &Appliance) {
        let s = app.state.lock().unwrap();
        for (i, p) in self.disks.iter().enumerate() {
            assert!(
                std::fs::read(p).unwrap() == s.replicas[i],
                "replica {i} differs from its disk"
            );
        }
    }
}

async fn wait_empty(journal: &Journal) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !journal.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the journal did not drain: {} batches left",
            journal.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_everything_across_dropped_connections_and_429() {
    let mut rng = StdRng::seed_from_u64(1);
    let sizes = [512 * KIB, 256 * KIB];
    let mut src = Source::new(&sizes, &mut rng);
    assert_eq!(src.cycle(), 1);
    let n0 = src.journal.pending(0).unwrap().len() as u64;
    assert!(n0 >= 3, "{n0}");
    let app = Appliance::start(&sizes).await;
    app.with(|s| {
        s.drop_before = Some((0, 1));
        s.drop_after = Some((1, 0));
        s.throttle = Some((0, 2));
    });
    let board = Arc::new(ProgressBoard::new(2));
    board.start(0, crate::progress::Phase::InitialCopy, 512 * KIB);
    board.advance(0, 100 * KIB, 10);
    let sender = Sender::new(src.journal.clone(), app.options(&src.disks, Some(board))).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sender.run(stop_rx));
    wait_empty(&src.journal).await;

    // A second cycle is sent by the same, still running sender.
    src.write(1, 64 * KIB, &[9u8; 8192]);
    assert_eq!(src.cycle(), 2);
    wait_empty(&src.journal).await;
    stop_tx.send(true).unwrap();
    let stats = task.await.unwrap().unwrap();

    src.assert_replicas(&app);
    app.with(|s| {
        assert_eq!(s.tags, vec![vec![1, 2], vec![1, 2]], "every disk carries every point");
        assert!(s.hellos >= 3, "a session per dropped connection: {}", s.hellos);
        assert_eq!(s.throttled, 1);
        assert!(
            s.progress.iter().any(|p| p.disk == 0 && p.phase == "initial-copy"),
            "{:?}",
            s.progress
        );
    });
    assert!(stats.failures >= 2, "{stats:?}");
    assert_eq!(stats.resyncs, 0, "{stats:?}");
    assert!(src.dir.path().join("journal").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_resend_from_the_expected_sequence_and_lost_data_means_a_resync() {
    let mut rng = StdRng::seed_from_u64(2);
    let sizes = [256 * KIB];
    let mut src = Source::new(&sizes, &mut rng);
    src.cycle();
    let app = Appliance::start(&sizes).await;
    // The appliance already holds batches 0 and 1 but its hello says 0, and it answers 409
    // instead of "duplicate": the agent must skip to 2.
    for seq in 0..2 {
        let bytes = src.journal.read(0, seq).unwrap().unwrap();
        let batch = lifeboat_wire::decode(&bytes).unwrap();
        app.with(|s| {
            for e in batch.extents() {
                if let Extent::Data { offset, data } = e {
                    s.replicas[0][*offset as usize..][..data.len()].copy_from_slice(data);
                }
            }
            s.next[0] = seq + 1;
        });
    }
    app.with(|s| {
        s.hello_lie = Some((0, 0));
        s.conflict_below = true;
    });
    let sender = Sender::new(src.journal.clone(), app.options(&src.disks, None)).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sender.run(stop_rx));
    wait_empty(&src.journal).await;
    src.assert_replicas(&app);
    assert_eq!(app.with(|s| s.conflicts), 1);

    // The appliance loses everything it had of the disk (its cache and replica are gone).
    app.with(|s| {
        s.next[0] = 0;
        s.replicas[0].fill(0);
    });
    src.write(0, 0, &[5u8; 4096]);
    src.cycle();
    // The next batch gets a 409 for sequence 0, which the journal dropped long ago: the disk
    // is reset and marked for a full resync, which the next cycle performs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.journal.resync_requested(0).unwrap().is_none() {
        assert!(Instant::now() < deadline, "no resync was asked for");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(src.journal.is_empty());
    assert_eq!(src.journal.next_sequence(0).unwrap(), 0);
    src.cycle();
    wait_empty(&src.journal).await;
    src.assert_replicas(&app);
    stop_tx.send(true).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.resyncs, 1, "{stats:?}");
    assert!(stats.gaps >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_state_was_lost_continues_at_the_appliance_number() {
    let mut rng = StdRng::seed_from_u64(3);
    let sizes = [128 * KIB];
    let mut src = Source::new(&sizes, &mut rng);
    src.cycle();
    let app = Appliance::start(&sizes).await;
    // The appliance has seen 40 batches of this disk from an earlier life of the agent.
    app.with(|s| s.next[0] = 40);
    let sender = Sender::new(src.journal.clone(), app.options(&src.disks, None)).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sender.run(stop_rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.journal.next_sequence(0).unwrap() != 40 {
        assert!(Instant::now() < deadline, "the journal was not renumbered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(src.journal.resync_requested(0).unwrap().is_some());
    src.cycle();
    wait_empty(&src.journal).await;
    src.assert_replicas(&app);
    assert!(app.with(|s| s.next[0]) > 40);
    stop_tx.send(true).unwrap();
    assert_eq!(task.await.unwrap().unwrap().resyncs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lost_from_memory_in_a_crash_are_collected_again_without_a_resync() {
    let mut rng = StdRng::seed_from_u64(4);
    let sizes = [512 * KIB];
    let mut src = Source::new(&sizes, &mut rng);
    src.cycle();
    let app = Appliance::start(&sizes).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(
        Sender::new(src.journal.clone(), app.options(&src.disks, None)).unwrap().run(stop_rx),
    );
    wait_empty(&src.journal).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    let n0 = src.journal.next_sequence(0).unwrap();
    let Source { dir, disks, journal, cycler } = src;
    drop((journal, cycler));

    // An agent that keeps batches in memory, and a journal limit of three batches, so the
    // cycle waits while the appliance throttles the third batch.
    let mut changes = vec![0u8; 320 * KIB as usize];
    rng.fill(&mut changes[..]);
    File::options().write(true).open(&disks[0]).unwrap().write_all_at(&changes, 0).unwrap();
    let limits = CycleLimits { batch_max_bytes: 64 * KIB, journal_max_bytes: 192 * KIB };
    let stop = Arc::new(AtomicBool::new(false));
    let (journal, mut cycler) = open_agent(dir.path(), &disks, limits, stop.clone());
    journal.set_memory_budget(1 << 20).unwrap();
    app.with(|s| s.throttle = Some((0, n0 + 2)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task =
        tokio::spawn(Sender::new(journal.clone(), app.options(&disks, None)).unwrap().run(stop_rx));
    let cycle = tokio::task::spawn_blocking(move || cycler.run_cycle().map(|_| ()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.with(|s| s.throttled) == 0 || journal.bytes() < 128 * KIB {
        assert!(Instant::now() < deadline, "the cycle did not fill the journal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Crash: the cycle is interrupted, the sender stops, the journal's memory is gone.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(cycle.await.unwrap(), Err(CycleError::Stopped)));
    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert!(journal.memory_bytes() > 0, "batches were held in memory");
    assert_eq!(app.with(|s| s.next[0]), n0 + 2, "the appliance got the first two");
    drop(journal);

    // Restart: the appliance expects a number this journal only had in memory.
    let (journal, mut cycler) =
        open_agent(dir.path(), &disks, limits, Arc::new(AtomicBool::new(false)));
    assert!(journal.is_empty());
    assert!(journal.next_sequence(0).unwrap() < n0 + 2);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task =
        tokio::spawn(Sender::new(journal.clone(), app.options(&disks, None)).unwrap().run(stop_rx));
    let c = tokio::task::spawn_blocking(move || cycler.run_cycle().map(|_| ()));
    c.await.unwrap().unwrap();
    wait_empty(&journal).await;
    stop_tx.send(true).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.resyncs, 0, "{stats:?}");
    assert_eq!(journal.resync_requested(0).unwrap(), None);
    let s = app.state.lock().unwrap();
    assert!(std::fs::read(&disks[0]).unwrap() == s.replicas[0], "replica differs from its disk");
}

#[test]
fn backoff_grows_to_the_cap_with_jitter() {
    let mut b = Backoff::new();
    let first = b.step();
    assert!(
        first >= Duration::from_millis(250) && first <= Duration::from_millis(500),
        "{first:?}"
    );
    let mut last = first;
    for _ in 0..20 {
        last = b.step();
        assert!(last <= BACKOFF_MAX);
    }
    assert!(last >= BACKOFF_MAX / 2, "{last:?}");
    b.reset();
    assert!(b.step() <= Duration::from_millis(500));
}

#[test]
fn error_messages_are_extracted() {
    assert_eq!(error_message(br#"{"error":"full","code":"cache-full"}"#), "full (cache-full)");
    assert_eq!(error_message(b"plain text"), "plain text");
    assert_eq!(error_message(b""), "(no message)");
}
