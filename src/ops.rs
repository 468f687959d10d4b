//! Operations executed on the leader: linearizable reads of the replicated
//! state, writes through Raft, and the join handshake's decisions.
//!
//! Every user-supplied field is validated here, at the edge, with an error
//! that names the field and what is allowed; apply() then only guards the
//! state's own invariants.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_cli::api::{
    DeployView, MemberView, NodeUpdate, NodeView, QuorumView, RemovedServiceView, RemovedView,
    ServiceInspectView, ServiceUpdateRequest, StatusView, TokenView,
};
use shoal_net::pki::{self, ClusterCa};
use shoal_net::token::{self, JoinToken};
use shoal_raft::{
    Availability, ClusterState, Command, NewNode, NodeId, NodeRecord, NodeStatus, RequestId,
    Response, Role,
};

use crate::node::{managers_of, now_ms, Node};
use crate::services;
use crate::wire::{JoinAccepted, JoinRequest, LeaderOp, LeaderReply, OpError, OpErrorKind};

/// The Raft group keeps at most this many voters.
pub const MAX_MANAGERS: usize = 7;

/// How long promote/demote wait for the membership change to take effect.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(30);

/// Executes `op` on the leader. A change comes with the `request` id the
/// node that received it gave it; the same id on every attempt makes
/// apply() run the change once. A repeated attempt whose predecessor was
/// applied answers as the first would have: checks that the change itself
/// makes fail (the service it removed is gone) are skipped for it
/// ([`already_applied`]).
pub async fn execute(
    node: &Arc<Node>,
    op: LeaderOp,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    match op {
        LeaderOp::Nodes => {
            node.linearizable().await?;
            let leader = Some(node.id);
            let voters = node.voters();
            let views = node.state.read(|s| {
                s.nodes
                    .values()
                    .map(|n| node_view(n, leader, &voters))
                    .collect()
            });
            Ok(LeaderReply::Nodes(views))
        }
        LeaderOp::Node(name) => {
            node.linearizable().await?;
            Ok(LeaderReply::Node(view_of(node, &name)?))
        }
        LeaderOp::UpdateNode(name, update) => update_node(node, &name, update, request).await,
        LeaderOp::Promote(name) => set_role(node, &name, Role::Manager, request).await,
        LeaderOp::Demote(name) => set_role(node, &name, Role::Worker, request).await,
        LeaderOp::RemoveNode { node: name, force } => {
            remove_node(node, &name, force, request).await
        }
        LeaderOp::Status => {
            node.linearizable().await?;
            Ok(LeaderReply::Status(status_view(node)))
        }
        LeaderOp::Token(role) => {
            node.linearizable().await?;
            Ok(LeaderReply::Token(token_view(node, role)?))
        }
        LeaderOp::RotateToken(role) => {
            let (ca_key, generation) = node.state.read(|s| {
                (
                    s.ca.as_ref().map(|ca| ca.key_pem.clone()),
                    s.tokens.get(&role).map(|t| t.generation),
                )
            });
            let (Some(ca_key), Some(generation)) = (ca_key, generation) else {
                return Err(OpError::internal("the cluster has no CA or tokens yet"));
            };
            let secret =
                token::derive_secret(ca_key.as_bytes(), &token_label(role, generation + 1));
            node.write_request(
                request,
                Command::RotateToken {
                    role,
                    secret_hash: token::hash_secret(&secret),
                    now_ms: now_ms(),
                },
            )
            .await?;
            Ok(LeaderReply::Token(token_view(node, role)?))
        }
        LeaderOp::Join(req) => join(node, req, request).await,
        LeaderOp::Noop => {
            node.write(Command::Noop { now_ms: now_ms() }).await?;
            Ok(LeaderReply::Done)
        }
        LeaderOp::BenchCommit { writers, count } => bench_commit(node, writers, count).await,
        LeaderOp::Deploy(doc) => deploy(node, doc, request).await,
        LeaderOp::Services => {
            node.linearizable().await?;
            Ok(LeaderReply::Services(node.state.read(|s| {
                let running = services::running_counts(s);
                s.services
                    .values()
                    .map(|svc| {
                        let count = running.get(svc.spec.name.as_str()).copied();
                        services::service_view_counted(s, svc, count.unwrap_or(0))
                    })
                    .collect()
            })))
        }
        LeaderOp::Service(name) => {
            node.linearizable().await?;
            let now = now_ms();
            node.state.read(|s| {
                let svc = find_service(s, &name)?;
                Ok(LeaderReply::ServiceInspect(ServiceInspectView {
                    spec: services::doc_from_spec(&svc.spec),
                    version: svc.version,
                    created_at_ms: svc.created_at_ms,
                    updated_at_ms: svc.updated_at_ms,
                    replicas_running: services::running_count(s, &name),
                    replicas_desired: s.desired_task_count(svc),
                    update: services::update_status_view(s, svc, now),
                    previous_spec: svc.previous_spec.as_deref().map(services::doc_from_spec),
                }))
            })
        }
        LeaderOp::UpdateService { name, update } => {
            update_service(node, &name, update, request).await
        }
        LeaderOp::RollbackService(name) => rollback_service(node, &name, request).await,
        LeaderOp::PlanService(doc) => crate::stacks::plan_service(node, doc).await,
        LeaderOp::DeployStack {
            stack,
            request: deploy,
        } => crate::stacks::deploy_stack(node, stack, deploy, request).await,
        LeaderOp::Stacks => crate::stacks::stacks(node).await,
        LeaderOp::StackServices(stack) => crate::stacks::stack_services(node, stack).await,
        LeaderOp::StackTasks(stack) => crate::stacks::stack_tasks(node, stack).await,
        LeaderOp::RemoveStack(stack) => crate::stacks::remove_stack(node, stack, request).await,
        LeaderOp::Tasks(name) => {
            node.linearizable().await?;
            node.state.read(|s| {
                let tasks = services::task_views(s, &name);
                // A removed service's tasks stay listed until they are gone.
                if tasks.is_empty() {
                    find_service(s, &name)?;
                }
                Ok(LeaderReply::Tasks(tasks))
            })
        }
        LeaderOp::Scale { name, replicas } => {
            if replicas > shoal_cli::api::MAX_REPLICAS {
                return Err(OpError::bad_request(format!(
                    "replicas: {replicas} is too many; allowed: 0 to {}",
                    shoal_cli::api::MAX_REPLICAS
                )));
            }
            node.state.read(|s| {
                let svc = find_service(s, &name)?;
                if svc.spec.is_global() {
                    return Err(OpError::bad_request(format!(
                        "service {name} is global (one task per node) and cannot be scaled"
                    )));
                }
                Ok(())
            })?;
            let _writes = node.service_writes.lock().await;
            node.write_request(
                request,
                Command::ScaleService {
                    name: name.clone(),
                    replicas,
                    now_ms: now_ms(),
                },
            )
            .await?;
            Ok(LeaderReply::Service(node.state.read(|s| {
                let svc = s.services.get(&name).expect("scaled service exists");
                services::service_view(s, svc)
            })))
        }
        LeaderOp::RemoveService(name) => {
            node.state.read(|s| {
                if already_applied(s, request) {
                    return Ok(());
                }
                find_service(s, &name).map(|_| ())
            })?;
            node.write_request(
                request,
                Command::RemoveService {
                    name: name.clone(),
                    now_ms: now_ms(),
                },
            )
            .await?;
            Ok(LeaderReply::ServiceRemoved(RemovedServiceView { name }))
        }
    }
}

