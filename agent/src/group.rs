//! Multi-machine consistency groups: agents that cut their points together.
//!
//! One member is the *coordinator* (`group.coordinator = true`); every member listens for
//! its peers on `group.listen` (port 20004 by default) with mutual TLS: each side presents
//! its agent certificate, issued by the appliance CA, and accepts only the machines listed
//! in `group.members` ([`lifeboat_net::tls::peer_client_config`]).
//!
//! # Who is in the group: the appliance says
//!
//! The administrator defines the group on the appliance (`PUT /api/v1/groups/{name}`:
//! members and coordinator); each agent learns it with its trust check
//! ([`lifeboat_api::TrustAnswer::group`], a [`GroupView`] here). The `[group]` table
//! of the agent's configuration only says where the peers listen. A coordinator starts a
//! round, and a member takes part in one, only while the appliance's definition agrees:
//! same name, this coordinator, these members. A peer the appliance revoked is thus
//! dropped from the definition (revoking removes it from its group) and refused, since
//! mutual TLS alone cannot tell a revoked certificate from a good one.
//!
//! Each member (the coordinator too) reports a point it recorded in a round itself
//! (`POST /api/v1/groups/member-points`), and the coordinator records the round
//! (`POST /api/v1/groups/points`); the appliance counts a group point only when both are
//! in, so no machine can make a point of another one a group point.
//!
//! # A round (protocol `group/v1`, JSON over HTTP/2)
//!
//! | step | coordinator → each member | the member | answer |
//! | --- | --- | --- | --- |
//! | 1 | `POST /group/v1/prepare {group, round, deadline_ms}` | pre-copies until little is left, quiesces its applications if an app-consistent point is due | `{next_point}` |
//! | 2 | `POST /group/v1/freeze {group, round, point}` | one more pre-copy pass, prepares, freezes its filesystems, captures | `{}` once captured, still frozen |
//! | 3 | `POST /group/v1/commit {group, round}` | thaws, tags its point `point`, makes it durable | `{}` once recorded |
//! | – | `POST /group/v1/abort {group, round}` | thaws, drops the capture, no point | `{}` |
//!
//! The point number is the largest of the members' next numbers, so it is new on every
//! member. The coordinator runs the same steps itself. It pre-copies and quiesces, sends
//! `prepare` and waits for every answer, then sends `freeze` to all of them. It prepares,
//! waits until every member answered `freeze`, and only then freezes and captures its own
//! filesystems and sends `commit`. So there is an instant at which every member is frozen:
//! each member's point is its disks at that instant, and no write that followed another
//! member's cut can be in a point while the write it depended on is not. Applications are
//! quiesced in the prepare step, so the freeze step is only filesystem work, and the
//! members' holds stay short.
//!
//! A member none of whose filesystems could be frozen (`freeze = false`, raw devices,
//! filesystems without freeze support) refuses the freeze step: nothing would hold its
//! writes, so it cannot share the group's instant.
//!
//! # Failures
//!
//! - A member that does not answer `prepare` or `freeze` within `group.deadline_ms`, or
//!   answers with an error, aborts the round: everyone is told `abort`, and nobody records
//!   the point.
//! - Nobody stays frozen past its own watchdog (twice `max_freeze_ms`): a member waiting
//!   for `commit` gives up and thaws at that deadline. The coordinator is not frozen while
//!   it waits for the members: it freezes only after all of them answered `freeze`.
//! - A member that answered `prepare` waits at most `deadline_ms` + 1 s for `freeze`, and
//!   then goes back to its own cycles.
//! - A group point exists only if every member recorded it. The coordinator reports the
//!   round to the appliance (`POST /api/v1/groups/points`) only after every member answered
//!   `commit`; the appliance lists it as complete only when every member's point with that
//!   number is at the target (`lifeboat-appliance group-points`).
//! - A member that recorded the point while another did not keeps it as its own point,
//!   crash- or app-consistent as cut.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use lifeboat_net::server::{self, ApiError, PeerInfo, RequestBody, ResponseBody};
use lifeboat_net::{Client, Identity};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{Mutex, mpsc};

