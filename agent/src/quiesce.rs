//! App-consistent points: quiescer plugins run inside the agent around the cut.
//!
//! The agent loads the quiescer plugins named in `[quiesce] plugins` from its `[plugins]`
//! directory (the same loader, trust rules and grants as the appliance's plugins; see
//! docs/plugins.md) and keeps one live instance of each. When an app-consistent point is
//! due (`[quiesce] interval_secs` since the last one), a cut runs:
//!
//! 1. `prepare` on every quiescer (connect, check permissions; nothing frozen yet),
//! 2. `freeze(deadline_ms)` on every quiescer, in the configured order,
//! 3. the agent's own cut: one more pre-copy pass, the filesystem freeze, the capture, the
//!    thaw (see [`crate::cycle`]),
//! 4. `thaw` on every quiescer whose freeze was called, in reverse order.
//!
//! Every call has a deadline: `freeze` gets `deadline_ms` and must return within it (plus a
//! grace of [`GRACE`] for the call itself); `prepare` and `thaw` get the same. A quiescer
//! that fails or passes its deadline makes the point crash-consistent instead (tagged
//! `crash`, never `app`) and raises an alert (an `alert = "quiesce-failed"` error event in
//! the agent's log); the ones already frozen are thawed at once, and the application is
//! never left frozen: a call that passes even the grace is abandoned and its instance
//! dropped, which closes whatever the plugin held (a database session ends its backup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_plugin_host::registry::Registry;
use lifeboat_plugin_host::{CallError, QuiescerInstance};
use tokio::runtime::Handle;

/// Time a call may take beyond the deadline given to the plugin, before the agent abandons
/// it.
pub const GRACE: Duration = Duration::from_secs(2);

/// What [`Quiescers::freeze`] reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quiesced {
    /// Every quiescer froze: the point is app-consistent.
    App,
    /// No app-consistent point is due (interval not elapsed) or none is configured.
    NotDue,
    /// A quiescer failed; the point is crash-consistent. The message names it and why.
    Failed(String),
}

struct Slot {
    name: String,
    instance: Option<QuiescerInstance>,
    /// `freeze` was called and `thaw` not yet.
    frozen: bool,
}

/// The agent's quiescers; see the module documentation.
pub struct Quiescers {
    registry: Arc<Registry>,
    runtime: Handle,
    slots: Vec<Slot>,
    deadline: Duration,
    /// Seconds between app-consistent points; shared so the machine's policy can change it.
    interval: Arc<std::sync::atomic::AtomicU64>,
    last_app: Option<Instant>,
    /// Alerts raised so far (quiesce failures), for tests and the cycle report.
    pub alerts: u64,
}

impl std::fmt::Debug for Quiescers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quiescers")
            .field("plugins", &self.slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
            .field("deadline", &self.deadline)
            .field("interval", &self.interval)
            .finish()
    }
}

impl Quiescers {
    /// Instantiates every quiescer in `names` (in that order) from `registry`; an unknown or
    /// refused plugin, or one that is not a quiescer, is an error naming it.
    pub fn new(
        registry: Arc<Registry>,
        runtime: Handle,
        names: &[String],
        deadline: Duration,
        interval: Duration,
    ) -> Result<Quiescers, String> {
        let set = registry.current();
        let mut slots = Vec::with_capacity(names.len());
        for name in names {
            let Some(plugin) = set.plugins.get(name) else {
                let why = set
                    .refused
                    .iter()
                    .find(|r| r.to_string().contains(name.as_str()))
                    .map(|r| format!(": it was refused: {r}"))
                    .unwrap_or_else(|| " in the plugins directory".into());
                return Err(format!("quiesce.plugins names {name:?}, which is not loaded{why}"));
            };
            let instance = runtime
                .block_on(QuiescerInstance::new(plugin.clone()))
                .map_err(|e| format!("quiesce.plugins: {name:?}: {e}"))?;
            slots.push(Slot { name: name.clone(), instance: Some(instance), frozen: false });
        }
        let interval = Arc::new(std::sync::atomic::AtomicU64::new(interval.as_secs()));
        Ok(Quiescers { registry, runtime, slots, deadline, interval, last_app: None, alerts: 0 })
    }