/// Whether an earlier attempt at `request` was applied (its answer was
/// lost): then the state already holds the change, and a check that the
/// change makes fail must let the attempt through to apply(), which answers
/// with the first outcome. Read together with that check, in one
/// `state.read`, so no apply falls between them.
pub fn already_applied(state: &ClusterState, request: Option<RequestId>) -> bool {
    request.is_some_and(|id| state.requests.outcome(id).is_some())
}

fn find_service<'a>(
    state: &'a ClusterState,
    name: &str,
) -> Result<&'a shoal_raft::Service, OpError> {
    state.services.get(name).ok_or_else(|| {
        OpError::not_found(format!(
            "no service named {name:?} (see `shoal service ls`)"
        ))
    })
}

async fn deploy(
    node: &Arc<Node>,
    doc: shoal_cli::api::ServiceSpecDoc,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    let mut spec = services::spec_from_doc(&doc)?;
    let _writes = node.service_writes.lock().await;
    let existing = node.state.read(|s| {
        services::check_fits_somewhere(s, &spec)?;
        Ok::<_, OpError>(s.services.get(&spec.name).map(|svc| svc.spec.clone()))
    })?;
    match existing {
        None => {
            let name = spec.name.clone();
            node.write_request(
                request,
                Command::CreateService {
                    spec,
                    now_ms: now_ms(),
                },
            )
            .await?;
            deployed(node, &name, true, true, false)
        }
        Some(old) => {
            // A document without force_update keeps the service's value, so
            // restating a spec never redeploys by accident.
            if doc.force_update.is_none() {
                spec.force_update = old.force_update;
            }
            // Stack membership changes only through stack commands.
            spec.stack = old.stack.clone();
            store_spec(node, &old, spec, request).await
        }
    }
}

