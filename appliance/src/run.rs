//! Starting the appliance: data directory, state, keys, CA, plugins, then the roles the
//! configuration turns on, until SIGINT/SIGTERM. SIGHUP reloads the plugins directory.

use anyhow::Context;
use lifeboat_appliance::config::ApplianceConfig;
use lifeboat_appliance::config_server::targets::chosen;
use lifeboat_appliance::handoff::Handoff;
use lifeboat_appliance::http::{self, ConfigServerCtx};
use lifeboat_appliance::master_target::MasterTarget;
use lifeboat_appliance::process_server::ProcessServer;
use lifeboat_appliance::store::State;
use lifeboat_plugin_host::Host;
use lifeboat_plugin_host::registry::Registry;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every role shares.
pub struct Core {
    /// Configuration.
    pub config: ApplianceConfig,
    /// State store.
    pub state: State,
    /// Loaded plugins.
    pub registry: Arc<Registry>,
    /// The data keys (the cipher plugin's, and for sealing control objects).
    pub keys: lifeboat_plugin_host::keys::KeyRing,
}

/// Makes what the appliance keeps readable by its own user only.
///
/// The data directory holds clear batches (the cache, before compression and encryption),
/// password hashes (`state.db`), data keys and the CA key; a local target holds replicas.
/// Everything the process creates is its own (umask 077), and the directories that hold
/// those files are made 0700 at every start, with a warning when they were open to others
/// (a directory 0700 closes everything beneath it, whatever the files' own modes).
pub fn make_private(config: &ApplianceConfig) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let data = &config.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let mut private: Vec<&Path> = vec![data.as_path()];
    private.extend(config.plugins.cache_dir.as_deref());
    for g in config.plugins.grants.values() {
        private.extend(g.directories.values().map(|d| d.as_path()));
    }
    for dir in private {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("cannot read the permissions of {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "was open to other local users: made 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700 | 0o700))
                .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
        }
    }
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = data.join(f);
        if let Ok(m) = std::fs::metadata(&path)
            && m.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", path.display()))?;
        }
    }
    Ok(())
}

