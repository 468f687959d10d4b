//! The control-API client: HTTP/1.1 with JSON bodies over the daemon's Unix socket.
//!
//! One connection per request keeps the client stateless; the whole exchange
//! (connect, request, response body) runs under one deadline, and response
//! bodies are capped before they are buffered.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{
    self, paths, routes, BenchCommitRequest, BenchReport, DeployView, EndpointView, NodeUpdate,
    NodeView, PlanView, RemovedServiceView, RemovedStackView, RemovedView, ScaleRequest,
    ServiceInspectView, ServiceSpecDoc, ServiceUpdateRequest, ServiceView, StackDeployRequest,
    StackView, StatusView, TaskView, TokenView,
};
use crate::args::{socket_url, MAX_SOCKET_PATH_LEN};

/// How long one request may take, connect to last byte, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest response body read; a node list of thousands of nodes fits easily.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How much of an unreadable response body an error message quotes.
const MAX_QUOTED_BODY_CHARS: usize = 300;

/// Why a control-API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the shoal daemon at {url}: no such socket (is `shoal run` running? set -H or --data-dir)")]
    NoSocket { url: String },
    #[error("cannot reach the shoal daemon at {url}: permission denied (run as a user allowed to open the socket, e.g. root)")]
    PermissionDenied { url: String },
    #[error("cannot reach the shoal daemon at {url}: connection refused (the socket file exists but no daemon accepts on it; is `shoal run` running?)")]
    Refused { url: String },
    #[error("cannot reach the shoal daemon at {url}: the socket path is {len} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH_LEN} (use a shorter --data-dir or -H)")]
    PathTooLong { url: String, len: usize },
    #[error("cannot reach the shoal daemon at {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("the shoal daemon at {url} did not answer within {}; it may be overloaded or waiting for a leader, retry later", format_timeout(*timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("talking to the shoal daemon at {url} failed: {detail}")]
    Transport { url: String, detail: String },
    #[error("the shoal daemon at {url} sent a response larger than {MAX_RESPONSE_BYTES} bytes; refusing to read it")]
    ResponseTooLarge { url: String },
    /// The server's own sentence, printed as it is.
    #[error("{error}")]
    Api {
        status: u16,
        error: String,
        retryable: bool,
    },
    #[error("the shoal daemon answered HTTP {status}: {text}")]
    Status { status: u16, text: String },
    #[error("cannot read the shoal daemon's answer (HTTP {status}): {detail}; check that the daemon and this command are the same version")]
    BadResponse { status: u16, detail: String },
}

impl ClientError {
    /// Whether the daemon answered 404 (e.g. the service does not exist).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ClientError::Api { status: 404, .. } | ClientError::Status { status: 404, .. }
        )
    }

    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { retryable, .. } => *retryable,
            ClientError::Refused { .. }
            | ClientError::Timeout { .. }
            | ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => *status == 503,
            ClientError::NoSocket { .. }
            | ClientError::PermissionDenied { .. }
            | ClientError::PathTooLong { .. }
            | ClientError::Connect { .. }
            | ClientError::ResponseTooLarge { .. }
            | ClientError::BadResponse { .. } => false,
        }
    }
}

fn format_timeout(timeout: Duration) -> String {
    if timeout.subsec_millis() == 0 {
        format!("{}s", timeout.as_secs())
    } else {
        format!("{}ms", timeout.as_millis())
    }
}