/// Writes `spec` over `old` (unless they are equal) and answers with the
/// service and the update run the write started, if any.
async fn store_spec(
    node: &Arc<Node>,
    old: &shoal_raft::ServiceSpec,
    spec: shoal_raft::ServiceSpec,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    let name = spec.name.clone();
    if *old == spec {
        // Equal because an earlier attempt at this request stored it: answer
        // as that attempt would have (with the update run it started, if any).
        let replay = node.state.read(|s| already_applied(s, request));
        return deployed(node, &name, false, replay, replay);
    }
    let started = !old.same_template(&spec);
    node.write_request(
        request,
        Command::UpdateService {
            spec,
            now_ms: now_ms(),
        },
    )
    .await?;
    deployed(node, &name, false, true, started)
}

/// The answer to a deploy, update or rollback of `name`; `started`: the write
/// started an update run, which the answer then carries.
fn deployed(
    node: &Arc<Node>,
    name: &str,
    created: bool,
    changed: bool,
    started: bool,
) -> Result<LeaderReply, OpError> {
    let now = now_ms();
    node.state.read(|s| {
        let svc = find_service(s, name)?;
        Ok(LeaderReply::Deployed(DeployView {
            service: services::service_view(s, svc),
            created,
            changed,
            update: if started {
                services::update_status_view(s, svc, now)
            } else {
                None
            },
        }))
    })
}

/// `service update`: the changes are laid over the current spec as the
/// leader's linearizable state holds it, and the result is stored like a deploy.
async fn update_service(
    node: &Arc<Node>,
    name: &str,
    update: ServiceUpdateRequest,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    update
        .validate()
        .map_err(|e| OpError::bad_request(e.to_string()))?;
    let _writes = node.service_writes.lock().await;
    node.linearizable().await?;
    let old = node
        .state
        .read(|s| find_service(s, name).map(|svc| svc.spec.clone()))?;
    let mut doc = services::doc_from_spec(&old);
    update.apply_to(&mut doc);
    let mut spec = services::spec_from_doc(&doc)?;
    spec.stack = old.stack.clone();
    node.state
        .read(|s| services::check_fits_somewhere(s, &spec))?;
    store_spec(node, &old, spec, request).await
}

/// `service rollback`: the model refuses (with a sentence) when there is no
/// previous spec.
async fn rollback_service(
    node: &Arc<Node>,
    name: &str,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    let _writes = node.service_writes.lock().await;
    node.linearizable().await?;
    node.state.read(|s| find_service(s, name).map(|_| ()))?;
    node.write_request(
        request,
        Command::RollbackService {
            name: name.to_owned(),
            now_ms: now_ms(),
        },
    )
    .await?;
    deployed(node, name, false, true, true)
}

/// An agent's batch of task state changes, committed as one command. Only
/// tasks assigned to the reporting node are touched (apply() checks).
pub async fn report_tasks(
    node: &Arc<Node>,
    peer: NodeId,
    report: crate::wire::TaskReport,
) -> Result<(), OpError> {
    if report.node_id != peer {
        return Err(OpError::new(
            OpErrorKind::Forbidden,
            format!(
                "a report for node {} arrived from node {peer}",
                report.node_id
            ),
        ));
    }
    if !node.is_leader() {
        return Err(OpError::new(OpErrorKind::NotLeader, "not the leader"));
    }
    node.write(Command::ReportTaskStatus {
        node_id: peer,
        updates: report.updates,
        now_ms: now_ms(),
    })
    .await?;
    Ok(())
}