    /// Whether an app-consistent point is due now.
    pub fn due(&self) -> bool {
        let interval =
            Duration::from_secs(self.interval.load(std::sync::atomic::Ordering::Relaxed));
        !self.slots.is_empty() && self.last_app.is_none_or(|t| t.elapsed() >= interval)
    }

    /// The seconds between app-consistent points, shared: storing into it changes them.
    pub fn interval_handle(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.interval.clone()
    }

    /// Runs one call on slot `i` with the deadline plus [`GRACE`]; a call that passes it is
    /// abandoned and the instance dropped (rebuilt at the next cut).
    fn call<F>(&mut self, i: usize, what: &str, f: F) -> Result<(), String>
    where
        F: for<'a> FnOnce(
            &'a mut QuiescerInstance,
            u32,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), CallError>> + Send + 'a>,
        >,
    {
        let deadline_ms = u32::try_from(self.deadline.as_millis()).unwrap_or(u32::MAX);
        let limit = self.deadline + GRACE;
        let name = self.slots[i].name.clone();
        let inst = match self.slots[i].instance.take() {
            Some(inst) => inst,
            None => {
                let set = self.registry.current();
                let plugin = set
                    .plugins
                    .get(&name)
                    .ok_or_else(|| format!("quiescer {name} is no longer loaded"))?
                    .clone();
                self.runtime
                    .block_on(QuiescerInstance::new(plugin))
                    .map_err(|e| format!("quiescer {name}: {e}"))?
            }
        };
        let inst = self.slots[i].instance.insert(inst);
        let started = Instant::now();
        let r = self
            .runtime
            .block_on(async { tokio::time::timeout(limit, f(inst, deadline_ms)).await });
        tracing::debug!(quiescer = %name, call = what, ms = crate::millis(started.elapsed()), "quiescer call");
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("quiescer {name}: {what}: {e}")),
            Err(_) => {
                // Dropping the instance closes what it held (sockets, sessions).
                self.slots[i].instance = None;
                self.slots[i].frozen = false;
                Err(format!(
                    "quiescer {name}: {what} did not return within {} ms; the call was abandoned and the plugin instance dropped",
                    limit.as_millis()
                ))
            }
        }
    }

    /// Prepares and freezes every quiescer, if an app-consistent point is due. On a
    /// failure, the quiescers already frozen are thawed before this returns.
    pub fn freeze(&mut self) -> Quiesced {
        if !self.due() {
            return Quiesced::NotDue;
        }
        for i in 0..self.slots.len() {
            if let Err(e) = self.call(i, "prepare", |q, _| Box::pin(q.prepare())) {
                return self.fail(e);
            }
        }
        for i in 0..self.slots.len() {
            self.slots[i].frozen = true;
            if let Err(e) = self.call(i, "freeze", |q, d| Box::pin(q.freeze(d))) {
                return self.fail(e);
            }
        }
        Quiesced::App
    }

    fn fail(&mut self, e: String) -> Quiesced {
        self.alerts += 1;
        tracing::error!(
            alert = "quiesce-failed",
            "app-consistent point failed: {e}; cutting a crash-consistent point instead"
        );
        self.thaw();
        // Try again at the next cut rather than after a whole interval.
        Quiesced::Failed(e)
    }

    /// Thaws every quiescer whose freeze was called, in reverse order; records the time of
    /// the app-consistent point when `app` is true.
    pub fn thaw_after(&mut self, app: bool) {
        self.thaw();
        if app {
            self.last_app = Some(Instant::now());
        }
    }

    fn thaw(&mut self) {
        for i in (0..self.slots.len()).rev() {
            if !self.slots[i].frozen {
                continue;
            }
            self.slots[i].frozen = false;
            if let Err(e) = self.call(i, "thaw", |q, _| Box::pin(q.thaw())) {
                self.alerts += 1;
                tracing::error!(alert = "thaw-failed", "{e}");
            }
        }
    }
}