/// A client for the daemon's control API on a Unix socket.
#[derive(Clone, Debug)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the deadline for each whole request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.call(Method::GET, paths::nodes(), None).await
    }

    pub async fn node(&self, node: &str) -> Result<NodeView, ClientError> {
        self.call(Method::GET, paths::node(node), None).await
    }

    pub async fn update_node(
        &self,
        node: &str,
        update: &NodeUpdate,
    ) -> Result<NodeView, ClientError> {
        let body = serde_json::to_vec(update).expect("NodeUpdate serializes to JSON");
        self.call(Method::POST, paths::node_update(node), Some(body))
            .await
    }

    pub async fn promote(&self, node: &str) -> Result<NodeView, ClientError> {
        self.call(Method::POST, paths::node_promote(node), None)
            .await
    }

    pub async fn demote(&self, node: &str) -> Result<NodeView, ClientError> {
        self.call(Method::POST, paths::node_demote(node), None)
            .await
    }

    pub async fn remove_node(&self, node: &str, force: bool) -> Result<RemovedView, ClientError> {
        self.call(Method::DELETE, paths::node_remove(node, force), None)
            .await
    }

    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.call(Method::GET, paths::status(), None).await
    }

    /// `role` is `"manager"` or `"worker"`.
    pub async fn token(&self, role: &str) -> Result<TokenView, ClientError> {
        self.call(Method::GET, paths::token(role), None).await
    }

    /// `role` is `"manager"` or `"worker"`.
    pub async fn rotate_token(&self, role: &str) -> Result<TokenView, ClientError> {
        self.call(Method::POST, paths::token_rotate(role), None)
            .await
    }

    /// Commits one empty entry through the leader (write-path benchmarks).
    pub async fn noop(&self) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(Method::POST, routes::DEV_NOOP.to_owned(), None)
            .await?;
        Ok(())
    }

    /// Runs the in-process commit benchmark on the leader.
    pub async fn bench_commit(
        &self,
        request: &BenchCommitRequest,
    ) -> Result<BenchReport, ClientError> {
        let body = serde_json::to_vec(request).expect("BenchCommitRequest serializes to JSON");
        self.call(
            Method::POST,
            routes::DEV_BENCH_COMMIT.to_owned(),
            Some(body),
        )
        .await
    }

    /// Creates the service, or updates it if one of that name exists.
    pub async fn deploy(&self, spec: &ServiceSpecDoc) -> Result<DeployView, ClientError> {
        let body = serde_json::to_vec(spec).expect("ServiceSpecDoc serializes to JSON");
        self.call(Method::POST, paths::services(), Some(body)).await
    }

    /// What deploying `spec` would change, without changing anything.
    pub async fn plan_service(&self, spec: &ServiceSpecDoc) -> Result<PlanView, ClientError> {
        let body = serde_json::to_vec(spec).expect("ServiceSpecDoc serializes to JSON");
        self.call(Method::POST, paths::service_plan(), Some(body))
            .await
    }

    pub async fn deploy_stack(
        &self,
        stack: &str,
        request: &StackDeployRequest,
    ) -> Result<PlanView, ClientError> {
        let body = serde_json::to_vec(request).expect("StackDeployRequest serializes to JSON");
        self.call(Method::POST, paths::stack(stack), Some(body))
            .await
    }

    pub async fn stacks(&self) -> Result<Vec<StackView>, ClientError> {
        self.call(Method::GET, paths::stacks(), None).await
    }

    pub async fn stack_services(&self, stack: &str) -> Result<Vec<ServiceView>, ClientError> {
        self.call(Method::GET, paths::stack_services(stack), None)
            .await
    }

    pub async fn stack_tasks(&self, stack: &str) -> Result<Vec<TaskView>, ClientError> {
        self.call(Method::GET, paths::stack_tasks(stack), None)
            .await
    }

    pub async fn remove_stack(&self, stack: &str) -> Result<RemovedStackView, ClientError> {
        self.call(Method::DELETE, paths::stack(stack), None).await
    }

    pub async fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        self.call(Method::GET, paths::services(), None).await
    }

    pub async fn service(&self, name: &str) -> Result<ServiceInspectView, ClientError> {
        self.call(Method::GET, paths::service(name), None).await
    }

    /// The tasks of the service taking connections.
    pub async fn endpoints(&self, name: &str) -> Result<Vec<EndpointView>, ClientError> {
        self.call(Method::GET, paths::service_endpoints(name), None)
            .await
    }

    /// Every task the cluster keeps for the service, history included.
    pub async fn tasks(&self, name: &str) -> Result<Vec<TaskView>, ClientError> {
        self.call(Method::GET, paths::service_tasks(name), None)
            .await
    }

    pub async fn scale(&self, name: &str, replicas: u64) -> Result<ServiceView, ClientError> {
        let body = serde_json::to_vec(&ScaleRequest { replicas })
            .expect("ScaleRequest serializes to JSON");
        self.call(Method::POST, paths::service_scale(name), Some(body))
            .await
    }

    /// Applies changes to the service's current spec (on the leader).
    pub async fn update_service(
        &self,
        name: &str,
        update: &ServiceUpdateRequest,
    ) -> Result<DeployView, ClientError> {
        let body = serde_json::to_vec(update).expect("ServiceUpdateRequest serializes to JSON");
        self.call(Method::POST, paths::service_update(name), Some(body))
            .await
    }

    /// Starts a rollback to the service's previous spec.
    pub async fn rollback_service(&self, name: &str) -> Result<DeployView, ClientError> {
        self.call(Method::POST, paths::service_rollback(name), None)
            .await
    }

    pub async fn remove_service(&self, name: &str) -> Result<RemovedServiceView, ClientError> {
        self.call(Method::DELETE, paths::service(name), None).await
    }

    fn url(&self) -> String {
        socket_url(&self.socket)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                return Err(ClientError::Timeout {
                    url: self.url(),
                    timeout: self.timeout,
                })
            }
        };
        decode(status, &bytes)
    }

    /// Connects, sends one request and reads the whole (capped) response body.
    async fn exchange(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = self.connect().await?;
        let transport = |error: &dyn std::fmt::Display| ClientError::Transport {
            url: self.url(),
            detail: error.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(&e))?;
        // The connection task must not outlive this call, even when the deadline
        // drops this future halfway.
        let _connection = AbortOnDrop(tokio::spawn(connection));

        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request paths are percent-encoded by api::paths");

        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<LengthLimitError>() {
                    ClientError::ResponseTooLarge { url: self.url() }
                } else {
                    transport(&error)
                }
            })?;
        Ok((status, collected.to_bytes()))
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        let url = self.url();
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            return Err(ClientError::PathTooLong { url, len });
        }
        UnixStream::connect(&self.socket)
            .await
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => ClientError::NoSocket { url },
                std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { url },
                std::io::ErrorKind::ConnectionRefused => ClientError::Refused { url },
                _ => ClientError::Connect {
                    url,
                    detail: error.to_string(),
                },
            })
    }
}