/// `writers` tasks share `count` commits of `Noop`, each waiting for its
/// commit before the next: the latency is the full client write path
/// (propose, replicate to a quorum, fsync, apply).
async fn bench_commit(node: &Arc<Node>, writers: u32, count: u32) -> Result<LeaderReply, OpError> {
    use shoal_cli::api::{BenchReport, MAX_BENCH_COUNT, MAX_BENCH_WRITERS};
    if !(1..=MAX_BENCH_WRITERS).contains(&writers) {
        return Err(OpError::bad_request(format!(
            "writers: {writers} is out of range; allowed: 1 to {MAX_BENCH_WRITERS}"
        )));
    }
    if !(1..=MAX_BENCH_COUNT).contains(&count) {
        return Err(OpError::bad_request(format!(
            "count: {count} is out of range; allowed: 1 to {MAX_BENCH_COUNT}"
        )));
    }
    let remaining = Arc::new(std::sync::atomic::AtomicU32::new(count));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let node = node.clone();
        let remaining = remaining.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let claimed = remaining.fetch_update(
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                    |n| n.checked_sub(1),
                );
                if claimed.is_err() {
                    return Ok::<_, OpError>(latencies);
                }
                let t = Instant::now();
                node.write(Command::Noop { now_ms: now_ms() }).await?;
                latencies.push(t.elapsed().as_micros() as u64);
            }
        });
    }
    let mut all = Vec::with_capacity(count as usize);
    while let Some(joined) = tasks.join_next().await {
        let latencies = joined.map_err(|e| OpError::internal(format!("bench task: {e}")))??;
        all.extend(latencies);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pick = |q: f64| all[((all.len() as f64 - 1.0) * q).round() as usize];
    Ok(LeaderReply::Bench(BenchReport {
        writers,
        count,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        commits_per_sec: count as f64 / elapsed.as_secs_f64(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: *all.last().unwrap_or(&0),
    }))
}

fn view_of(node: &Node, name: &str) -> Result<NodeView, OpError> {
    let voters = node.voters();
    node.state.read(|s| {
        let n = find(s, name)?;
        Ok(node_view(n, Some(node.id), &voters))
    })
}

fn find<'a>(state: &'a ClusterState, name: &str) -> Result<&'a NodeRecord, OpError> {
    state.resolve(name).ok_or_else(|| {
        OpError::not_found(format!(
            "no node named or numbered {name:?} (see `shoal node ls`)"
        ))
    })
}

async fn update_node(
    node: &Arc<Node>,
    name: &str,
    update: NodeUpdate,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    update
        .validate()
        .map_err(|e| OpError::bad_request(e.to_string()))?;
    let availability = update
        .availability
        .as_deref()
        .map(parse_availability)
        .transpose()?;
    // An earlier attempt that renamed the node left it under its new name.
    let id = node.state.read(|s| match (find(s, name), &update.name) {
        (Err(_), Some(renamed)) if already_applied(s, request) => find(s, renamed).map(|n| n.id),
        (found, _) => found.map(|n| n.id),
    })?;
    node.write_request(
        request,
        Command::UpdateNode {
            id,
            availability,
            labels_add: update.labels_add,
            labels_rm: update.labels_rm,
            name: update.name,
            now_ms: now_ms(),
        },
    )
    .await?;
    Ok(LeaderReply::Node(view_of(node, &id.to_string())?))
}

async fn set_role(
    node: &Arc<Node>,
    name: &str,
    role: Role,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    let (id, current, managers) = node
        .state
        .read(|s| find(s, name).map(|n| (n.id, n.role, managers_of(s).len())))?;
    if current != role {
        if role == Role::Manager && managers >= MAX_MANAGERS {
            return Err(OpError::conflict(format!(
                "the cluster already has {managers} managers, the most it keeps is {MAX_MANAGERS}"
            )));
        }
        node.write_request(
            request,
            Command::SetNodeRole {
                id,
                role,
                now_ms: now_ms(),
            },
        )
        .await?;
    }
    // The leader loop carries the role change into the Raft membership;
    // wait for it so the command returns when it is true.
    let want_voter = role == Role::Manager;
    let deadline = Instant::now() + MEMBERSHIP_WAIT;
    let mut metrics = node.raft.metrics();
    loop {
        let is_voter = metrics
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        if is_voter == want_voter {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, metrics.changed()).await.is_err() {
            return Err(OpError::unavailable(format!(
                "node {id} is now a {} in the cluster state, but the Raft membership did not follow within {}s (is the node up and reachable?); it will when the node is reachable",
                role_str(role),
                MEMBERSHIP_WAIT.as_secs()
            )));
        }
    }
    Ok(LeaderReply::Node(view_of(node, &id.to_string())?))
}