use crate::cycle::GroupCut;

/// How long the coordinator, and a member's listener, wait for a member to record the point.
const COMMIT_WAIT: Duration = Duration::from_secs(60);

/// Body of `prepare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    /// Group name.
    pub group: String,
    /// Round number (the coordinator's clock in milliseconds).
    pub round: u64,
    /// How long the member may take to pre-copy.
    pub deadline_ms: u64,
}

/// Answer to `prepare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepared {
    /// The member's next point number.
    pub next_point: u64,
}

/// Body of `freeze`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// Group name.
    pub group: String,
    /// Round number.
    pub round: u64,
    /// The agreed point number.
    pub point: u64,
}

/// Body of `commit` and `abort`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRef {
    /// Group name.
    pub group: String,
    /// Round number.
    pub round: u64,
}

/// What the coordinator tells a member's cycle.
#[derive(Debug)]
enum Cmd {
    Freeze(u64),
    Commit,
    Abort,
}

/// What a member's cycle tells the waiting request.
#[derive(Debug)]
enum Reply {
    Prepared(u64),
    Frozen,
    Recorded(u64),
    Failed(String),
}

/// The group as the appliance last defined it for this machine (`None`: in no group).
pub type GroupView = Arc<std::sync::RwLock<Option<lifeboat_api::GroupAssignment>>>;

/// Reports to the appliance that this member recorded a group's point (group, point).
pub type PointReporter = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// Whether the appliance's definition `view` agrees with a round of `group` that
/// `coordinator` runs with `members` (every member, this one included). `Err` says how not.
pub fn agrees(
    view: &GroupView,
    group: &str,
    coordinator: &str,
    members: &[String],
) -> Result<(), String> {
    let v = view.read().unwrap_or_else(|e| e.into_inner());
    let Some(a) = v.as_ref() else {
        return Err(format!(
            "the appliance defines no consistency group for this machine (define {group} with `lifeboat group set`)"
        ));
    };
    let mut want = members.to_vec();
    want.sort();
    want.dedup();
    if a.name != group || a.coordinator != coordinator || a.members != want {
        return Err(format!(
            "the appliance defines group {} with coordinator {} and members {:?}; this round is of {group} by {coordinator} with {want:?}",
            a.name, a.coordinator, a.members
        ));
    }
    Ok(())
}

/// A round as a member's cycle thread runs it (handed over by the peer server).
pub struct MemberRound {
    round: u64,
    deadline: Duration,
    cmds: std_mpsc::Receiver<Cmd>,
    replies: mpsc::UnboundedSender<Reply>,
    group: String,
    reporter: Option<PointReporter>,
}

impl std::fmt::Debug for MemberRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberRound").field("round", &self.round).finish()
    }
}

impl MemberRound {
    fn wait(&self, limit: Duration) -> Result<Cmd, String> {
        match self.cmds.recv_timeout(limit) {
            Ok(c) => Ok(c),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("the coordinator sent nothing within {} ms", limit.as_millis()))
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err("the coordinator started another round or stopped".into())
            }
        }
    }
}

impl GroupCut for MemberRound {
    fn ready(&mut self, next_point: u64) -> Result<u64, String> {
        let _ = self.replies.send(Reply::Prepared(next_point));
        // The coordinator collects every member's answer (within its deadline), then sends
        // the point at once: waiting longer only holds a round it has given up on.
        match self.wait(self.deadline + Duration::from_secs(1))? {
            Cmd::Freeze(p) if p >= next_point => Ok(p),
            Cmd::Freeze(p) => {
                Err(format!("the group's point {p} is below this member's {next_point}"))
            }
            Cmd::Commit => Err("commit before freeze".into()),
            Cmd::Abort => Err("the coordinator aborted the round".into()),
        }
    }

