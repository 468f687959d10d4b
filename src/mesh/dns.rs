//! DNS for the cluster, from the endpoint table:
//!
//! - `web.shoal` → A/AAAA records of the nodes that serve the service (when
//!   it has an ingress port, every ready node the answering node knows of:
//!   a manager knows all, a worker the nodes it routes to; else the nodes
//!   running its tasks);
//! - `tasks.web.shoal` → the nodes of its running tasks;
//! - `_http._tcp.web.shoal` → SRV records (published port, `node-N.nodes.shoal`
//!   targets, with their addresses as additional records); the first label
//!   names a port by its number (published or target) or a well-known name;
//! - `node-N.nodes.shoal` → the node's address.
//!
//! [`answer`] decides, purely; [`run`] serves it with hickory-server on UDP
//! and TCP, on the node's addresses and on the engine's bridge gateway.
//! The task nodes of a service without ports reach a worker only once it
//! asks for them ([`super::table::Interest`]): the first query about such a
//! service asks and waits for them (at most [`SECTION_WAIT`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use shoal_raft::{NodeId, Protocol};

use super::table::EndpointTable;
use super::Mesh;
use crate::node::Node;

/// The zone served.
pub const ZONE: &str = "shoal";
/// The port used where 53 is taken (default addresses only).
pub const FALLBACK_PORT: u16 = 5354;
/// Answers change with the table: keep caches short.
const TTL: u32 = 5;
/// Idle TCP DNS connections are closed after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a query waits for a service's task nodes the node has not
/// asked for before (one round trip to the leader, usually).
const SECTION_WAIT: Duration = Duration::from_secs(1);
/// Responses queued per TCP DNS connection.
const TCP_RESPONSE_BUFFER: usize = 16;

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rec {
    Addr {
        name: String,
        ip: IpAddr,
    },
    Srv {
        name: String,
        port: u16,
        target: String,
    },
}

/// What to answer for a name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; `answers` may be empty (no data of that type).
    Records {
        answers: Vec<Rec>,
        additionals: Vec<Rec>,
    },
    NxDomain,
    /// Not in the cluster's zone.
    Refused,
}

/// The name of a node's address record.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.nodes.{ZONE}")
}

/// Service names a port may be asked for by in SRV queries, besides its numbers.
fn well_known(label: &str) -> &'static [u16] {
    match label {
        "http" => &[80, 8080],
        "https" => &[443, 8443],
        "dns" | "domain" => &[53],
        "ssh" => &[22],
        "postgres" | "postgresql" => &[5432],
        "mysql" => &[3306],
        "redis" => &[6379],
        _ => &[],
    }
}

