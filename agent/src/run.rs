//! `lifeboat-agent run`: the agent's steady state.
//!
//! Two loops share the journal and nothing else. The *cycle* loop, on its own thread because
//! scanning disks is blocking work, runs a [`Cycler`] every `interval_secs` (a cycle that
//! takes longer is followed at once by the next). The *sender*, a tokio task, ships whatever
//! the journal holds. Signals (SIGINT, SIGTERM) set a stop flag that the cycle's sink checks
//! at every change and tell the sender to stop after the batch in flight; nothing is lost,
//! since the journal and the trackers' intent logs carry everything across a restart.
//!
//! `--once` runs one cycle, waits until the appliance has acknowledged everything (and runs
//! another cycle if the appliance asked for a resync meanwhile), then exits 0.
//!
//! State directory layout (besides the registration files, see [`crate::registration`]):
//!
//! ```text
//! journal/                 the journal (see crate::journal)
//! hashscan-d<index>.map    the hash-scan tracker's baseline map of each disk (+ .intent, .lock)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lifeboat_api::DiskDescriptor;
use lifeboat_wire::MachineId;
use tokio::sync::{mpsc, watch};

use crate::config::{AgentConfig, ConfigError, TrackerChoice};
use crate::cycle::{CycleError, CycleLimits, CycleOutcome, Cycler, DiskSlot};
use crate::disk::{Disk, DiskError};
use crate::journal::{Journal, JournalError};
use crate::progress::{self, ProgressBoard};
use crate::registration::{Registration, RegistrationError};
use crate::sender::{Sender, SenderError, SenderOptions};
use crate::tracker::ebpf::{Bpf, Ebpf, words_for};
use crate::tracker::{HashScan, HashScanConfig, Tracker, TrackerError};
use std::os::unix::fs::FileTypeExt as _;

/// Name of the journal's directory in the state directory.
pub const JOURNAL_DIR: &str = "journal";

/// The hash-scan map of disk `index`.
pub fn map_path(state_dir: &Path, index: u32) -> PathBuf {
    state_dir.join(format!("hashscan-d{index}.map"))
}

/// The identity a disk's tracker state is bound to: the machine and the disk's index, so a
/// map is never used for another machine's replica (after registering again) or another
/// index.
pub fn disk_id(machine: MachineId, index: u32) -> [u8; 16] {
    let mut input = machine.0.to_vec();
    input.extend_from_slice(&index.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&input).to_le_bytes()
}

/// Removes the journal and the trackers' maps: what belongs to a previous registration.
pub fn forget_replication_state(state_dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let journal = state_dir.join(JOURNAL_DIR);
    match std::fs::remove_dir_all(&journal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err((journal, e)),
    }
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err((state_dir.to_path_buf(), e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("hashscan-d") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| (p, e))?;
        }
    }
    Ok(())
}

/// Errors that stop `run`; [`RunError::exit_code`] maps them to the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No usable registration.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// A disk cannot be opened.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The journal cannot be opened or failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A tracker cannot be set up.
    #[error("setting up change tracking for disk {index}: {source}")]
    Tracker {
        /// The disk index.
        index: u32,
        /// The tracker's error.
        source: TrackerError,
    },
    /// A cycle failed (in `--once` mode, where it is not retried).
    #[error(transparent)]
    Cycle(#[from] CycleError),
    /// The sender failed.
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// The TLS configuration cannot be built from the registration.
    #[error("the registration's certificates cannot be used: {0}; register again with --force")]
    Tls(#[from] lifeboat_net::TlsError),
    /// The quiescer plugins cannot be loaded (a configuration mistake).
    #[error("app-consistent points: {0}")]
    Quiesce(String),
    /// The consistency group cannot be set up (listener, peers' TLS).
    #[error("consistency group: {0}")]
    Group(String),
    /// The async runtime or signal handlers could not be set up.
    #[error("cannot {what}: {source}")]
    Runtime {
        /// What was being set up.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl RunError {
    /// 2 for configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Quiesce(_) | RunError::Group(_) => 2,
            RunError::Cycle(CycleError::UnalignedSize { .. }) => 2,
            _ => 1,
        }
    }
}