    fn before_freeze(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn frozen(&mut self, limit: Duration) -> Result<(), String> {
        let _ = self.replies.send(Reply::Frozen);
        match self.wait(limit)? {
            Cmd::Commit => Ok(()),
            Cmd::Abort => Err("the coordinator aborted the round".into()),
            Cmd::Freeze(_) => Err("a second freeze in one round".into()),
        }
    }

    fn done(&mut self, result: Result<u64, String>) {
        match &result {
            Ok(p) => {
                tracing::info!(round = self.round, point = p, "group round: point recorded");
                if let Some(report) = &self.reporter {
                    report(&self.group, *p);
                }
            }
            Err(e) => {
                tracing::warn!(round = self.round, "group round abandoned on this member: {e}")
            }
        }
        let _ = self.replies.send(match result {
            Ok(p) => Reply::Recorded(p),
            Err(e) => Reply::Failed(e),
        });
    }
}

/// The round a member is in, as the peer server sees it.
struct Active {
    round: u64,
    cmds: std_mpsc::Sender<Cmd>,
    replies: mpsc::UnboundedReceiver<Reply>,
}

/// The member side's shared state.
struct Member {
    group: String,
    me: String,
    peers: Vec<String>,
    view: GroupView,
    reporter: Option<PointReporter>,
    to_cycle: std_mpsc::Sender<MemberRound>,
    active: Mutex<Option<Active>>,
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

async fn next_reply(a: &mut Active, limit: Duration) -> Result<Reply, ApiError> {
    match tokio::time::timeout(limit, a.replies.recv()).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(conflict("round-ended", "this member's cycle left the round")),
        Err(_) => Err(conflict(
            "timeout",
            format!("this member did not reach the step within {} ms", limit.as_millis()),
        )),
    }
}

async fn handle(
    m: Arc<Member>,
    req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ApiError> {
    let caller = req.extensions().get::<PeerInfo>().and_then(|p| p.machine_id.clone());
    if !caller.as_ref().is_some_and(|c| m.peers.contains(c)) {
        return Err(ApiError::forbidden(
            "forbidden",
            format!(
                "machine {} is not a member of group {}",
                caller.as_deref().unwrap_or("?"),
                m.group
            ),
        ));
    }
    let path = req.uri().path().to_owned();
    if req.method() != Method::POST {
        return Err(ApiError::not_found("not-found", format!("no {} {path}", req.method())));
    }
    let check_group = |g: &str| {
        if g == m.group {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                "wrong-group",
                format!("group: this member is in group {:?}, not {g:?}", m.group),
            ))
        }
    };
    match path.as_str() {
        "/group/v1/prepare" => {
            let p: Prepare = server::read_json(req.into_body()).await?;
            check_group(&p.group)?;
            if p.deadline_ms == 0 || p.deadline_ms > 600_000 {
                return Err(ApiError::bad_request(
                    "invalid-deadline",
                    "deadline_ms: expected 1 to 600000 milliseconds",
                ));
            }
            // The appliance's definition decides: the caller must be its coordinator, and
            // this machine one of its members.
            let members = m.view.read().unwrap_or_else(|e| e.into_inner()).clone();
            let caller = caller.clone().unwrap_or_default();
            match members {
                Some(a)
                    if a.name == m.group
                        && a.coordinator == caller
                        && a.members.contains(&m.me) => {}
                _ => {
                    return Err(ApiError::forbidden(
                        "not-in-group",
                        format!(
                            "the appliance does not define group {} with coordinator {caller} and this machine as a member",
                            m.group
                        ),
                    ));
                }
            }
            let deadline = Duration::from_millis(p.deadline_ms);
            let mut active = m.active.lock().await;
            // A new round replaces an old one: dropping its sender ends it.
            let (cmd_tx, cmd_rx) = std_mpsc::channel();
            let (rep_tx, rep_rx) = mpsc::unbounded_channel();
            let a = active.insert(Active { round: p.round, cmds: cmd_tx, replies: rep_rx });
            let round = MemberRound {
                round: p.round,
                deadline,
                cmds: cmd_rx,
                replies: rep_tx,
                group: m.group.clone(),
                reporter: m.reporter.clone(),
            };
            if m.to_cycle.send(round).is_err() {
                return Err(ApiError::internal("the agent is stopping"));
            }
            let r = match next_reply(a, deadline).await {
                Ok(Reply::Prepared(n)) => {
                    return server::json(StatusCode::OK, &Prepared { next_point: n });
                }
                Ok(Reply::Failed(e)) => Err(conflict("failed", e)),
                Ok(other) => Err(ApiError::internal(format!("unexpected {other:?}"))),
                Err(e) => Err(e),
            };
            // The round is off: dropping its sender lets the cycle (now or when it gets to
            // the round) leave it at once instead of waiting for a freeze.
            *active = None;
            r
        }
        "/group/v1/freeze" => {
            let f: Freeze = server::read_json(req.into_body()).await?;
            check_group(&f.group)?;
            let mut active = m.active.lock().await;
            let a = match active.as_mut() {
                Some(a) if a.round == f.round => a,
                _ => {
                    return Err(conflict(
                        "unknown-round",
                        format!("round {} is not open here", f.round),
                    ));
                }
            };
            if a.cmds.send(Cmd::Freeze(f.point)).is_err() {
                return Err(conflict("round-ended", "this member's cycle left the round"));
            }
            // Quiescing and capturing: bounded by the member's own quiesce deadline and
            // watchdog; the coordinator stops waiting at its deadline anyway.
            let r = match next_reply(a, Duration::from_secs(660)).await {
                Ok(Reply::Frozen) => {
                    return server::json(StatusCode::OK, &serde_json::json!({}));
                }
                Ok(Reply::Failed(e)) => Err(conflict("failed", e)),
                Ok(other) => Err(ApiError::internal(format!("unexpected {other:?}"))),
                Err(e) => Err(e),
            };
            *active = None;
            r
        }
        "/group/v1/commit" | "/group/v1/abort" => {
            let commit = path.ends_with("commit");
            let r: RoundRef = server::read_json(req.into_body()).await?;
            check_group(&r.group)?;
            let mut active = m.active.lock().await;
            let a = match active.as_mut() {
                Some(a) if a.round == r.round => a,
                _ if !commit => return server::json(StatusCode::OK, &serde_json::json!({})),
                _ => {
                    return Err(conflict(
                        "unknown-round",
                        format!("round {} is not open here", r.round),
                    ));
                }
            };
            let _ = a.cmds.send(if commit { Cmd::Commit } else { Cmd::Abort });
            let reply = next_reply(a, COMMIT_WAIT).await;
            *active = None;
            match (commit, reply?) {
                (true, Reply::Recorded(p)) => {
                    server::json(StatusCode::OK, &serde_json::json!({"point": p}))
                }
                (true, Reply::Failed(e)) => Err(conflict("failed", e)),
                (false, _) => server::json(StatusCode::OK, &serde_json::json!({})),
                (true, other) => Err(ApiError::internal(format!("unexpected {other:?}"))),
            }
        }
        _ => Err(ApiError::not_found("not-found", format!("no {path}"))),
    }
}