async fn remove_node(
    node: &Arc<Node>,
    name: &str,
    force: bool,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    // An earlier attempt at this request removed the node: answer with its
    // id if the client named it by id (a name is gone with the node).
    let record = node.state.read(|s| match find(s, name) {
        Ok(record) => Ok(Ok(record.clone())),
        Err(_) if already_applied(s, request) => match name.parse::<NodeId>() {
            Ok(id) => Ok(Err(id)),
            Err(_) => Err(OpError::not_found(format!(
                "node {name:?} is gone: an earlier attempt at this same request removed it \
                 (its answer was lost when the leader changed)"
            ))),
        },
        Err(e) => Err(e),
    })?;
    let record = match record {
        Ok(record) => record,
        Err(id) => return Ok(LeaderReply::Removed(RemovedView { id })),
    };
    if record.id == node.id {
        return Err(OpError::conflict(format!(
            "node {} is the leader: demote it first (`shoal node demote {}`) so another manager leads, then remove it",
            record.id, record.id
        )));
    }
    if record.status == NodeStatus::Ready && !force {
        return Err(OpError::conflict(format!(
            "node {} ({}) is ready: stop its daemon first, or use --force",
            record.id, record.name
        )));
    }
    if record.role == Role::Manager {
        if !force {
            return Err(OpError::conflict(format!(
                "node {} ({}) is a manager: demote it first (`shoal node demote {}`), or use --force",
                record.id, record.name, record.id
            )));
        }
        // The demotion is this request's second write, with its own id.
        let demote = request.map(|r| r.write(1));
        set_role(node, &record.id.to_string(), Role::Worker, demote).await?;
    }
    node.write_request(
        request,
        Command::RemoveNode {
            id: record.id,
            now_ms: now_ms(),
        },
    )
    .await?;
    node.peers.forget(record.id);
    Ok(LeaderReply::Removed(RemovedView { id: record.id }))
}

async fn join(
    node: &Arc<Node>,
    req: JoinRequest,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    validate_name("name", &req.name)?;
    validate_addr("addr", &req.addr)?;
    let (role, ca, cluster_id, managers, replay) = node.state.read(|s| {
        let role = role_for_secret(s, &req.secret)?;
        let ca =
            s.ca.clone()
                .ok_or_else(|| OpError::internal("the cluster has no CA yet"))?;
        let replay = already_applied(s, request);
        Ok::<_, OpError>((role, ca, s.cluster_id.clone(), managers_of(s), replay))
    })?;
    // A repeated attempt whose joiner was registered counts among the managers.
    if role == Role::Manager && managers.len() >= MAX_MANAGERS && !replay {
        return Err(OpError::conflict(format!(
            "the cluster already has {} managers, the most it keeps is {MAX_MANAGERS}: join as a worker",
            managers.len()
        )));
    }
    let ca = ClusterCa::from_pem(&ca.cert_pem, &ca.key_pem)
        .map_err(|e| OpError::internal(format!("cannot load the cluster CA: {e}")))?;
    // Check the key before the node is registered, so a bad request leaves
    // the cluster unchanged.
    ca.issue_node_cert(0, &req.public_key_der)
        .map_err(|e| OpError::bad_request(format!("public_key_der: {e}")))?;
    let resp = node
        .write_request(
            request,
            Command::RegisterNode {
                node: NewNode {
                    name: req.name.clone(),
                    addr: req.addr.clone(),
                    role,
                    resources: req.resources,
                    version: req.version.clone(),
                    key_fingerprint: pki::key_fingerprint(&req.public_key_der),
                },
                now_ms: now_ms(),
            },
        )
        .await?;
    let Response::NodeRegistered { id } = resp else {
        return Err(OpError::internal(format!(
            "registering the node returned {resp:?}"
        )));
    };
    // Mark it heard from now, so it gets a full timeout to start.
    node.liveness.lock().unwrap().record(id, Instant::now());
    let cert_pem = ca
        .issue_node_cert(id, &req.public_key_der)
        .map_err(|e| OpError::internal(format!("cannot sign the node certificate: {e}")))?;
    tracing::info!(node = id, name = %req.name, addr = %req.addr, role = role_str(role), "node joined");
    Ok(LeaderReply::Joined(JoinAccepted {
        node_id: id,
        role,
        cluster_id,
        cert_pem,
        ca_cert_pem: ca.cert_pem.clone(),
        managers: node.state.read(managers_of),
    }))
}

