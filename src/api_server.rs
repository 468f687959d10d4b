//! The control API: HTTP/JSON under /v1 on a Unix socket (mode 0600) in the
//! data dir. Every request becomes a [`LeaderOp`] run on the leader; `status`
//! falls back to this node's own view when no leader answers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shoal_cli::api::{
    routes, ApiError, BenchCommitRequest, NodeUpdate, ScaleRequest, ServiceSpecDoc,
    ServiceUpdateRequest, StackDeployRequest,
};

use crate::node::Node;
use crate::ops::parse_role;
use crate::wire::{LeaderOp, LeaderReply, OpError, OpErrorKind};

/// Request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub async fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    // The data dir lock is held, so a socket file here is a stale leftover.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(node: Arc<Node>, listener: tokio::net::UnixListener) -> Result<()> {
    axum::serve(listener, router(node)).await?;
    Ok(())
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{node}", get(node_get).delete(node_rm))
        .route("/v1/nodes/{node}/update", post(node_update))
        .route("/v1/nodes/{node}/promote", post(node_promote))
        .route("/v1/nodes/{node}/demote", post(node_demote))
        .route("/v1/status", get(status))
        .route("/v1/tokens/{role}", get(token_show))
        .route("/v1/tokens/{role}/rotate", post(token_rotate))
        .route(routes::SERVICES, get(services_ls).post(deploy))
        .route(routes::SERVICE, get(service_get).delete(service_rm))
        .route(routes::SERVICE_TASKS, get(service_tasks))
        .route(routes::SERVICE_SCALE, post(service_scale))
        .route(routes::SERVICE_UPDATE, post(service_update))
        .route(routes::SERVICE_ROLLBACK, post(service_rollback))
        .route(routes::SERVICE_PLAN, post(service_plan))
        .route(routes::STACKS, get(stacks_ls))
        .route(routes::STACK, post(stack_deploy).delete(stack_rm))
        .route(routes::STACK_SERVICES, get(stack_services))
        .route(routes::STACK_TASKS, get(stack_tasks))
        .route(routes::SERVICE_ENDPOINTS, get(service_endpoints))
        .route(routes::DEV_NOOP, post(noop))
        .route(routes::DEV_BENCH_COMMIT, post(bench_commit))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(node)
}

type Api = Result<Response, ApiFailure>;

pub struct ApiFailure(OpError);

impl From<OpError> for ApiFailure {
    fn from(e: OpError) -> Self {
        ApiFailure(e)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = match self.0.kind {
            OpErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            OpErrorKind::NotFound => StatusCode::NOT_FOUND,
            OpErrorKind::Conflict => StatusCode::CONFLICT,
            OpErrorKind::Forbidden => StatusCode::FORBIDDEN,
            OpErrorKind::NotLeader | OpErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            OpErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = ApiError {
            error: self.0.message.clone(),
            retryable: self.0.is_retryable(),
        };
        (status, Json(body)).into_response()
    }
}

async fn call(node: &Arc<Node>, op: LeaderOp) -> Api {
    let reply = node.leader_call(op).await?;
    Ok(match reply {
        LeaderReply::Nodes(v) => Json(v).into_response(),
        LeaderReply::Node(v) => Json(v).into_response(),
        LeaderReply::Removed(v) => Json(v).into_response(),
        LeaderReply::Status(v) => Json(v).into_response(),
        LeaderReply::Token(v) => Json(v).into_response(),
        LeaderReply::Joined(_) => {
            return Err(OpError::internal("unexpected join reply").into());
        }
        LeaderReply::Bench(v) => Json(v).into_response(),
        LeaderReply::Deployed(v) => Json(v).into_response(),
        LeaderReply::Services(v) => Json(v).into_response(),
        LeaderReply::Service(v) => Json(v).into_response(),
        LeaderReply::ServiceInspect(v) => Json(v).into_response(),
        LeaderReply::Tasks(v) => Json(v).into_response(),
        LeaderReply::ServiceRemoved(v) => Json(v).into_response(),
        LeaderReply::Done => Json(serde_json::json!({})).into_response(),
        LeaderReply::Plan(v) => Json(v).into_response(),
        LeaderReply::Stacks(v) => Json(v).into_response(),
        LeaderReply::StackRemoved(v) => Json(v).into_response(),
    })
}

async fn nodes(State(node): State<Arc<Node>>) -> Api {
    call(&node, LeaderOp::Nodes).await
}

async fn node_get(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::Node(name)).await
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn node_rm(
    State(node): State<Arc<Node>>,
    UrlPath(name): UrlPath<String>,
    query: Result<Query<RemoveQuery>, axum::extract::rejection::QueryRejection>,
) -> Api {
    let Query(q) = query.map_err(|e| {
        OpError::bad_request(format!("force: {e}; allowed: force=true or force=false"))
    })?;
    call(
        &node,
        LeaderOp::RemoveNode {
            node: name,
            force: q.force,
        },
    )
    .await
}

async fn node_update(
    State(node): State<Arc<Node>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<NodeUpdate>, axum::extract::rejection::JsonRejection>,
) -> Api {
    let Json(update) =
        body.map_err(|e| OpError::bad_request(format!("request body: {}", e.body_text())))?;
    call(&node, LeaderOp::UpdateNode(name, update)).await
}

async fn node_promote(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::Promote(name)).await
}

