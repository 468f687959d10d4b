//! Stacks and plans on the leader: a stack's service documents become one
//! `DeployStack` command (all or none, one Raft entry), and any deploy can be
//! planned first — the diff and the placement the scheduler would make now,
//! computed on a copy of the state by `shoal_raft::plan`.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_cli::api::{
    validate_service_name, PlanView, RemovedStackView, ServicePlanView, ServiceSpecDoc,
    StackDeployRequest, StackView, MAX_SERVICE_NAME_LEN, MAX_STACK_SERVICES,
};
use shoal_raft::plan::{plan, Change, ServicePlan};
use shoal_raft::{ClusterState, Command, RequestId, ServiceSpec};

use crate::node::{now_ms, Node};
use crate::services;
use crate::wire::{LeaderReply, OpError};

fn node_name(state: &ClusterState, id: shoal_raft::NodeId) -> String {
    state
        .nodes
        .get(&id)
        .map_or_else(|| format!("node {id}"), |n| n.name.clone())
}

fn plan_view(state: &ClusterState, plan: &ServicePlan) -> ServicePlanView {
    let (change, from_image, from_replicas, parallelism) = match &plan.change {
        Change::Create => ("create", None, None, None),
        Change::Update {
            from_image,
            parallelism,
            ..
        } => ("update", Some(from_image.clone()), None, Some(*parallelism)),
        Change::Scale { from, .. } => ("scale", None, Some(*from), None),
        Change::Settings => ("settings", None, None, None),
        Change::Unchanged => ("unchanged", None, None, None),
        Change::Remove => ("remove", None, None, None),
        Change::WouldRemove => ("would-remove", None, None, None),
    };
    ServicePlanView {
        name: plan.name.clone(),
        change: change.to_owned(),
        image: plan.image.clone(),
        from_image,
        replicas: plan.replicas,
        from_replicas,
        parallelism,
        placed: plan
            .placed
            .iter()
            .map(|(id, n)| (node_name(state, *id), *n))
            .collect(),
        unplaced: plan.unplaced.clone(),
    }
}

/// Plans `command` on the current state; `Err` is the refusal the command
/// itself would get.
fn plan_views(node: &Node, command: &Command) -> Result<Vec<ServicePlanView>, OpError> {
    node.state.read(|s| {
        plan(s, command, now_ms())
            .map(|plans| plans.iter().map(|p| plan_view(s, p)).collect())
            .map_err(OpError::conflict)
    })
}

/// `shoal deploy --dry-run`: the plan of a create or an update.
pub async fn plan_service(node: &Arc<Node>, doc: ServiceSpecDoc) -> Result<LeaderReply, OpError> {
    let mut spec = services::spec_from_doc(&doc)?;
    node.linearizable().await?;
    let command = node.state.read(|s| {
        services::check_fits_somewhere(s, &spec)?;
        Ok::<_, OpError>(match s.services.get(&spec.name) {
            None => Command::CreateService {
                spec: spec.clone(),
                now_ms: now_ms(),
            },
            Some(existing) => {
                if doc.force_update.is_none() {
                    spec.force_update = existing.spec.force_update;
                }
                spec.stack = existing.spec.stack.clone();
                Command::UpdateService {
                    spec: spec.clone(),
                    now_ms: now_ms(),
                }
            }
        })
    })?;
    Ok(LeaderReply::Plan(PlanView {
        services: plan_views(node, &command)?,
        applied: false,
    }))
}

/// The specs of a stack's documents, each named `STACK_NAME` and carrying the
/// stack; a stored `force_update` is kept when a document leaves it out.
fn stack_specs(
    state: &ClusterState,
    stack: &str,
    docs: &[ServiceSpecDoc],
) -> Result<Vec<ServiceSpec>, OpError> {
    let mut specs = Vec::with_capacity(docs.len());
    for doc in docs {
        let full = format!("{stack}_{}", doc.name);
        if full.len() > MAX_SERVICE_NAME_LEN {
            return Err(OpError::bad_request(format!(
                "service {:?} of stack {stack:?}: the full name {full:?} is longer than \
                 {MAX_SERVICE_NAME_LEN} characters; shorten the stack or service name",
                doc.name
            )));
        }
        let named = ServiceSpecDoc {
            name: full.clone(),
            ..doc.clone()
        };
        let mut spec = services::spec_from_doc(&named)
            .map_err(|e| OpError::bad_request(format!("service {:?}: {}", doc.name, e.message)))?;
        spec.stack = Some(stack.to_owned());
        if let Some(existing) = state.services.get(&full) {
            if doc.force_update.is_none() {
                spec.force_update = existing.spec.force_update;
            }
        }
        services::check_fits_somewhere(state, &spec)
            .map_err(|e| OpError::bad_request(format!("service {:?}: {}", doc.name, e.message)))?;
        specs.push(spec);
    }
    Ok(specs)
}

