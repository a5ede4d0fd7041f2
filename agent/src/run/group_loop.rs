//! The consistency group as `run` sees it: setting it up at start (the peer listener every
//! member runs, the point reporter, and on the coordinator the coordinator), and the cycle
//! thread's part of it, which runs the group's rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

use super::RunError;
use crate::config::GroupConfig;
use crate::cycle::{CycleError, CycleOutcome, Cycler};
use crate::group::{GroupView, PointReporter};
use crate::registration::Registration;

/// Sets the consistency group `g` up: binds the peer listener and serves it on `runtime`
/// until `shutdown`, and on the coordinator makes the coordinator. Who is in the group is
/// the appliance's to say (`view`, kept current by the trust check).
pub(super) fn setup_group(
    g: &GroupConfig,
    registration: &Registration,
    runtime: &Runtime,
    tls: &watch::Receiver<Arc<rustls::ClientConfig>>,
    view: &GroupView,
    mut shutdown: watch::Receiver<bool>,
) -> Result<GroupLoop, RunError> {
    let machine = registration.machine;
    let (round_tx, round_rx) = std::sync::mpsc::channel();
    let peers: Vec<String> = g.members.iter().map(|m| m.machine.clone()).collect();
    let reporter = point_reporter(
        registration.record.process_server_url.clone(),
        tls.clone(),
        runtime.handle().clone(),
    );
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
            view: view.clone(),
            reporter: Some(reporter),
        },
        round_tx,
        async move {
            let _ = shutdown.wait_for(|s| *s).await;
        },
    ));
    drop(listener);
    let coordinator = if g.coordinator {
        Some(coordinator_side(g, registration, runtime, peers, view)?)
    } else {
        tracing::info!(group = %g.name, "consistency group: member; the coordinator starts the group's points");
        None
    };
    Ok(GroupLoop { rounds: round_rx, coordinator, last: None })
}

/// The coordinator of group `g` (this agent and its `peers`), which asks the appliance
/// before each round.
fn coordinator_side(
    g: &GroupConfig,
    registration: &Registration,
    runtime: &Runtime,
    peers: Vec<String>,
    view: &GroupView,
) -> Result<CoordinatorSide, RunError> {
    let machine = registration.machine;
    let members = g.members.iter().map(|m| (m.machine.clone(), m.address)).collect();
    let appliance =
        lifeboat_net::Client::new(&registration.record.process_server_url, registration.tls()?)
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
    let mut all = peers;
    all.push(machine.to_string());
    Ok(CoordinatorSide {
        c: Arc::new(c),
        every: Duration::from_secs(g.interval_secs),
        view: view.clone(),
        group: g.name.clone(),
        me: machine.to_string(),
        members: all,
        refused: None,
    })
}

/// Reports this member's group points to the appliance at `url` (three attempts each).
fn point_reporter(
    url: String,
    tls: watch::Receiver<Arc<rustls::ClientConfig>>,
    handle: Handle,
) -> PointReporter {
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
}

/// The cycle thread's part of a consistency group.
pub(super) struct GroupLoop {
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
    pub(super) fn run_due(&mut self, cycler: &mut Cycler) {
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
            freeze_ms = freeze.map(crate::millis),
            "group round: point {point} cut with the group"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!("group round failed: {e}; nothing was lost"),
    }
}