async fn node_demote(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::Demote(name)).await
}

async fn status(State(node): State<Arc<Node>>) -> Api {
    let within = node.timing.status_timeout;
    match node.leader_call_within(LeaderOp::Status, within).await {
        Ok(LeaderReply::Status(v)) => Ok(Json(v).into_response()),
        Ok(_) => Err(OpError::internal("unexpected status reply").into()),
        // Without a leader, this node's own view still tells the operator
        // what is wrong (no leader, which members it last knew).
        Err(e) if e.is_retryable() => {
            let mut view = crate::ops::status_view(&node);
            view.quorum.healthy = false;
            Ok(Json(view).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

async fn token_show(State(node): State<Arc<Node>>, UrlPath(role): UrlPath<String>) -> Api {
    let role = parse_role(&role)?;
    call(&node, LeaderOp::Token(role)).await
}

async fn token_rotate(State(node): State<Arc<Node>>, UrlPath(role): UrlPath<String>) -> Api {
    let role = parse_role(&role)?;
    call(&node, LeaderOp::RotateToken(role)).await
}

async fn noop(State(node): State<Arc<Node>>) -> Api {
    call(&node, LeaderOp::Noop).await
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(body: JsonBody<T>) -> Result<T, OpError> {
    body.map(|Json(v)| v)
        .map_err(|e| OpError::bad_request(format!("request body: {}", e.body_text())))
}

async fn deploy(State(node): State<Arc<Node>>, doc: JsonBody<ServiceSpecDoc>) -> Api {
    call(&node, LeaderOp::Deploy(body(doc)?)).await
}

async fn services_ls(State(node): State<Arc<Node>>) -> Api {
    call(&node, LeaderOp::Services).await
}

async fn service_get(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::Service(name)).await
}

async fn service_tasks(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::Tasks(name)).await
}

async fn service_scale(
    State(node): State<Arc<Node>>,
    UrlPath(name): UrlPath<String>,
    req: JsonBody<ScaleRequest>,
) -> Api {
    let replicas = body(req)?.replicas;
    call(&node, LeaderOp::Scale { name, replicas }).await
}

async fn service_update(
    State(node): State<Arc<Node>>,
    UrlPath(name): UrlPath<String>,
    req: JsonBody<ServiceUpdateRequest>,
) -> Api {
    let update = body(req)?;
    call(&node, LeaderOp::UpdateService { name, update }).await
}

async fn service_rollback(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::RollbackService(name)).await
}

async fn service_plan(State(node): State<Arc<Node>>, doc: JsonBody<ServiceSpecDoc>) -> Api {
    call(&node, LeaderOp::PlanService(body(doc)?)).await
}

async fn stacks_ls(State(node): State<Arc<Node>>) -> Api {
    call(&node, LeaderOp::Stacks).await
}

async fn stack_deploy(
    State(node): State<Arc<Node>>,
    UrlPath(stack): UrlPath<String>,
    req: JsonBody<StackDeployRequest>,
) -> Api {
    let request = body(req)?;
    call(&node, LeaderOp::DeployStack { stack, request }).await
}

async fn stack_services(State(node): State<Arc<Node>>, UrlPath(stack): UrlPath<String>) -> Api {
    call(&node, LeaderOp::StackServices(stack)).await
}

async fn stack_tasks(State(node): State<Arc<Node>>, UrlPath(stack): UrlPath<String>) -> Api {
    call(&node, LeaderOp::StackTasks(stack)).await
}

async fn stack_rm(State(node): State<Arc<Node>>, UrlPath(stack): UrlPath<String>) -> Api {
    call(&node, LeaderOp::RemoveStack(stack)).await
}

/// Answered by this node's mesh, without the leader.
async fn service_endpoints(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    match crate::mesh::endpoint_views(&node.mesh.table(), &name) {
        Some(views) => Ok(Json(views).into_response()),
        None => Err(OpError::not_found(format!("no service named {name}")).into()),
    }
}

async fn service_rm(State(node): State<Arc<Node>>, UrlPath(name): UrlPath<String>) -> Api {
    call(&node, LeaderOp::RemoveService(name)).await
}

/// How long a benchmark run may take end to end.
const BENCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

async fn bench_commit(
    State(node): State<Arc<Node>>,
    body: Result<Json<BenchCommitRequest>, axum::extract::rejection::JsonRejection>,
) -> Api {
    let Json(req) =
        body.map_err(|e| OpError::bad_request(format!("request body: {}", e.body_text())))?;
    let op = LeaderOp::BenchCommit {
        writers: req.writers,
        count: req.count,
    };
    match node.leader_call_within(op, BENCH_TIMEOUT).await? {
        LeaderReply::Bench(v) => Ok(Json(v).into_response()),
        _ => Err(OpError::internal("unexpected bench reply").into()),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiFailure {
    ApiFailure(OpError::not_found(format!(
        "no such API path: {uri} (paths are under /v1: nodes, status, tokens, services)"
    )))
}