/// Which role a join secret grants, or a refusal that says whether the token
/// is unknown or was rotated away.
fn role_for_secret(state: &ClusterState, secret: &str) -> Result<Role, OpError> {
    for (role, record) in &state.tokens {
        if token::secret_matches(secret, &record.secret_hash) {
            return Ok(*role);
        }
    }
    if let Some(ca) = &state.ca {
        for (role, record) in &state.tokens {
            let rotated = (1..record.generation).any(|g| {
                token::derive_secret(ca.key_pem.as_bytes(), &token_label(*role, g)) == secret
            });
            if rotated {
                return Err(OpError::new(
                    OpErrorKind::Forbidden,
                    format!(
                        "the {} join token was rotated and no longer works: get the current one with `shoal token show {}`",
                        role_str(*role),
                        role_str(*role)
                    ),
                ));
            }
        }
    }
    Err(OpError::new(
        OpErrorKind::Forbidden,
        "the token's secret is not valid for this cluster: check the token (`shoal token show manager|worker` on a manager)",
    ))
}

pub fn token_label(role: Role, generation: u64) -> String {
    format!("join-token/{}/{generation}", role_str(role))
}

fn token_view(node: &Node, role: Role) -> Result<TokenView, OpError> {
    let (ca, generation) = node
        .state
        .read(|s| (s.ca.clone(), s.tokens.get(&role).map(|t| t.generation)));
    let (Some(ca), Some(generation)) = (ca, generation) else {
        return Err(OpError::internal("the cluster has no CA or tokens yet"));
    };
    let fingerprint = shoal_net::pki::fingerprint_of_pem(&ca.cert_pem)
        .map_err(|e| OpError::internal(format!("cannot read the cluster CA: {e}")))?;
    let secret = token::derive_secret(ca.key_pem.as_bytes(), &token_label(role, generation));
    let token = JoinToken {
        fingerprint,
        secret,
    }
    .to_string();
    let join_command = format!(
        "shoal join {} --token {token} --data-dir /var/lib/shoal --listen <this-host>:4500",
        node.advertise
    );
    Ok(TokenView {
        role: role_str(role).to_string(),
        token,
        join_command,
    })
}

pub fn status_view(node: &Node) -> StatusView {
    let metrics = node.raft.metrics().borrow().clone();
    let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    let last_log = metrics.last_log_index.unwrap_or(0);
    let matched = |id: NodeId| -> Option<u64> {
        if id == node.id && metrics.current_leader == Some(node.id) {
            return Some(last_log);
        }
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned())
            .map(|log_id| log_id.map(|l| l.index).unwrap_or(0))
    };
    // The commit index is the highest index a quorum of voters holds.
    let mut voter_matches: Vec<u64> = voters.iter().map(|v| matched(*v).unwrap_or(0)).collect();
    voter_matches.sort_unstable_by(|a, b| b.cmp(a));
    let needed = voters.len() / 2 + 1;
    let commit_index = if metrics.current_leader == Some(node.id) {
        voter_matches.get(needed - 1).copied().unwrap_or(0)
    } else {
        metrics.last_applied.map(|l| l.index).unwrap_or(0)
    };
    // A leader cut off from its quorum does not report itself as leader.
    let leader_id = metrics
        .current_leader
        .filter(|l| *l != node.id || node.lost_quorum().is_none());
    node.state.read(|s| {
        let members: Vec<MemberView> = s
            .nodes
            .values()
            .map(|n| {
                let m = matched(n.id);
                MemberView {
                    id: n.id,
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    role: role_str(n.role).to_string(),
                    voter: voters.contains(&n.id),
                    status: status_str(n.status).to_string(),
                    match_index: m,
                    lag: m.map(|m| last_log.saturating_sub(m)),
                }
            })
            .collect();
        let voters_ready = s
            .nodes
            .values()
            .filter(|n| voters.contains(&n.id) && n.status == NodeStatus::Ready)
            .count();
        StatusView {
            cluster_id: s.cluster_id.clone(),
            node_id: node.id,
            leader_id,
            leader_name: leader_id.and_then(|l| s.nodes.get(&l).map(|n| n.name.clone())),
            term: metrics.current_term,
            commit_index,
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            members,
            quorum: QuorumView {
                voters: voters.len(),
                voters_ready,
                needed,
                healthy: leader_id.is_some() && voters_ready >= needed,
            },
        }
    })
}