pub async fn deploy_stack(
    node: &Arc<Node>,
    stack: String,
    request: StackDeployRequest,
    id: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    validate_service_name(&stack).map_err(|_| {
        OpError::bad_request(format!(
            "stack name {stack:?} is not allowed; use 1-63 characters of a-z, 0-9, '-' and '_', \
             starting with a letter or digit"
        ))
    })?;
    if request.services.len() > MAX_STACK_SERVICES {
        return Err(OpError::bad_request(format!(
            "a stack holds at most {MAX_STACK_SERVICES} services"
        )));
    }
    let _writes = node.service_writes.lock().await;
    node.linearizable().await?;
    let specs = node
        .state
        .read(|s| stack_specs(s, &stack, &request.services))?;
    let command = Command::DeployStack {
        stack,
        specs,
        prune: request.prune,
        now_ms: now_ms(),
    };
    let services = plan_views(node, &command)?;
    if !request.dry_run {
        node.write_request(id, command).await?;
    }
    Ok(LeaderReply::Plan(PlanView {
        services,
        applied: !request.dry_run,
    }))
}

pub async fn stacks(node: &Arc<Node>) -> Result<LeaderReply, OpError> {
    node.linearizable().await?;
    Ok(LeaderReply::Stacks(node.state.read(|s| {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for service in s.services.values() {
            if let Some(stack) = &service.spec.stack {
                *counts.entry(stack.as_str()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .map(|(name, services)| StackView {
                name: name.to_owned(),
                services,
            })
            .collect()
    })))
}

fn stack_service_names(state: &ClusterState, stack: &str) -> Result<Vec<String>, OpError> {
    let names: Vec<String> = state
        .services
        .values()
        .filter(|s| s.spec.stack.as_deref() == Some(stack))
        .map(|s| s.spec.name.clone())
        .collect();
    if names.is_empty() {
        return Err(OpError::not_found(format!(
            "no stack named {stack:?} (see `shoal stack ls`)"
        )));
    }
    Ok(names)
}

pub async fn stack_services(node: &Arc<Node>, stack: String) -> Result<LeaderReply, OpError> {
    node.linearizable().await?;
    node.state.read(|s| {
        let names = stack_service_names(s, &stack)?;
        Ok(LeaderReply::Services(
            names
                .iter()
                .map(|n| services::service_view(s, &s.services[n]))
                .collect(),
        ))
    })
}

pub async fn stack_tasks(node: &Arc<Node>, stack: String) -> Result<LeaderReply, OpError> {
    node.linearizable().await?;
    node.state.read(|s| {
        let names = stack_service_names(s, &stack)?;
        Ok(LeaderReply::Tasks(
            names
                .iter()
                .flat_map(|n| services::task_views(s, n))
                .collect(),
        ))
    })
}

pub async fn remove_stack(
    node: &Arc<Node>,
    stack: String,
    request: Option<RequestId>,
) -> Result<LeaderReply, OpError> {
    let _writes = node.service_writes.lock().await;
    node.linearizable().await?;
    // An earlier attempt at this request removed the stack: its services are
    // gone, so the answer cannot name them.
    let names = node.state.read(|s| {
        if crate::ops::already_applied(s, request) {
            return Ok(Vec::new());
        }
        stack_service_names(s, &stack)
    })?;
    node.write_request(
        request,
        Command::RemoveStack {
            stack: stack.clone(),
            now_ms: now_ms(),
        },
    )
    .await?;
    Ok(LeaderReply::StackRemoved(RemovedStackView {
        name: stack,
        services: names,
    }))
}