/// The answer to a query for `qname` (any case, trailing dot or not) and `qtype`.
pub fn answer(table: &EndpointTable, qname: &str, qtype: RecordType) -> Answer {
    let name = qname.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = name
        .strip_suffix(ZONE)
        .and_then(|r| r.strip_suffix('.'))
        .filter(|r| !r.is_empty())
    else {
        return if name == ZONE {
            Answer::Records {
                answers: Vec::new(),
                additionals: Vec::new(),
            }
        } else {
            Answer::Refused
        };
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let addr_type = |ip: &IpAddr| match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    };
    let addrs = |name: &str, nodes: &BTreeSet<NodeId>| -> Vec<Rec> {
        nodes
            .iter()
            .filter_map(|id| node_ip(table, *id))
            .filter(|ip| addr_type(ip))
            .map(|ip| Rec::Addr {
                name: name.to_string(),
                ip,
            })
            .collect()
    };
    let records = |answers: Vec<Rec>, additionals: Vec<Rec>| Answer::Records {
        answers,
        additionals,
    };
    match labels.as_slice() {
        [node, "nodes"] => {
            let id = node.strip_prefix("node-").and_then(|n| n.parse().ok());
            match id.filter(|id| node_ip(table, *id).is_some()) {
                Some(id) => records(addrs(&name, &BTreeSet::from([id])), Vec::new()),
                None => Answer::NxDomain,
            }
        }
        ["tasks", service] => match table.services.get(*service) {
            Some(s) => {
                let nodes = s.task_nodes.iter().map(|n| n.id).collect();
                records(addrs(&name, &nodes), Vec::new())
            }
            None => Answer::NxDomain,
        },
        [service] => match serving_nodes(table, service) {
            Some(nodes) => records(addrs(&name, &nodes), Vec::new()),
            None => Answer::NxDomain,
        },
        [port_label, proto_label, service] if port_label.starts_with('_') => {
            let Some(s) = table.services.get(*service) else {
                return Answer::NxDomain;
            };
            let protocol = match *proto_label {
                "_tcp" => Protocol::Tcp,
                "_udp" => Protocol::Udp,
                _ => return Answer::NxDomain,
            };
            if qtype != RecordType::SRV && qtype != RecordType::ANY {
                return records(Vec::new(), Vec::new());
            }
            let label = &port_label[1..];
            let nodes = serving_nodes(table, service).unwrap_or_default();
            let mut answers = Vec::new();
            for port in s.ports.iter().filter(|p| p.protocol == protocol) {
                let named = label == port.published.to_string()
                    || label == port.target.to_string()
                    || well_known(label).contains(&port.target)
                    || well_known(label).contains(&port.published);
                if !named {
                    continue;
                }
                let port_nodes: BTreeSet<NodeId> = if port.is_host() {
                    s.task_nodes.iter().map(|n| n.id).collect()
                } else {
                    nodes.clone()
                };
                for id in port_nodes {
                    answers.push(Rec::Srv {
                        name: name.clone(),
                        port: port.published,
                        target: node_name(id),
                    });
                }
            }
            let targets: BTreeSet<NodeId> = answers
                .iter()
                .filter_map(|r| match r {
                    Rec::Srv { target, .. } => target
                        .strip_prefix("node-")
                        .and_then(|t| t.split('.').next())
                        .and_then(|id| id.parse().ok()),
                    Rec::Addr { .. } => None,
                })
                .collect();
            let additionals = targets
                .into_iter()
                .filter_map(|id| {
                    let ip = node_ip(table, id)?;
                    Some(Rec::Addr {
                        name: node_name(id),
                        ip,
                    })
                })
                .collect();
            records(answers, additionals)
        }
        _ => Answer::NxDomain,
    }
}

/// A node's address: from its record, or, on a worker, which holds the
/// records of the nodes it routes to only, from a service's task nodes.
fn node_ip(table: &EndpointTable, id: NodeId) -> Option<IpAddr> {
    if let Some(node) = table.nodes.get(&id) {
        return node.ip();
    }
    table.services.values().find_map(|s| {
        let at = s.task_nodes.binary_search_by_key(&id, |n| n.id).ok()?;
        s.task_nodes[at].ip()
    })
}

/// The service a query for `qname` is about, if it names one.
fn service_named(qname: &str) -> Option<String> {
    let name = qname.trim_end_matches('.').to_ascii_lowercase();
    let rest = name.strip_suffix(ZONE)?.strip_suffix('.')?;
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [_, "nodes"] => None,
        ["tasks", service] | [service] => Some(service.to_string()),
        [port, _, service] if port.starts_with('_') => Some(service.to_string()),
        _ => None,
    }
}