/// How `run` behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// One cycle, wait until everything is acknowledged, exit.
    pub once: bool,
}

/// What the cycle thread tells the async side.
#[derive(Debug)]
enum CycleEvent {
    Done,
    Skipped,
    Failed(CycleError),
}

/// Lowers (or raises) the calling thread's CPU priority. Call before any thread is spawned:
/// on Linux the nice value is per thread and inherited by the threads created afterwards.
pub fn set_nice(nice: i32) {
    match rustix::process::setpriority_process(None, nice) {
        Ok(()) => tracing::debug!(nice, "CPU priority set"),
        Err(e) => tracing::warn!(
            nice,
            "cannot set the agent's CPU priority ({e}); it runs at the priority it was started with"
        ),
    }
}

/// Loads (or re-opens, when pinned) the eBPF tracker for the machine's block devices. `Err`
/// holds why the hash scan is used instead; with `tracker = "ebpf"` that is an error.
fn load_bpf(
    cfg: &AgentConfig,
    machine: MachineId,
    disks: &[DiskDescriptor],
) -> Result<Result<Arc<Bpf>, String>, RunError> {
    if cfg.tracker == TrackerChoice::Hashscan {
        return Ok(Err("configured (tracker = \"hashscan\")".into()));
    }
    let sizes: Vec<u64> = disks
        .iter()
        .filter(|d| std::fs::metadata(&d.path).is_ok_and(|m| m.file_type().is_block_device()))
        .map(|d| d.size)
        .collect();
    if sizes.is_empty() {
        return Ok(Err("no disk is a block device".into()));
    }
    match Bpf::open_or_load(&format!("agent-{machine}"), words_for(&sizes)) {
        Ok((bpf, reused)) => {
            if reused {
                tracing::info!(dir = %bpf.dir().display(), "eBPF write tracking went on while the agent was stopped: reusing the pinned tracker");
            }
            Ok(Ok(Arc::new(bpf)))
        }
        Err(e) if cfg.tracker == TrackerChoice::Ebpf => Err(RunError::Tracker {
            index: 0,
            source: TrackerError::Config { tracker: "ebpf", reason: e.to_string() },
        }),
        Err(e) => Ok(Err(format!(
            "the eBPF tracker cannot be loaded here ({e}); it needs root, a kernel with BTF (CONFIG_DEBUG_INFO_BTF) and tracing allowed"
        ))),
    }
}