/// What a member's peer server needs besides its listener and identity.
pub struct MemberSetup {
    /// The group's name (from the configuration).
    pub group: String,
    /// This machine's id.
    pub me: String,
    /// The peers allowed to connect (from the configuration).
    pub peers: Vec<String>,
    /// The appliance's definition of the group.
    pub view: GroupView,
    /// Reports recorded points to the appliance.
    pub reporter: Option<PointReporter>,
}

/// Serves the member side on `listener` until `shutdown`; rounds go to `to_cycle`.
pub async fn serve_member(
    listener: tokio::net::TcpListener,
    identity: Identity,
    ca_pem: String,
    setup: MemberSetup,
    to_cycle: std_mpsc::Sender<MemberRound>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let MemberSetup { group, me, peers, view, reporter } = setup;
    let tls =
        lifeboat_net::tls::server_config(&identity, lifeboat_net::ClientAuth::Required { ca_pem })
            .map_err(|e| {
                tracing::error!("consistency group: cannot serve the peers: {e}");
                e.to_string()
            })?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%listen, %group, "consistency group: listening for the group's peers (mutual TLS)");
    let m =
        Arc::new(Member { group, me, peers, view, reporter, to_cycle, active: Mutex::new(None) });
    let handler = move |req| handle(m.clone(), req);
    server::serve(listener, tls, handler, shutdown).await;
    Ok(())
}