/// Turns a response into `T`, or into the error the server (or something in
/// between) reported.
fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|error| ClientError::BadResponse {
            status: status.as_u16(),
            detail: error.to_string(),
        });
    }
    match serde_json::from_slice::<api::ApiError>(bytes) {
        Ok(api::ApiError { error, retryable }) => Err(ClientError::Api {
            status: status.as_u16(),
            error,
            retryable,
        }),
        // Not our error body: a framework rejection or a proxy; quote it, tamed.
        Err(_) => Err(ClientError::Status {
            status: status.as_u16(),
            text: quote_body(status, bytes),
        }),
    }
}

fn quote_body(status: StatusCode, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned();
    }
    let mut quoted: String = text
        .chars()
        .take(MAX_QUOTED_BODY_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_QUOTED_BODY_CHARS {
        quoted.push('…');
    }
    quoted
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// What the test server saw of one request.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Seen {
        pub method: String,
        pub target: String,
        pub body: String,
    }

    /// Answers a request from its method, its target and how many came before.
    pub(crate) type Route = Arc<dyn Fn(&str, &str, usize) -> (u16, String) + Send + Sync>;

    /// A canned answer: status code and body, or silence.
    #[derive(Clone)]
    pub(crate) enum Reply {
        Json(u16, String),
        /// Answers by method and target (and how many requests came before).
        Route(Route),
        Silent,
    }

    /// A hand-rolled HTTP/1.1 responder on a Unix socket in a temporary directory:
    /// it answers every request with `reply` and records what it saw.
    pub(crate) struct TestServer {
        pub dir: tempfile::TempDir,
        pub seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl TestServer {
        pub fn socket(&self) -> PathBuf {
            self.dir.path().join("shoal.sock")
        }

        pub fn client(&self) -> ApiClient {
            ApiClient::new(self.socket()).with_timeout(Duration::from_secs(5))
        }

        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub(crate) fn serve(reply: Reply) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("shoal.sock")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorder = Arc::clone(&recorder);
                let reply = reply.clone();
                tokio::spawn(async move { answer(stream, reply, recorder).await });
            }
        });
        TestServer { dir, seen, task }
    }

    async fn answer(mut stream: UnixStream, reply: Reply, seen: Arc<Mutex<Vec<Seen>>>) {
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "client closed before sending a request head");
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
        let mut request_line = head.lines().next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_owned();
        let target = request_line.next().unwrap().to_owned();
        let content_length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buffer.len() < head_end + content_length {
            let mut chunk = [0u8; 1024];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "client closed before sending the body");
            buffer.extend_from_slice(&chunk[..read]);
        }
        let body = String::from_utf8(buffer[head_end..head_end + content_length].to_vec()).unwrap();
        let earlier = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                method: method.clone(),
                target: target.clone(),
                body,
            });
            seen.len() - 1
        };
        let reply = match reply {
            Reply::Route(route) => {
                let (status, body) = route(&method, &target, earlier);
                Reply::Json(status, body)
            }
            other => other,
        };
        match reply {
            Reply::Json(status, body) => {
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
            Reply::Silent => std::future::pending::<()>().await,
            Reply::Route(_) => unreachable!("routes were answered above"),
        }
    }

    pub(crate) fn sample_node(id: u64, name: &str) -> NodeView {
        NodeView {
            id,
            name: name.into(),
            addr: format!("127.0.0.{id}:4500"),
            role: "manager".into(),
            status: "ready".into(),
            availability: "active".into(),
            leader: id == 1,
            voter: true,
            labels: BTreeMap::new(),
            nano_cpus: 2_000_000_000,
            memory_bytes: 8 << 30,
            version: "0.1.0".into(),
            status_message: String::new(),
            joined_at_ms: 1_700_000_000_000,
            status_changed_at_ms: 1_700_000_000_000,
            engine_error: None,
        }
    }

    #[tokio::test]
    async fn success_decodes_the_body() {
        let nodes = vec![sample_node(1, "n1"), sample_node(2, "n2")];
        let server = serve(Reply::Json(200, serde_json::to_string(&nodes).unwrap()));
        let got = server.client().nodes().await.unwrap();
        assert_eq!(got, nodes);
        assert_eq!(
            server.seen(),
            vec![Seen {
                method: "GET".into(),
                target: "/v1/nodes".into(),
                body: String::new()
            }]
        );
    }

    #[tokio::test]
    async fn requests_carry_method_path_and_body() {
        let node = serde_json::to_string(&sample_node(2, "n2")).unwrap();
        let server = serve(Reply::Json(200, node));
        let client = server.client();
        let update = NodeUpdate {
            availability: Some("drain".into()),
            ..NodeUpdate::default()
        };
        client.update_node("n 2", &update).await.unwrap();
        client.promote("n2").await.unwrap();
        client.demote("2").await.unwrap();
        client.node("n2").await.unwrap();

        let seen = server.seen();
        let lines: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        assert_eq!(
            lines,
            [
                "POST /v1/nodes/n%202/update",
                "POST /v1/nodes/n2/promote",
                "POST /v1/nodes/2/demote",
                "GET /v1/nodes/n2",
            ]
        );
        let body: NodeUpdate = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(body, update);
    }

    #[tokio::test]
    async fn remove_and_tokens() {
        let server = serve(Reply::Json(200, r#"{"id":3}"#.into()));
        let removed = server.client().remove_node("n3", true).await.unwrap();
        assert_eq!(removed, RemovedView { id: 3 });
        assert_eq!(server.seen()[0].target, "/v1/nodes/n3?force=true");
        assert_eq!(server.seen()[0].method, "DELETE");

        let token = TokenView {
            role: "worker".into(),
            token: "tok".into(),
            join_command: "shoal join 127.0.0.1:4500 --token tok".into(),
        };
        let server = serve(Reply::Json(200, serde_json::to_string(&token).unwrap()));
        assert_eq!(server.client().rotate_token("worker").await.unwrap(), token);
        assert_eq!(server.client().token("worker").await.unwrap(), token);
        let targets: Vec<String> = server
            .seen()
            .into_iter()
            .map(|s| format!("{} {}", s.method, s.target))
            .collect();
        assert_eq!(
            targets,
            ["POST /v1/tokens/worker/rotate", "GET /v1/tokens/worker"]
        );
    }

    #[tokio::test]
    async fn api_error_shows_the_server_sentence_alone() {
        let body = r#"{"error":"node \"n9\" does not exist; list nodes with `shoal node ls`","retryable":false}"#;
        let server = serve(Reply::Json(404, body.into()));
        let error = server.client().node("n9").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "node \"n9\" does not exist; list nodes with `shoal node ls`"
        );
        assert!(!error.is_retryable());

        let body = r#"{"error":"no leader elected yet","retryable":true}"#;
        let server = serve(Reply::Json(503, body.into()));
        let error = server.client().status().await.unwrap_err();
        assert!(matches!(error, ClientError::Api { status: 503, .. }));
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn foreign_error_bodies_are_quoted() {
        let server = serve(Reply::Json(
            422,
            "Failed to deserialize\nthe JSON body".into(),
        ));
        let error = server.client().status().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the shoal daemon answered HTTP 422: Failed to deserialize the JSON body"
        );
        let server = serve(Reply::Json(500, String::new()));
        let error = server.client().status().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the shoal daemon answered HTTP 500: Internal Server Error"
        );
    }

    #[tokio::test]
    async fn unreadable_success_body_names_version_skew() {
        let server = serve(Reply::Json(200, r#"{"id":"not a number"}"#.into()));
        let error = server.client().remove_node("n1", false).await.unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cannot read the shoal daemon's answer (HTTP 200)"));
        assert!(message.contains("same version"), "{message}");
    }

    #[tokio::test]
    async fn missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shoal.sock");
        let error = ApiClient::new(&socket).status().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot reach the shoal daemon at unix://{}: no such socket (is `shoal run` running? set -H or --data-dir)",
                socket.display()
            )
        );
    }

    #[tokio::test]
    async fn stale_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shoal.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let error = ApiClient::new(&socket).status().await.unwrap_err();
        assert!(matches!(error, ClientError::Refused { .. }), "{error:?}");
        assert!(error.to_string().contains("connection refused"));
    }

    #[tokio::test]
    async fn overlong_socket_path() {
        let socket = PathBuf::from(format!("/tmp/{}", "s".repeat(MAX_SOCKET_PATH_LEN)));
        let error = ApiClient::new(&socket).status().await.unwrap_err();
        assert!(
            matches!(error, ClientError::PathTooLong { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn silent_daemon_times_out() {
        let server = serve(Reply::Silent);
        let client = server.client().with_timeout(Duration::from_millis(200));
        let error = client.status().await.unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
        assert!(
            error.to_string().contains("did not answer within 200ms"),
            "{error}"
        );
        assert!(error.is_retryable());
    }

    pub(crate) fn sample_service(name: &str, running: u64, desired: u64) -> ServiceView {
        ServiceView {
            name: name.into(),
            mode: "replicated".into(),
            replicas_desired: desired,
            replicas_running: running,
            image: "nginx:1.27".into(),
            ports: vec!["8080:80/tcp".into()],
            version: 1,
            updated_at_ms: 1_700_000_000_000,
        }
    }

    #[tokio::test]
    async fn service_endpoints() {
        let service = sample_service("web", 0, 3);
        let deployed = DeployView {
            update: None,
            service: service.clone(),
            created: true,
            changed: true,
        };
        let tasks = vec![crate::progress::tests::task(1, "running", Some(1), 1)];
        let inspect = crate::progress::tests::service("replicated", 3, 0, 1);
        let answers = (
            serde_json::to_string(&deployed).unwrap(),
            serde_json::to_string(&vec![service.clone()]).unwrap(),
            serde_json::to_string(&inspect).unwrap(),
            serde_json::to_string(&tasks).unwrap(),
            serde_json::to_string(&service).unwrap(),
        );
        let route = move |method: &str, target: &str, _: usize| -> (u16, String) {
            let body = match (method, target) {
                ("POST", "/v1/services") => answers.0.as_str(),
                ("GET", "/v1/services") => answers.1.as_str(),
                ("GET", "/v1/services/web") => answers.2.as_str(),
                ("GET", "/v1/services/web/tasks") => answers.3.as_str(),
                ("POST", "/v1/services/web/scale") => answers.4.as_str(),
                ("DELETE", "/v1/services/web") => r#"{"name":"web"}"#,
                _ => return (404, r#"{"error":"no route","retryable":false}"#.into()),
            };
            (200, body.to_owned())
        };
        let server = serve(Reply::Route(Arc::new(route)));
        let client = server.client();
        let spec = ServiceSpecDoc {
            name: "web".into(),
            image: "nginx:1.27".into(),
            replicas: Some(3),
            ..ServiceSpecDoc::default()
        };
        assert_eq!(client.deploy(&spec).await.unwrap(), deployed);
        assert_eq!(client.services().await.unwrap(), vec![service.clone()]);
        assert_eq!(client.service("web").await.unwrap(), inspect);
        assert_eq!(client.tasks("web").await.unwrap(), tasks);
        assert_eq!(client.scale("web", 5).await.unwrap(), service);
        assert_eq!(
            client.remove_service("web").await.unwrap(),
            RemovedServiceView { name: "web".into() }
        );
        let error = client.tasks("gone").await.unwrap_err();
        assert!(error.is_not_found(), "{error:?}");

        let seen = server.seen();
        let sent: ServiceSpecDoc = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(sent, spec);
        let scale: ScaleRequest = serde_json::from_str(&seen[4].body).unwrap();
        assert_eq!(scale, ScaleRequest { replicas: 5 });
        assert_eq!(seen[5].method, "DELETE");
    }

    #[test]
    fn timeouts_read_naturally() {
        assert_eq!(format_timeout(Duration::from_secs(15)), "15s");
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500ms");
    }
}