/// Runs the agent with `cfg` (read from `cfg_path`) until a signal, or once with
/// `opts.once`.
pub fn run(cfg: &AgentConfig, cfg_path: &Path, opts: RunOptions) -> Result<(), RunError> {
    set_nice(cfg.nice);
    // Filesystems a killed agent left frozen are thawed before anything else.
    crate::freeze::recover();
    let schedule = cfg.schedule(cfg_path)?;
    let mut registration = Registration::load(&cfg.state_dir)?;
    let machine = registration.machine;
    tracing::info!(
        machine = %machine,
        process_server = %registration.record.process_server_url,
        disks = cfg.disks.len(),
        "lifeboat-agent starting"
    );

    let mut descriptors = Vec::with_capacity(cfg.disks.len());
    for (i, path) in cfg.disks.iter().enumerate() {
        let disk = Disk::open(path)?;
        if !disk.size().is_multiple_of(lifeboat_wire::SECTOR_SIZE) {
            return Err(CycleError::UnalignedSize { path: path.clone(), size: disk.size() }.into());
        }
        descriptors.push(DiskDescriptor {
            index: i as u32,
            size: disk.size(),
            path: path.display().to_string(),
        });
    }
    let journal =
        Arc::new(Journal::open(&cfg.state_dir.join(JOURNAL_DIR), cfg.disks.len() as u32, machine)?);
    journal.set_memory_budget(cfg.journal_memory_bytes)?;
    let bpf = load_bpf(cfg, machine, &descriptors)?;
    let mut slots = Vec::with_capacity(cfg.disks.len());
    for (i, path) in cfg.disks.iter().enumerate() {
        let index = i as u32;
        let map = map_path(&cfg.state_dir, index);
        let mut hcfg = HashScanConfig::new(&map);
        hcfg.disk_id = disk_id(machine, index);
        let mut hs = HashScan::new(hcfg).map_err(|source| RunError::Tracker { index, source })?;
        hs.set_read_rate(cfg.read_rate());
        let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let tracker: Box<dyn Tracker> = match (&bpf, is_block) {
            (Ok(bpf), true) => match Ebpf::new(hs, bpf.clone(), path) {
                Ok(t) => {
                    tracing::info!(disk = index, path = %path.display(), tracker = "ebpf", "change tracker: eBPF block-layer tracking (no kernel module); pinned in {}", bpf.dir().display());
                    Box::new(t)
                }
                Err(e) => {
                    if cfg.tracker == TrackerChoice::Ebpf {
                        return Err(RunError::Tracker { index, source: e });
                    }
                    tracing::warn!(disk = index, path = %path.display(), tracker = "hashscan", "change tracker: hash scan, because eBPF tracking of this disk failed: {e}");
                    let mut hcfg = HashScanConfig::new(&map);
                    hcfg.disk_id = disk_id(machine, index);
                    let mut hs = HashScan::new(hcfg)
                        .map_err(|source| RunError::Tracker { index, source })?;
                    hs.set_read_rate(cfg.read_rate());
                    Box::new(hs)
                }
            },
            (Ok(_), false) | (Err(_), false) => {
                if cfg.tracker == TrackerChoice::Ebpf {
                    return Err(RunError::Tracker {
                        index,
                        source: TrackerError::Config {
                            tracker: "ebpf",
                            reason: format!(
                                "{} is not a block device (tracker = \"ebpf\" needs block devices; use \"auto\" to fall back to the hash scan)",
                                path.display()
                            ),
                        },
                    });
                }
                let why = match cfg.tracker {
                    TrackerChoice::Hashscan => "configured (tracker = \"hashscan\")",
                    _ => {
                        "it is an image file, not a block device (block-layer tracking sees block devices only)"
                    }
                };
                tracing::info!(disk = index, path = %path.display(), tracker = "hashscan", "change tracker: hash scan, because {why}");
                Box::new(hs)
            }
            (Err(why), true) => {
                tracing::info!(disk = index, path = %path.display(), tracker = "hashscan", "change tracker: hash scan, because {why}");
                Box::new(hs)
            }
        };
        slots.push(DiskSlot { index, path: path.clone(), tracker, baseline_path: Some(map) });
    }
    // The interval between cycles: the configuration's, or the machine's policy's.
    let interval_secs = Arc::new(AtomicU64::new(cfg.interval_secs));
    // What the machine's policy said at start (app interval, bandwidth), if reached.
    let mut start_policy: Option<crate::renew::Refreshed> = None;
    // The CAs to trust and the certificate, as the appliance sees them now (a CA rotation,
    // an expiry): checked at start, then every trust_check_secs.
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| RunError::Runtime { what: "start the async runtime", source })?;
        match rt.block_on(crate::renew::refresh(&mut registration, &cfg.state_dir, false)) {
            Ok(r) => {
                start_policy = Some(r.clone());
                if let Some(i) = r.interval_secs {
                    tracing::info!(
                        interval_secs = i,
                        "the machine's policy sets the interval between points"
                    );
                    interval_secs.store(i, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot check the certificate and trusted CAs with the appliance now; checked again later");
            }
        }
    }
    let tls = registration.tls()?;
    let (tls_tx, tls_rx) = watch::channel(tls.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let board = Arc::new(ProgressBoard::new(cfg.disks.len() as u32));
    let mut cycler = Cycler::new(
        machine,
        slots,
        journal.clone(),
        CycleLimits {
            batch_max_bytes: cfg.batch_max_bytes,
            journal_max_bytes: cfg.journal_max_bytes,
        },
        stop.clone(),
        board.clone(),
    );
    cycler.set_cuts(Some(cfg.cut_policy()));
    // A disk that grows while protected is announced again before data for it is sent.
    let (sizes_tx, sizes_rx) = watch::channel(descriptors.clone());
    cycler.set_sizes(Some(Arc::new(sizes_tx)));
    // Comparisons of disks with their replicas the appliance asks for (logs it lost).
    let pending_compares = Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Some(r) = &start_policy {
        crate::compare::queue(&pending_compares, &r.compare);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lifeboat-agent")
        .build()
        .map_err(|source| RunError::Runtime { what: "start the async runtime", source })?;
    cycler.set_comparisons(Some(crate::compare::Comparisons {
        pending: pending_compares.clone(),
        compared: Vec::new(),
        client: Box::new(crate::compare::HttpCompareClient {
            url: registration.record.process_server_url.clone(),
            tls: tls_rx.clone(),
            runtime: runtime.handle().clone(),
        }),
    }));
    let mut app_interval: Option<(Arc<AtomicU64>, u64)> = None;
    if let (Some(plugins), Some(q)) = (&cfg.plugins, &cfg.quiesce) {
        let host =
            lifeboat_plugin_host::Host::new(lifeboat_plugin_host::keys::KeyRing::new(Vec::new()))
                .map_err(|e| RunError::Quiesce(format!("cannot start the plugin runtime: {e}")))?;
        let mut plugins = plugins.clone();
        // Compiled plugins are native code: cached where only the agent writes.
        plugins.cache_dir.get_or_insert_with(|| cfg.state_dir.join("plugin-cache"));
        let registry = Arc::new(lifeboat_plugin_host::registry::Registry::new(host, plugins));
        let quiescers = crate::quiesce::Quiescers::new(
            registry,
            runtime.handle().clone(),
            &q.plugins,
            Duration::from_millis(q.deadline_ms),
            Duration::from_secs(q.interval_secs),
        )
        .map_err(RunError::Quiesce)?;
        tracing::info!(
            plugins = ?q.plugins,
            interval_secs = q.interval_secs,
            deadline_ms = q.deadline_ms,
            "app-consistent points through quiescer plugins"
        );
        let handle = quiescers.interval_handle();
        if let Some(i) = start_policy.as_ref().and_then(|p| p.app_interval_secs) {
            tracing::info!(
                app_interval_secs = i,
                "the machine's policy sets the interval between app-consistent points"
            );
            handle.store(i, Ordering::Relaxed);
        }
        app_interval = Some((handle, q.interval_secs));
        cycler.set_quiescers(Some(quiescers));
    }
    // The machine's policy's bandwidth schedule, over the configuration's.
    let policy_schedule = |b: &lifeboat_api::PolicyBandwidth| {
        crate::config::BandwidthConfig::from_policy(b)
            .schedule(Path::new("the machine's policy (bandwidth)"))
            .map_err(|e| tracing::warn!(error = %e, "the policy's bandwidth schedule is not usable; the agent's own applies"))
            .ok()
    };
    let mut applied_bandwidth = start_policy.as_ref().and_then(|p| p.bandwidth.clone());
    let schedule = match applied_bandwidth.as_ref().and_then(policy_schedule) {
        Some(s) => {
            tracing::info!("the machine's policy sets the bandwidth schedule");
            s
        }
        None => schedule,
    };
    let (schedule_tx, schedule_rx) = watch::channel(schedule.clone());
    let own_schedule = cfg.schedule(cfg_path)?;
    let sender = Sender::new(
        journal.clone(),
        SenderOptions {
            url: registration.record.process_server_url.clone(),
            tls,
            disks: descriptors,
            tls_updates: Some(tls_rx.clone()),
            schedule_updates: Some(schedule_rx),
            disk_updates: Some(sizes_rx),
            system: Some(crate::system::detect(cfg.firmware.as_deref())),
            schedule,
            progress: Some(board.clone()),
        },
    )?;

    // Consistency group: the peer listener (every member) and the coordinator. Who is in
    // the group is the appliance's to say (the trust check keeps `group_view` current).
    let (group_shutdown_tx, group_shutdown_rx) = watch::channel(false);
    let group_view: crate::group::GroupView =
        Arc::new(std::sync::RwLock::new(start_policy.as_ref().and_then(|r| r.group.clone())));
    let mut group_loop = None;
    if let Some(g) = &cfg.group {
        let (round_tx, round_rx) = std::sync::mpsc::channel();
        let peers: Vec<String> = g.members.iter().map(|m| m.machine.clone()).collect();
        let reporter: crate::group::PointReporter = {
            let url = registration.record.process_server_url.clone();
            let tls = tls_rx.clone();
            let handle = runtime.handle().clone();
            Arc::new(move |group: &str, point: u64| {
                let body = lifeboat_api::MemberPoint { group: group.to_owned(), point };
                let client = match lifeboat_net::Client::new(&url, tls.borrow().clone()) {
                    Ok(c) => c.with_timeout(Duration::from_secs(30)),
                    Err(e) => {
                        tracing::warn!("cannot report the group point: {e}");
                        return;
                    }
                };
                for attempt in 0..3u64 {
                    if attempt > 0 {
                        std::thread::sleep(Duration::from_secs(2));
                    }
                    let r = handle.block_on(client.post_json(
                        "/api/v1/groups/member-points",
                        &body,
                        http::HeaderMap::new(),
                    ));
                    match r {
                        Ok((st, _, _)) if st.is_success() => return,
                        Ok((st, _, b)) => tracing::warn!(
                            point,
                            "the appliance did not take this member's group point ({st}): {}",
                            crate::sender::error_message(&b)
                        ),
                        Err(e) => {
                            tracing::warn!(point, "cannot report this member's group point: {e}")
                        }
                    }
                }
            })
        };
        let mut shutdown = group_shutdown_rx.clone();
        let bound = runtime
            .block_on(tokio::net::TcpListener::bind(g.listen))
            .map_err(|e| RunError::Group(format!("group.listen {}: {e}", g.listen)))?;
        let listener = runtime.spawn(crate::group::serve_member(
            bound,
            registration.identity.clone(),
            registration.ca_pem.clone(),
            crate::group::MemberSetup {
                group: g.name.clone(),
                me: machine.to_string(),
                peers: peers.clone(),
                view: group_view.clone(),
                reporter: Some(reporter),
            },
            round_tx,
            async move {
                let _ = shutdown.wait_for(|s| *s).await;
            },
        ));
        drop(listener);
        let coordinator = if g.coordinator {
            let members = g.members.iter().map(|m| (m.machine.clone(), m.address)).collect();
            let appliance = lifeboat_net::Client::new(
                &registration.record.process_server_url,
                registration.tls()?,
            )
            .map_err(|e| RunError::Group(e.to_string()))?;
            let c = crate::group::Coordinator::new(
                g.name.clone(),
                machine.to_string(),
                &members,
                &registration.identity,
                &registration.ca_pem,
                appliance,
                runtime.handle().clone(),
                Duration::from_millis(g.deadline_ms),
            )
            .map_err(RunError::Group)?;
            tracing::info!(group = %g.name, members = g.members.len() + 1, interval_secs = g.interval_secs, "consistency group: this agent coordinates the group's points");
            let mut all = peers.clone();
            all.push(machine.to_string());
            Some(CoordinatorSide {
                c: Arc::new(c),
                every: Duration::from_secs(g.interval_secs),
                view: group_view.clone(),
                group: g.name.clone(),
                me: machine.to_string(),
                members: all,
                refused: None,
            })
        } else {
            tracing::info!(group = %g.name, "consistency group: member; the coordinator starts the group's points");
            None
        };
        group_loop = Some(GroupLoop { rounds: round_rx, coordinator, last: None });
    }

    let bar_stop = Arc::new(AtomicBool::new(false));
    let bar = progress::spawn_bar(board, bar_stop.clone());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (request_tx, request_rx) = std::sync::mpsc::channel::<()>();
    let interval = interval_secs.clone();
    let cycle_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("lifeboat-cycle".into())
            .spawn(move || {
                cycle_loop(cycler, interval, opts.once, &stop, &events_tx, &request_rx, group_loop)
            })
            .map_err(|source| RunError::Runtime { what: "start the cycle thread", source })?
    };

    // The periodic certificate and trust check; a change reaches the sender, which
    // reconnects with it.
    let trust_task = runtime.spawn({
        let compares = pending_compares.clone();
        let view = group_view.clone();
        let every = Duration::from_secs(cfg.trust_check_secs);
        let state_dir = cfg.state_dir.clone();
        let own_interval = cfg.interval_secs;
        async move {
            loop {
                tokio::time::sleep(every).await;
                let r = crate::renew::refresh(&mut registration, &state_dir, false).await;
                if let Ok(r) = &r {
                    crate::compare::queue(&compares, &r.compare);
                    *view.write().unwrap_or_else(|e| e.into_inner()) = r.group.clone();
                    let want = r.interval_secs.unwrap_or(own_interval);
                    if interval_secs.swap(want, Ordering::Relaxed) != want {
                        tracing::info!(interval_secs = want, "interval between points changed (machine policy)");
                    }
                    if let Some((handle, own)) = &app_interval {
                        let want = r.app_interval_secs.unwrap_or(*own);
                        if handle.swap(want, Ordering::Relaxed) != want {
                            tracing::info!(app_interval_secs = want, "interval between app-consistent points changed (machine policy)");
                        }
                    }
                    if r.bandwidth != applied_bandwidth {
                        applied_bandwidth = r.bandwidth.clone();
                        let next = applied_bandwidth.as_ref().and_then(policy_schedule).unwrap_or_else(|| own_schedule.clone());
                        tracing::info!(from_policy = applied_bandwidth.is_some(), "bandwidth schedule changed");
                        let _ = schedule_tx.send(next);
                    }
                }
                match r {
                    Ok(r) if r.changed() => match registration.tls() {
                        Ok(tls) => {
                            let _ = tls_tx.send(tls);
                        }
                        Err(e) => tracing::error!(error = %e, "the renewed identity cannot be used"),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "certificate and trust check failed; tried again later"),
                }
            }
        }
    });
    let result =
        runtime.block_on(supervise(journal, sender, stop.clone(), events_rx, request_tx, opts));
    trust_task.abort();
    stop.store(true, Ordering::Relaxed);
    let _ = group_shutdown_tx.send(true);
    let _ = cycle_thread.join();
    bar_stop.store(true, Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// The async side: signals, the sender, and `--once` completion.
async fn supervise(
    journal: Arc<Journal>,
    sender: Sender,
    stop: Arc<AtomicBool>,
    mut events: mpsc::UnboundedReceiver<CycleEvent>,
    requests: std::sync::mpsc::Sender<()>,
    opts: RunOptions,
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |kind, what| signal(kind).map_err(|source| RunError::Runtime { what, source });
    let mut sigterm = sig(SignalKind::terminate(), "install the SIGTERM handler")?;
    let mut sigint = sig(SignalKind::interrupt(), "install the SIGINT handler")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut sender_task = tokio::spawn(sender.run(shutdown_rx));
    let mut journal_changed = journal.subscribe();
    // In --once mode: a cycle completed and the journal is to drain.
    let mut draining = false;
    let mut events_open = true;

    let outcome = loop {
        if opts.once && draining && journal.is_empty() {
            let mut resync = false;
            for d in 0..journal.disk_count() {
                resync |= journal.resync_requested(d)?.is_some();
            }
            if !resync {
                tracing::info!("everything is acknowledged by the appliance: done");
                break Ok(());
            }
            tracing::info!("the appliance asked for a resync meanwhile: one more cycle");
            draining = false;
            let _ = requests.send(());
        }
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: stopping after the current batch; nothing is lost");
                break Ok(());
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: stopping after the current batch; nothing is lost");
                break Ok(());
            }
            r = &mut sender_task => {
                break match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(RunError::Runtime {
                        what: "run the sender",
                        source: std::io::Error::other(e.to_string()),
                    }),
                };
            }
            ev = events.recv(), if events_open => match ev {
                Some(CycleEvent::Done) => draining = opts.once,
                Some(CycleEvent::Skipped) => {
                    if opts.once {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = requests.send(());
                    }
                }
                Some(CycleEvent::Failed(e)) => {
                    if opts.once {
                        break Err(e.into());
                    }
                }
                None => events_open = false,
            },
            _ = journal_changed.changed() => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    if !sender_task.is_finished() {
        match tokio::time::timeout(Duration::from_secs(660), sender_task).await {
            Ok(Ok(Err(e))) => tracing::warn!("sender stopped with an error: {e}"),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "the batch in flight did not finish in time; it is resent at the next start"
            ),
        }
    }
    outcome
}

/// The cycle thread: a cycle every `interval` (or, with `once`, one at start and one per
/// request), until `stop`.
/// The cycle thread's part of a consistency group.
struct GroupLoop {
    /// Rounds the coordinator opened on this member.
    rounds: std::sync::mpsc::Receiver<crate::group::MemberRound>,
    /// On the coordinator: it, the interval between group points, and what the appliance
    /// must agree to.
    coordinator: Option<CoordinatorSide>,
    /// When the last group round started.
    last: Option<Instant>,
}

/// The coordinator's side of a [`GroupLoop`].
struct CoordinatorSide {
    c: Arc<crate::group::Coordinator>,
    every: Duration,
    view: crate::group::GroupView,
    group: String,
    me: String,
    members: Vec<String>,
    /// Why the last round was not started (logged once per reason).
    refused: Option<String>,
}

impl GroupLoop {
    /// Runs a group round if one is open (member) or due (coordinator).
    fn run_due(&mut self, cycler: &mut Cycler) {
        while let Ok(mut round) = self.rounds.try_recv() {
            log_group(cycler.run_group_cycle(&mut round));
        }
        if let Some(side) = &mut self.coordinator
            && self.last.is_none_or(|t| t.elapsed() >= side.every)
        {
            self.last = Some(Instant::now());
            if let Err(why) = crate::group::agrees(&side.view, &side.group, &side.me, &side.members)
            {
                if side.refused.as_deref() != Some(why.as_str()) {
                    tracing::error!("consistency group: no rounds: {why}");
                    side.refused = Some(why);
                }
                return;
            }
            side.refused = None;
            let mut round = side.c.round();
            log_group(cycler.run_group_cycle(&mut round));
        }
    }
}

fn log_group(r: Result<CycleOutcome, CycleError>) {
    match r {
        Ok(CycleOutcome::Done { point, kind, freeze, .. }) => tracing::info!(
            point,
            kind = ?kind,
            freeze_ms = freeze.map(|f| f.as_millis() as u64),
            "group round: point {point} cut with the group"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!("group round failed: {e}; nothing was lost"),
    }
}

fn cycle_loop(
    mut cycler: Cycler,
    interval: Arc<AtomicU64>,
    once: bool,
    stop: &AtomicBool,
    events: &mpsc::UnboundedSender<CycleEvent>,
    requests: &std::sync::mpsc::Receiver<()>,
    mut group: Option<GroupLoop>,
) {
    /// Cycles retried at once after a deferred point, before waiting for the interval.
    const MAX_QUICK_RETRIES: u32 = 5;
    let mut deferred = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Some(g) = group.as_mut() {
            g.run_due(&mut cycler);
        }
        let started = Instant::now();
        let event = match cycler.run_cycle() {
            Ok(CycleOutcome::Done { point, disks, duration, freeze, kind, quiesce_failed }) => {
                deferred = 0;
                let changed: u64 = disks.iter().map(|d| d.stats.bytes_changed()).sum();
                let read: u64 = disks.iter().map(|d| d.stats.bytes_read).sum();
                let batches: u64 = disks.iter().map(|d| d.batches).sum();
                let how = match (freeze, kind) {
                    (Some(_), lifeboat_wire::PointKind::App) => {
                        "app-consistent: quiescers held the applications, cut under a filesystem freeze"
                    }
                    (Some(_), _) if quiesce_failed.is_some() => {
                        "cut under a filesystem freeze; app-consistent was due but a quiescer failed"
                    }
                    (Some(_), _) => "cut under a filesystem freeze",
                    (None, _) => "crash-consistent only if the disks were quiet (no freeze)",
                };
                tracing::info!(
                    point,
                    changed_bytes = changed,
                    read_bytes = read,
                    batches,
                    duration_ms = duration.as_millis() as u64,
                    freeze_ms = freeze.map(|f| f.as_millis() as u64),
                    kind = ?kind,
                    journal_bytes = cycler.journal().bytes(),
                    "cycle done: point {point} journaled on every disk ({how})"
                );
                CycleEvent::Done
            }
            Ok(CycleOutcome::Deferred { .. }) if deferred < MAX_QUICK_RETRIES => {
                // Try again soon rather than after a whole interval.
                deferred += 1;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Ok(CycleOutcome::Deferred { .. }) => {
                deferred = 0;
                CycleEvent::Skipped
            }
            Ok(CycleOutcome::Skipped { .. }) => CycleEvent::Skipped,
            Err(CycleError::Stopped) => return,
            Err(e) => {
                tracing::error!("cycle failed: {e}; nothing was lost, the next cycle retries");
                CycleEvent::Failed(e)
            }
        };
        let failed = matches!(event, CycleEvent::Failed(_));
        if events.send(event).is_err() || (once && failed) {
            return;
        }
        // Wait for the next start: the interval (daemon) or a request (--once).
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if once {
                match requests.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            if let Some(g) = group.as_mut() {
                g.run_due(&mut cycler);
            }
            let elapsed = started.elapsed();
            let interval = Duration::from_secs(interval.load(Ordering::Relaxed));
            if elapsed >= interval {
                break;
            }
            std::thread::sleep((interval - elapsed).min(Duration::from_millis(100)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ids_differ_by_machine_and_index() {
        let a = MachineId([1; 16]);
        let b = MachineId([2; 16]);
        assert_ne!(disk_id(a, 0), disk_id(a, 1));
        assert_ne!(disk_id(a, 0), disk_id(b, 0));
        assert_eq!(disk_id(a, 3), disk_id(a, 3));
    }

    #[test]
    fn forgetting_removes_journal_and_maps_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path();
        std::fs::create_dir_all(s.join("journal/d0")).unwrap();
        std::fs::write(s.join("journal/d0/x.batch"), b"x").unwrap();
        std::fs::write(s.join("hashscan-d0.map"), b"m").unwrap();
        std::fs::write(s.join("hashscan-d0.map.intent"), b"i").unwrap();
        std::fs::write(s.join("agent.key"), b"k").unwrap();
        forget_replication_state(s).unwrap();
        assert!(!s.join("journal").exists());
        assert!(!s.join("hashscan-d0.map").exists());
        assert!(!s.join("hashscan-d0.map.intent").exists());
        assert!(s.join("agent.key").exists());
        forget_replication_state(&s.join("nonexistent")).unwrap();
    }
}