/// One member as the coordinator reaches it.
struct Peer {
    machine: String,
    client: Client,
}

/// The coordinator's side of rounds.
pub struct Coordinator {
    group: String,
    peers: Vec<Peer>,
    me: String,
    appliance: Client,
    runtime: Handle,
    deadline: Duration,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("group", &self.group).finish()
    }
}

/// The result of a request to a member: its JSON answer, or why not.
type PeerAnswer = Result<serde_json::Value, String>;

async fn call(client: &Client, path: &str, body: &impl Serialize, limit: Duration) -> PeerAnswer {
    match tokio::time::timeout(limit, client.post_json(path, body, HeaderMap::new())).await {
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((status, _, body))) if status.is_success() => {
            serde_json::from_slice(&body).map_err(|e| format!("malformed answer: {e}"))
        }
        Ok(Ok((status, _, body))) => Err(format!(
            "HTTP {status}: {}",
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())
        )),
    }
}

impl Coordinator {
    /// A coordinator for `group`, reaching `members` (machine id → address) with this
    /// agent's `identity`, and the appliance through `appliance`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        group: String,
        me: String,
        members: &BTreeMap<String, SocketAddr>,
        identity: &Identity,
        ca_pem: &str,
        appliance: Client,
        runtime: Handle,
        deadline: Duration,
    ) -> Result<Coordinator, String> {
        let mut peers = Vec::new();
        for (machine, addr) in members {
            let tls = lifeboat_net::tls::peer_client_config(ca_pem, identity, machine)
                .map_err(|e| e.to_string())?;
            let client = Client::new(&format!("https://{addr}"), tls).map_err(|e| e.to_string())?;
            peers.push(Peer { machine: machine.clone(), client });
        }
        Ok(Coordinator { group, peers, me, appliance, runtime, deadline })
    }

    /// Starts a round: the [`GroupCut`] the coordinator's own cycle runs.
    pub fn round(self: &Arc<Self>) -> CoordinatorRound {
        let round = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(crate::millis)
            .unwrap_or(0);
        CoordinatorRound {
            c: self.clone(),
            round,
            point: None,
            freezes: Vec::new(),
            commits: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Sends `body` to `path` on every member at once; the answers come from [`Self::join`].
    fn spawn_all<B: Serialize + Clone + Send + Sync + 'static>(
        &self,
        path: &'static str,
        body: &B,
        limit: Duration,
    ) -> Vec<tokio::task::JoinHandle<PeerAnswer>> {
        self.peers
            .iter()
            .map(|p| {
                let (client, body) = (p.client.clone(), body.clone());
                self.runtime.spawn(async move { call(&client, path, &body, limit).await })
            })
            .collect()
    }

    /// Waits for requests started by [`Self::spawn_all`], in member order.
    fn join(&self, handles: Vec<tokio::task::JoinHandle<PeerAnswer>>) -> Vec<PeerAnswer> {
        self.runtime.block_on(async {
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await.unwrap_or_else(|e| Err(format!("request task failed: {e}"))));
            }
            out
        })
    }

    fn abort_all(&self, round: u64) {
        let r = RoundRef { group: self.group.clone(), round };
        let handles = self.spawn_all("/group/v1/abort", &r, Duration::from_secs(5));
        let _ = self.join(handles);
    }
}

/// One round as the coordinator's cycle runs it.
pub struct CoordinatorRound {
    c: Arc<Coordinator>,
    round: u64,
    point: Option<u64>,
    freezes: Vec<tokio::task::JoinHandle<PeerAnswer>>,
    commits: Vec<tokio::task::JoinHandle<PeerAnswer>>,
    started: Instant,
}

impl std::fmt::Debug for CoordinatorRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorRound").field("round", &self.round).finish()
    }
}