/// Opens the data directory, state, keys and plugins.
pub fn open_core(config: ApplianceConfig) -> anyhow::Result<Core> {
    make_private(&config)?;
    let data = &config.data_dir;
    let state = State::open(&data.join("state.db"))?;
    let keys = lifeboat_appliance::config_server::keys::load_or_create(&data.join("keys"))
        .with_context(|| format!("data keys in {}", data.join("keys").display()))?;
    let host = Host::new(keys.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the plugin runtime: {e}"))?;
    // Settings an administrator stored from the API replace the grants' (see
    // `config_server::targets`).
    let (stored, unreadable) = lifeboat_appliance::config_server::targets::stored(&state, &keys)
        .context("stored plugin settings")?;
    for e in unreadable {
        tracing::error!(error = %e, "stored plugin settings left out; the plugin keeps its grant's");
    }
    let overrides = lifeboat_plugin_host::registry::Overrides {
        settings: stored,
        pins: state.plugin_pins()?.into_iter().collect(),
    };
    let registry = Arc::new(Registry::with_overrides(host, config.plugins.clone(), overrides));
    for r in &registry.current().refused {
        tracing::error!(error = %r, "plugin refused");
    }
    Ok(Core { config, state, registry, keys })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Runs the configured roles until a shutdown signal.
pub async fn run(config: ApplianceConfig) -> anyhow::Result<()> {
    let core = open_core(config)?;
    let cfg = core.config.clone();
    let shutdown = CancellationToken::new();
    // The CA and server identity only where a listener needs them (a master-target-only
    // appliance at a target site has neither).
    let listeners = if cfg.roles.config_server || cfg.roles.process_server {
        Some(Arc::new(lifeboat_appliance::config_server::pki::Pki::load(
            &cfg.data_dir,
            &cfg.config_server.server_names,
        )?))
    } else {
        None
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let (true, Some(pki)) = (cfg.roles.config_server, &listeners) {
        start_config_server(&core, pki, &shutdown, &mut tasks).await?;
    }
    // Both roles on one target in this process: shipped batches go to the master target
    // in memory (see `handoff`); the logs are written to the target all the same.
    let handoff = (cfg.roles.process_server
        && cfg.roles.master_target
        && chosen(&core.state, &cfg.process_server.target)
            == chosen(&core.state, &cfg.master_target.target)
        && !cfg.master_target.read_back)
        .then(|| Arc::new(Handoff::new(lifeboat_appliance::handoff::DEFAULT_BUDGET)));
    let mut cache_status: Option<ProcessServer> = None;
    if let (true, Some(pki)) = (cfg.roles.process_server, &listeners) {
        cache_status =
            Some(start_process_server(&core, pki, handoff.clone(), &shutdown, &mut tasks).await?);
    }
    if cfg.roles.master_target {
        let mt = MasterTarget::new(
            core.state.clone(),
            core.registry.clone(),
            cfg.master_target.clone(),
            handoff.clone(),
        )
        .with_catalogue(cfg.data_dir.clone())
        .with_keys(core.keys.clone());
        let sd = shutdown.clone();
        tasks.spawn(async move { mt.run(sd).await });
        tracing::info!(target = %chosen(&core.state, &cfg.master_target.target), "master target running");
    }
    start_health(&core, cache_status, &shutdown, &mut tasks);
    // Cursors and counters of the per-batch path are written behind (see `store::behind`).
    let (state, sd) = (core.state.clone(), shutdown.clone());
    tasks.spawn(async move { state.flush_every(std::time::Duration::from_secs(1), sd).await });
    let mut tasks = wait_for_signals(&core, tasks).await?;
    tracing::info!("shutting down: finishing requests in flight");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    core.state.flush()?;
    Ok(())
}

/// Starts the configuration server (443): its jobs, the first registration passphrase,
/// its listener.
async fn start_config_server(
    core: &Core,
    pki: &Arc<lifeboat_appliance::config_server::pki::Pki>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let cfg = &core.config;
    let data = &cfg.data_dir;
    let interrupted = core.state.fail_interrupted_jobs()?;
    if interrupted > 0 {
        tracing::warn!(interrupted, "jobs interrupted by the last shutdown are marked failed");
    }
    if core.state.unused_passphrases()? == 0 {
        let p = lifeboat_appliance::config_server::new_passphrase(&core.state)?;
        let file = data.join("registration-passphrase");
        write_private(&file, &format!("{p}\n"))?;
        tracing::info!(file = %file.display(), "created a one-time registration passphrase");
    }
    if let Some(token) = lifeboat_appliance::config_server::admin::setup_token(&core.state)? {
        // The console of a fresh appliance: whoever sees it may claim it.
        eprintln!(
            "lifeboat-appliance: first-run setup: the first administrator is created with \
             `lifeboat setup --setup-token {token} …` (the token is also shown by \
             `lifeboat-appliance setup-token`)"
        );
    }
    let url = cfg.config_server.process_server_url.clone().unwrap_or_else(|| {
        let host =
            cfg.config_server.server_names.first().cloned().unwrap_or_else(|| "127.0.0.1".into());
        format!("https://{host}:{}", cfg.process_server.listen.port())
    });
    let downloads = match &cfg.config_server.downloads {
        Some(dir) => {
            let d = lifeboat_appliance::config_server::downloads::Downloads::scan(dir)
                .with_context(|| {
                    format!("config_server.downloads: cannot read {}", dir.display())
                })?;
            tracing::info!(folder = %dir.display(), files = d.files().len(), "serving agent packages at /downloads/");
            Some(Arc::new(d))
        }
        None => None,
    };
    let ctx = Arc::new(ConfigServerCtx {
        downloads,
        state: core.state.clone(),
        admins: lifeboat_appliance::config_server::admin::Admins::new(core.state.clone()),
        failover: cfg.roles.master_target.then(|| {
            lifeboat_appliance::master_target::failover::Failover {
                state: core.state.clone(),
                registry: core.registry.clone(),
                target: cfg.master_target.target.clone(),
            }
        }),
        pki: pki.clone(),
        process_server_url: url,
        data_dir: data.clone(),
        plans: Arc::new(lifeboat_appliance::config_server::plan::Plans::new(
            cfg.plans.scripts.clone(),
        )),
        registry: Some(core.registry.clone()),
        sample_secs: cfg.config_server.sample_secs,
        keys: core.keys.clone(),
        target: if cfg.roles.master_target {
            cfg.master_target.target.clone()
        } else {
            cfg.process_server.target.clone()
        },
    });
    tasks.spawn(lifeboat_appliance::config_server::history::run(
        core.state.clone(),
        std::time::Duration::from_secs(cfg.config_server.sample_secs),
        shutdown.clone(),
    ));
    let tls = pki.config_tls()?;
    let listener =
        tokio::net::TcpListener::bind(cfg.config_server.listen).await.with_context(|| {
            format!("configuration server cannot listen on {}", cfg.config_server.listen)
        })?;
    tracing::info!(url = %format!("https://{}", listener.local_addr()?), ca_fingerprint = %pki.active().fingerprint(), "configuration server listening");
    let sd = shutdown.clone();
    let server = Arc::new(http::ConfigServer::new(ctx));
    tasks.spawn(async move {
        lifeboat_net::server::serve_with(
            listener,
            tls,
            move |req| {
                let server = server.clone();
                async move { server.serve(req).await }
            },
            sd.cancelled_owned(),
            lifeboat_net::server::ServeOptions {
                max_body_bytes: http::CONFIG_SERVER_MAX_BODY,
                // Bodies here are small: 64 KiB per request and 1 MiB per connection
                // are all a client can have buffered before a handler reads them.
                h2_windows: (64 << 10, 1 << 20),
                ..Default::default()
            },
        )
        .await;
    });
    Ok(())
}

/// Starts the process server (9443) and its shipping; the server, for the health figures
/// of its cache.
async fn start_process_server(
    core: &Core,
    pki: &Arc<lifeboat_appliance::config_server::pki::Pki>,
    handoff: Option<Arc<Handoff>>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<ProcessServer> {
    let cfg = &core.config;
    let ps = ProcessServer::start(
        core.state.clone(),
        core.registry.clone(),
        cfg.process_server.clone(),
        &cfg.data_dir.join("cache"),
        shutdown.clone(),
        handoff,
    )?
    .with_keys(core.keys.clone());
    let tls = pki.process_tls()?;
    let listener =
        tokio::net::TcpListener::bind(cfg.process_server.listen).await.with_context(|| {
            format!("process server cannot listen on {}", cfg.process_server.listen)
        })?;
    tracing::info!(url = %format!("https://{}", listener.local_addr()?), "process server listening (mutual TLS)");
    let sd = shutdown.clone();
    let server = Arc::new(http::AgentServer::new(ps.clone(), core.state.clone(), pki.clone()));
    tasks.spawn(async move {
        lifeboat_net::serve(
            listener,
            tls,
            move |req| {
                let server = server.clone();
                async move { server.serve(req).await }
            },
            sd.cancelled_owned(),
        )
        .await;
    });
    Ok(ps)
}

/// Records the health figures for alerts and /metrics every 5 s: CPU, memory, the cache,
/// refused plugins.
fn start_health(
    core: &Core,
    cache_status: Option<ProcessServer>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let state = core.state.clone();
    let registry = core.registry.clone();
    let sd = shutdown.clone();
    tasks.spawn(async move {
        let mut health = lifeboat_appliance::config_server::policy::Health::default();
        loop {
            let refused: Vec<String> =
                registry.current().refused.iter().map(|r| r.to_string()).collect();
            let r = health.sample(&state).and_then(|()| {
                state.set_setting("plugins_refused", &refused.join("; "))?;
                if let Some(ps) = &cache_status {
                    let (used, high, max) = ps.cache_status();
                    state.set_setting("cache_usage_bytes", &used.to_string())?;
                    state.set_setting("cache_high_water_bytes", &high.to_string())?;
                    state.set_setting("cache_max_bytes", &max.to_string())?;
                }
                Ok(())
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "health figures not recorded");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = sd.cancelled() => return,
            }
        }
    });
}

/// Serves until SIGTERM or Ctrl-C (SIGHUP reloads the plugins); a role that stops on its
/// own is an error.
async fn wait_for_signals(
    core: &Core,
    mut tasks: tokio::task::JoinSet<()>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let registry = core.registry.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let set = registry.reload();
                tracing::info!(generation = set.generation, loaded = set.plugins.len(), refused = set.refused.len(), "plugins reloaded on SIGHUP");
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(r) = tasks.join_next() => {
                if let Err(e) = r {
                    anyhow::bail!("a role stopped unexpectedly: {e}");
                }
            }
        }
    }
    Ok(tasks)
}