pub fn node_view(n: &NodeRecord, leader: Option<NodeId>, voters: &BTreeSet<NodeId>) -> NodeView {
    NodeView {
        id: n.id,
        name: n.name.clone(),
        addr: n.addr.clone(),
        role: role_str(n.role).to_string(),
        status: status_str(n.status).to_string(),
        availability: availability_str(n.availability).to_string(),
        leader: leader == Some(n.id),
        voter: voters.contains(&n.id),
        labels: n.labels.clone(),
        nano_cpus: n.resources.nano_cpus,
        memory_bytes: n.resources.memory_bytes,
        version: n.version.clone(),
        status_message: n.status_message.clone(),
        joined_at_ms: n.joined_at_ms,
        status_changed_at_ms: n.status_changed_at_ms,
        engine_error: n.engine_error.clone(),
    }
}

pub fn role_str(role: Role) -> &'static str {
    match role {
        Role::Manager => "manager",
        Role::Worker => "worker",
    }
}

pub fn status_str(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
    }
}

fn availability_str(a: Availability) -> &'static str {
    match a {
        Availability::Active => "active",
        Availability::Pause => "pause",
        Availability::Drain => "drain",
    }
}

pub fn parse_role(s: &str) -> Result<Role, OpError> {
    match s {
        "manager" => Ok(Role::Manager),
        "worker" => Ok(Role::Worker),
        other => Err(OpError::bad_request(format!(
            "role: {other:?} is not a role; allowed: manager, worker"
        ))),
    }
}

fn parse_availability(s: &str) -> Result<Availability, OpError> {
    match s {
        "active" => Ok(Availability::Active),
        "pause" => Ok(Availability::Pause),
        "drain" => Ok(Availability::Drain),
        other => Err(OpError::bad_request(format!(
            "availability: {other:?} is not allowed; allowed: active, pause, drain"
        ))),
    }
}

/// Node names follow the CLI's rules ([`shoal_cli::api::validate_node_name`]),
/// so both edges refuse the same input with the same words.
pub fn validate_name(field: &str, name: &str) -> Result<(), OpError> {
    shoal_cli::api::validate_node_name(name)
        .map_err(|e| OpError::bad_request(format!("{field}: {e}")))
}

fn validate_addr(field: &str, addr: &str) -> Result<(), OpError> {
    let ok = match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(OpError::bad_request(format!(
            "{field}: {addr:?} is not an address; allowed: HOST:PORT with a port from 1 to 65535"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_are_validated_with_the_field_named() {
        let cases: &[(Result<(), OpError>, Option<&str>)] = &[
            (validate_name("name", "node-a"), None),
            (validate_name("name", "a.b_c-1"), None),
            (
                validate_name("name", ""),
                Some("name: node name must not be empty"),
            ),
            (validate_name("--name", "a b"), Some("--name: ")),
            (validate_addr("addr", "127.0.0.1:4500"), None),
            (validate_addr("addr", "node-b:4500"), None),
            (validate_addr("addr", "[::1]:4500"), None),
            (
                validate_addr("addr", "127.0.0.1"),
                Some("addr: \"127.0.0.1\" is not an address"),
            ),
            (validate_addr("addr", "h:0"), Some("port from 1 to 65535")),
        ];
        for (i, (result, expected)) in cases.iter().enumerate() {
            match (result, expected) {
                (Ok(()), None) => {}
                (Err(e), Some(fragment)) => {
                    assert_eq!(e.kind, OpErrorKind::BadRequest);
                    assert!(e.message.contains(fragment), "case {i}: {}", e.message)
                }
                _ => panic!("case {i}: got {result:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn availability_and_role_parse_or_name_the_allowed_values() {
        assert_eq!(parse_availability("drain").unwrap(), Availability::Drain);
        let e = parse_availability("off").unwrap_err();
        assert!(e.message.contains("allowed: active, pause, drain"));
        assert_eq!(parse_role("worker").unwrap(), Role::Worker);
        assert!(parse_role("boss")
            .unwrap_err()
            .message
            .contains("manager, worker"));
    }
}