impl GroupCut for CoordinatorRound {
    fn ready(&mut self, next_point: u64) -> Result<u64, String> {
        let c = self.c.clone();
        let body = Prepare {
            group: c.group.clone(),
            round: self.round,
            deadline_ms: crate::millis(c.deadline),
        };
        let answers = c.join(c.spawn_all("/group/v1/prepare", &body, c.deadline));
        let mut point = next_point;
        for (p, a) in c.peers.iter().zip(answers) {
            match a.and_then(|v| v["next_point"].as_u64().ok_or_else(|| "no next_point".into())) {
                Ok(n) => point = point.max(n),
                Err(e) => {
                    c.abort_all(self.round);
                    return Err(format!("member {} did not prepare: {e}", p.machine));
                }
            }
        }
        self.point = Some(point);
        // Members quiesce, freeze and capture while this machine quiesces and prepares.
        let body = Freeze { group: c.group.clone(), round: self.round, point };
        self.freezes = c.spawn_all("/group/v1/freeze", &body, c.deadline);
        Ok(point)
    }

    fn before_freeze(&mut self) -> Result<(), String> {
        let c = self.c.clone();
        let answers = c.join(std::mem::take(&mut self.freezes));
        for (p, a) in c.peers.iter().zip(answers) {
            if let Err(e) = a {
                c.abort_all(self.round);
                return Err(format!("member {} did not freeze: {e}", p.machine));
            }
        }
        Ok(())
    }

    fn frozen(&mut self, _limit: Duration) -> Result<(), String> {
        // Every member is frozen, and so is this machine: the group's instant. The members
        // thaw and record while this machine does.
        let r = RoundRef { group: self.c.group.clone(), round: self.round };
        // Recording can wait on a busy journal: give it as long as the members do.
        self.commits = self.c.spawn_all("/group/v1/commit", &r, COMMIT_WAIT);
        Ok(())
    }

    fn done(&mut self, result: Result<u64, String>) {
        let c = self.c.clone();
        let commits = std::mem::take(&mut self.commits);
        let point = match result {
            Ok(p) => p,
            Err(e) => {
                for h in self.freezes.drain(..) {
                    h.abort();
                }
                if commits.is_empty() && self.point.is_some() {
                    c.abort_all(self.round);
                }
                let _ = c.join(commits);
                tracing::warn!(group = %c.group, round = self.round, "group round aborted: {e}");
                return;
            }
        };
        let mut missing = Vec::new();
        for (p, a) in c.peers.iter().zip(c.join(commits)) {
            match a {
                Ok(v) if v["point"].as_u64() == Some(point) => {}
                Ok(v) => missing.push(format!("{} (recorded {})", p.machine, v["point"])),
                Err(e) => missing.push(format!("{} ({e})", p.machine)),
            }
        }
        if !missing.is_empty() {
            tracing::warn!(
                group = %c.group,
                point,
                "point {point} is not a group point: not recorded by {}",
                missing.join(", ")
            );
            return;
        }
        let mut members: Vec<String> = c.peers.iter().map(|p| p.machine.clone()).collect();
        members.push(c.me.clone());
        // The coordinator is a member too: it reports its own point like the others.
        let mine = lifeboat_api::MemberPoint { group: c.group.clone(), point };
        if let Err(e) = c.runtime.block_on(call(
            &c.appliance,
            "/api/v1/groups/member-points",
            &mine,
            Duration::from_secs(30),
        )) {
            tracing::warn!(group = %c.group, point, "cannot report this member's group point: {e}");
        }
        let body = lifeboat_api::GroupPoint { group: c.group.clone(), point, members };
        // Every member recorded the point: the record is worth a few tries.
        let mut posted = Err(String::new());
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
            posted = c.runtime.block_on(call(
                &c.appliance,
                "/api/v1/groups/points",
                &body,
                Duration::from_secs(30),
            ));
            if posted.is_ok() {
                break;
            }
        }
        match posted {
            Ok(_) => tracing::info!(
                group = %c.group,
                point,
                members = c.peers.len() + 1,
                ms = crate::millis(self.started.elapsed()),
                "group point {point} recorded by every member"
            ),
            Err(e) => tracing::warn!(
                group = %c.group,
                point,
                "the appliance did not record group point {point}: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