/// Makes sure the table holds `service`'s task nodes when it is a
/// service without ports (a section, which a node gets once asked for):
/// asks for it and waits for it, at most [`SECTION_WAIT`]. Later queries
/// find it held.
async fn await_section(mesh: &Mesh, service: &str) {
    let mut tables = mesh.subscribe();
    let is_section = tables
        .borrow_and_update()
        .services
        .get(service)
        .is_some_and(super::table::is_section);
    if !is_section || mesh.holds(service) || !mesh.want(service) {
        return;
    }
    let _ = tokio::time::timeout(SECTION_WAIT, async {
        while !mesh.holds(service) {
            if tables.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// The nodes that answer for a service: every ready node the table holds
/// when it has an ingress port, else the nodes running its tasks. `None`
/// for no service.
fn serving_nodes(table: &EndpointTable, service: &str) -> Option<BTreeSet<NodeId>> {
    let s = table.services.get(service)?;
    Some(if s.ports.iter().any(|p| !p.is_host()) {
        table
            .nodes
            .values()
            .filter(|n| n.ready)
            .map(|n| n.id)
            .collect()
    } else {
        s.task_nodes.iter().map(|n| n.id).collect()
    })
}

fn to_record(rec: &Rec) -> Option<Record> {
    let fqdn = |n: &str| Name::from_ascii(format!("{n}.")).ok();
    Some(match rec {
        Rec::Addr { name, ip } => {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            Record::from_rdata(fqdn(name)?, TTL, data)
        }
        Rec::Srv { name, port, target } => Record::from_rdata(
            fqdn(name)?,
            TTL,
            RData::SRV(SRV::new(0, 10, *port, fqdn(target)?)),
        ),
    })
}

struct Handler {
    node: Arc<Node>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let builder = MessageResponseBuilder::from_message_request(request);
        let (answers, additionals) = match request.request_info() {
            Ok(info) => {
                let qname = info.query.name().to_string();
                if let Some(service) = service_named(&qname) {
                    await_section(&self.node.mesh, &service).await;
                }
                match answer(&self.node.mesh.table(), &qname, info.query.query_type()) {
                    Answer::Records {
                        answers,
                        additionals,
                    } => (
                        answers.iter().filter_map(to_record).collect(),
                        additionals.iter().filter_map(to_record).collect(),
                    ),
                    Answer::NxDomain => {
                        metadata.response_code = ResponseCode::NXDomain;
                        (Vec::new(), Vec::new())
                    }
                    Answer::Refused => {
                        metadata.authoritative = false;
                        metadata.response_code = ResponseCode::Refused;
                        (Vec::new(), Vec::new())
                    }
                }
            }
            Err(_) => {
                metadata.response_code = ResponseCode::FormErr;
                (Vec::new(), Vec::new())
            }
        };
        let answers: Vec<Record> = answers;
        let additionals: Vec<Record> = additionals;
        let response = builder.build(metadata, answers.iter(), [], [], additionals.iter());
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                hickory_server::proto::op::Header {
                    metadata,
                    counts: Default::default(),
                }
                .into()
            }
        }
    }
}

/// Serves DNS on the configured addresses (UDP and TCP), and with the
/// default ones also on the engine's bridge gateway, for as long as the
/// node runs.
pub async fn run(node: Arc<Node>) {
    if node.mesh.config.dns_fallback {
        tokio::spawn(serve_on_bridge(node.clone()));
    }
    let addrs = node.mesh.config.dns.clone();
    serve(node, &addrs).await;
}

/// With the default addresses, DNS is also served on the engine's bridge
/// gateway (where containers reach the host), once the engine says which
/// address that is.
async fn serve_on_bridge(node: Arc<Node>) {
    let mut wait = Duration::from_millis(200);
    let gateway = loop {
        if let Some(runtime) = node.mesh.runtime.get() {
            match tokio::time::timeout(Duration::from_secs(5), runtime.bridge_gateway()).await {
                Ok(Ok(gateway)) => break gateway,
                Ok(Err(e)) => tracing::debug!(error = %e, "no bridge gateway from the engine yet"),
                Err(_) => tracing::debug!("the engine did not name its bridge gateway in time"),
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    };
    let Some(ip) = gateway else { return };
    if node.mesh.config.dns.iter().any(|a| a.ip() == ip) {
        return;
    }
    serve(node, &[SocketAddr::new(ip, 53)]).await;
}

/// Serves DNS on `addrs` (each, with the default addresses, on
/// [`FALLBACK_PORT`] where 53 is taken) until the server stops.
async fn serve(node: Arc<Node>, addrs: &[SocketAddr]) {
    let mut server = Server::new(Handler { node: node.clone() });
    let mut serving = 0;
    for addr in addrs {
        let mut candidates = vec![*addr];
        if node.mesh.config.dns_fallback {
            candidates.push(SocketAddr::new(addr.ip(), FALLBACK_PORT));
        }
        for candidate in candidates {
            match bind(candidate).await {
                Ok((udp, tcp)) => {
                    server.register_socket(udp);
                    server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
                    tracing::info!(addr = %candidate, "answering DNS for *.{ZONE}");
                    serving += 1;
                    break;
                }
                Err(e) => {
                    tracing::warn!(addr = %candidate, error = %e, "cannot serve DNS here")
                }
            }
        }
    }
    if serving == 0 {
        return;
    }
    if let Err(e) = server.block_until_done().await {
        tracing::error!(error = %e, "the DNS server stopped");
    }
}

async fn bind(
    addr: SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let udp = tokio::net::UdpSocket::bind(addr).await?;
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    Ok((udp, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::{task_nodes_at, Backend, MeshNode, ServiceEndpoints};
    use shoal_raft::PortSpec;

    fn table() -> EndpointTable {
        let mut t = EndpointTable::default();
        for id in 1..=3 {
            t.nodes.insert(
                id,
                MeshNode {
                    id,
                    name: format!("n{id}"),
                    addr: format!("10.0.0.{id}:4500"),
                    ready: id != 3,
                },
            );
        }
        let backend = |task: &str, node_id| Backend {
            task_id: task.into(),
            slot: 1,
            node_id,
            container_id: None,
            health: None,
            ports: Vec::new(),
        };
        t.services.insert(
            "web".into(),
            ServiceEndpoints {
                ports: vec![PortSpec::ingress(8080, 80, Protocol::Tcp)],
                backends: vec![backend("a", 2), backend("b", 2)],
                task_nodes: task_nodes_at(&[2]),
            },
        );
        t.services.insert(
            "db".into(),
            ServiceEndpoints {
                ports: vec![PortSpec::host(5432, 5432, Protocol::Tcp)],
                backends: vec![backend("c", 1)],
                task_nodes: task_nodes_at(&[1]),
            },
        );
        t
    }

    fn addr(name: &str, last: u8) -> Rec {
        Rec::Addr {
            name: name.into(),
            ip: IpAddr::from([10, 0, 0, last]),
        }
    }

    fn check(qname: &str, qtype: RecordType, expected: Answer) {
        assert_eq!(answer(&table(), qname, qtype), expected, "{qname} {qtype}");
    }

    fn found(answers: Vec<Rec>, additionals: Vec<Rec>) -> Answer {
        Answer::Records {
            answers,
            additionals,
        }
    }

    #[test]
    fn service_names_resolve_to_the_nodes_that_serve_them() {
        use RecordType::*;
        // Ingress: every ready node.
        check(
            "web.shoal.",
            A,
            found(vec![addr("web.shoal", 1), addr("web.shoal", 2)], vec![]),
        );
        check(
            "WEB.shoal",
            A,
            found(vec![addr("web.shoal", 1), addr("web.shoal", 2)], vec![]),
        );
        // Host mode: the task's nodes.
        check("db.shoal", A, found(vec![addr("db.shoal", 1)], vec![]));
        check(
            "tasks.web.shoal",
            A,
            found(vec![addr("tasks.web.shoal", 2)], vec![]),
        );
        check("web.shoal", AAAA, found(vec![], vec![]));
        check(
            "node-3.nodes.shoal",
            A,
            found(vec![addr("node-3.nodes.shoal", 3)], vec![]),
        );
        check("nope.shoal", A, Answer::NxDomain);
        check("node-9.nodes.shoal", A, Answer::NxDomain);
        check("example.com", A, Answer::Refused);
    }

    #[test]
    fn srv_records_name_the_published_port_on_each_serving_node() {
        let srv = |node: NodeId| Rec::Srv {
            name: "_http._tcp.web.shoal".into(),
            port: 8080,
            target: node_name(node),
        };
        check(
            "_http._tcp.web.shoal",
            RecordType::SRV,
            found(
                vec![srv(1), srv(2)],
                vec![addr("node-1.nodes.shoal", 1), addr("node-2.nodes.shoal", 2)],
            ),
        );
        let by_number = answer(&table(), "_8080._tcp.web.shoal", RecordType::SRV);
        assert!(matches!(by_number, Answer::Records { answers, .. } if answers.len() == 2));
        check(
            "_http._udp.web.shoal",
            RecordType::SRV,
            found(vec![], vec![]),
        );
        check(
            "_ssh._tcp.web.shoal",
            RecordType::SRV,
            found(vec![], vec![]),
        );
        check("_http._sctp.web.shoal", RecordType::SRV, Answer::NxDomain);
    }
}
