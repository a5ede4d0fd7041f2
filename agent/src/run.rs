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
//! The state directory's layout is in [`crate::layout`] (its items are re-exported here).
//!
//! The pieces: `trackers` chooses each disk's change tracker, `policy` holds the certificate
//! and trust check that brings the machine's policy, `group_loop` the consistency group, and
//! `loops` the cycle thread and the async side.

mod group_loop;
mod loops;
mod policy;
mod trackers;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lifeboat_api::DiskDescriptor;
use lifeboat_wire::MachineId;
use tokio::sync::{mpsc, watch};

use self::group_loop::setup_group;
use self::loops::{cycle_loop, supervise};
use self::policy::{TrustCheck, check_at_start, start_schedule};
use self::trackers::{load_bpf, open_slots};
use crate::config::{AgentConfig, ConfigError};
use crate::cycle::{CycleError, CycleLimits, Cycler, DiskSlot};
use crate::disk::{Disk, DiskError};
use crate::journal::{Journal, JournalError};
pub use crate::layout::{JOURNAL_DIR, forget_replication_state, map_path};
use crate::progress::{self, ProgressBoard};
use crate::registration::{Registration, RegistrationError};
use crate::renew::Refreshed;
use crate::sender::{Sender, SenderError, SenderOptions};
use crate::tracker::TrackerError;

/// The identity a disk's tracker state is bound to: the machine and the disk's index, so a
/// map is never used for another machine's replica (after registering again) or another
/// index.
pub fn disk_id(machine: MachineId, index: u32) -> [u8; 16] {
    let mut input = machine.0.to_vec();
    input.extend_from_slice(&index.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&input).to_le_bytes()
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

    let descriptors = describe_disks(cfg)?;
    let disk_count = u32::try_from(cfg.disks.len()).map_err(|_| ConfigError::Value {
        path: cfg_path.to_path_buf(),
        key: "disks".into(),
        reason: format!("{} disks are more than a 32-bit disk index can number", cfg.disks.len()),
    })?;
    let journal = Arc::new(Journal::open(&cfg.state_dir.join(JOURNAL_DIR), disk_count, machine)?);
    journal.set_memory_budget(cfg.journal_memory_bytes)?;
    let bpf = load_bpf(cfg, machine, &descriptors)?;
    let slots = open_slots(cfg, machine, &bpf)?;
    // The interval between cycles: the configuration's, or the machine's policy's.
    let interval_secs = Arc::new(AtomicU64::new(cfg.interval_secs));
    // What the machine's policy said at start (app interval, bandwidth), if reached. The CAs
    // to trust and the certificate, as the appliance sees them now (a CA rotation, an
    // expiry): checked at start, then every trust_check_secs.
    let start_policy = check_at_start(&mut registration, &cfg.state_dir, &interval_secs)?;
    let tls = registration.tls()?;
    let (tls_tx, tls_rx) = watch::channel(tls.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let board = Arc::new(ProgressBoard::new(disk_count));
    let mut cycler = new_cycler(cfg, machine, slots, journal.clone(), stop.clone(), board.clone());
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
    let app_interval = set_quiescers(cfg, &runtime, start_policy.as_ref(), &mut cycler)?;
    // The machine's policy's bandwidth schedule, over the configuration's.
    let applied_bandwidth = start_policy.as_ref().and_then(|p| p.bandwidth.clone());
    let schedule = start_schedule(applied_bandwidth.as_ref(), schedule);
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
    let group_loop = match &cfg.group {
        Some(g) => Some(setup_group(
            g,
            &registration,
            &runtime,
            &tls_rx,
            &group_view,
            group_shutdown_rx.clone(),
        )?),
        None => None,
    };

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
    let trust_task = runtime.spawn(
        TrustCheck {
            registration,
            state_dir: cfg.state_dir.clone(),
            every: Duration::from_secs(cfg.trust_check_secs),
            compares: pending_compares.clone(),
            view: group_view.clone(),
            own_interval: cfg.interval_secs,
            interval_secs,
            app_interval,
            applied_bandwidth,
            own_schedule,
            schedule_tx,
            tls_tx,
        }
        .run(),
    );
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

/// The cycler of the machine's disks (`slots`), with the configured limits and cut policy.
fn new_cycler(
    cfg: &AgentConfig,
    machine: MachineId,
    slots: Vec<DiskSlot>,
    journal: Arc<Journal>,
    stop: Arc<AtomicBool>,
    board: Arc<ProgressBoard>,
) -> Cycler {
    let mut cycler = Cycler::new(
        machine,
        slots,
        journal,
        CycleLimits {
            batch_max_bytes: cfg.batch_max_bytes,
            journal_max_bytes: cfg.journal_max_bytes,
        },
        stop,
        board,
    );
    cycler.set_cuts(Some(cfg.cut_policy()));
    cycler
}

/// Opens every configured disk (each must be a whole number of sectors) and describes it
/// for the appliance.
fn describe_disks(cfg: &AgentConfig) -> Result<Vec<DiskDescriptor>, RunError> {
    let mut descriptors = Vec::with_capacity(cfg.disks.len());
    for (index, path) in (0u32..).zip(&cfg.disks) {
        let disk = Disk::open(path)?;
        if !disk.size().is_multiple_of(lifeboat_wire::SECTOR_SIZE) {
            return Err(CycleError::UnalignedSize { path: path.clone(), size: disk.size() }.into());
        }
        descriptors.push(DiskDescriptor {
            index,
            size: disk.size(),
            path: path.display().to_string(),
        });
    }
    Ok(descriptors)
}

/// With quiescer plugins configured, loads them and gives them to `cycler` for
/// app-consistent points. Returns the interval between app-consistent points in use
/// (the policy's at start, if it sets one) and the configuration's.
fn set_quiescers(
    cfg: &AgentConfig,
    runtime: &tokio::runtime::Runtime,
    start_policy: Option<&Refreshed>,
    cycler: &mut Cycler,
) -> Result<Option<(Arc<AtomicU64>, u64)>, RunError> {
    let (Some(plugins), Some(q)) = (&cfg.plugins, &cfg.quiesce) else {
        return Ok(None);
    };
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
    if let Some(i) = start_policy.and_then(|p| p.app_interval_secs) {
        tracing::info!(
            app_interval_secs = i,
            "the machine's policy sets the interval between app-consistent points"
        );
        handle.store(i, Ordering::Relaxed);
    }
    cycler.set_quiescers(Some(quiescers));
    Ok(Some((handle, q.interval_secs)))
}

#[cfg(test)]
mod tests;
