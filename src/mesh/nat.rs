//! Kernel forwarding (`--mesh-forward kernel`): the node's own tasks get
//! their share of an ingress TCP port's new connections by destination NAT
//! in nftables, so those bytes never cross the daemon.
//!
//! Each new connection to a published port on one of the node's own
//! (non-loopback) addresses draws a turn from a kernel counter over all the
//! service's tasks: a turn of one of this node's tasks is rewritten to that
//! container; any other turn is left alone and reaches the mesh's listener,
//! which sends it to a task on another node (over QUIC, as without kernel
//! forwarding). `local-first` gives every turn to the node's own tasks when
//! it runs any. What the node's tasks get this way is round-robin, and
//! it gives up what the proxy does per connection: least-connections
//! counts, connection caps, the idle timeout, the retry on another task,
//! and the PROXY header (ports asking for it stay on the proxy; the kernel
//! path keeps the client's address anyway). Connections already forwarded
//! stay with their container when the rules change (connection tracking).
//!
//! [`plan`] and [`script`] are pure; [`PacketFilter`] is the edge (`nft`
//! and `iptables`), [`run`] keeps the kernel's rules equal to the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_raft::{BalancePolicy, NodeId, Protocol};

use super::table::{ingress_ports, EndpointTable};
use crate::node::Node;

/// The connection-mark bit set on every connection the rules forward, so
/// the firewall's forward chain can let exactly those through.
pub const CONN_MARK: u32 = 0x1000_0000;
/// Longest wait for `nft` or `iptables`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the rules are written again while a task's address is not
/// known yet (its container is still starting) or `nft` failed.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often the rules are written again with no change to the table: a
/// firewall reload or an engine restart may have removed them.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The kernel's share of one published port on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub published: u16,
    /// Turns per round: every task of the service (this node's only, for
    /// `local-first`).
    pub turns: usize,
    /// This node's tasks, which take turns `0..local.len()`; the other
    /// turns go to the mesh's listener.
    pub local: Vec<SocketAddrV4>,
}

/// The rules for `table` on node `me`: one per ingress TCP port without a
/// PROXY header where this node runs a task whose address `address` knows
/// (by container id). The second value is whether some task of this node
/// was left out for want of an address.
pub fn plan(
    table: &EndpointTable,
    me: NodeId,
    address: impl Fn(&str) -> Option<Ipv4Addr>,
) -> (Vec<PortRule>, bool) {
    let (ports, _conflicts) = ingress_ports(table);
    let mut rules = Vec::new();
    let mut incomplete = false;
    for ((published, protocol), (service, port)) in ports {
        if protocol != Protocol::Tcp || port.proxy_protocol {
            continue;
        }
        let Some(entry) = table.services.get(&service) else {
            continue;
        };
        let mut turns = 0;
        let mut local = Vec::new();
        for backend in &entry.backends {
            let Some(target) = backend.target(published, Protocol::Tcp) else {
                continue;
            };
            turns += 1;
            if backend.node_id != me {
                continue;
            }
            match backend.container_id.as_deref().and_then(&address) {
                Some(ip) => local.push(SocketAddrV4::new(ip, target)),
                None => incomplete = true,
            }
        }
        if local.is_empty() {
            continue;
        }
        if port.policy == BalancePolicy::LocalFirst {
            turns = local.len();
        }
        rules.push(PortRule {
            published,
            turns,
            local,
        });
    }
    (rules, incomplete)
}

/// The nftables table of node `me`.
pub fn table_name(me: NodeId) -> String {
    format!("shoal_mesh_{me}")
}

/// An `nft -f` script that replaces node `me`'s table with `rules`, for
/// connections to `bind` (every non-loopback local address when
/// unspecified), in one transaction. No rules: the table is removed.
pub fn script(me: NodeId, bind: Ipv4Addr, rules: &[PortRule]) -> String {
    let name = table_name(me);
    // Declaring the table first makes the delete valid when it is absent.
    let mut out = format!("table ip {name}\ndelete table ip {name}\n");
    if rules.is_empty() {
        return out;
    }
    let to_node = if bind.is_unspecified() {
        "fib daddr type local ip daddr != 127.0.0.0/8".to_string()
    } else {
        format!("ip daddr {bind}")
    };
    let _ = writeln!(out, "table ip {name} {{");
    let mut dispatch = String::new();
    for rule in rules {
        let mut turns = Vec::new();
        for (i, target) in rule.local.iter().enumerate() {
            let chain = format!("port_{}_{i}", rule.published);
            let _ = writeln!(
                out,
                "  chain {chain} {{\n    meta l4proto tcp ct mark set ct mark or {CONN_MARK:#x} dnat to {target}\n  }}"
            );
            turns.push(format!("{i} : goto {chain}"));
        }
        for i in rule.local.len()..rule.turns {
            turns.push(format!("{i} : accept"));
        }
        let _ = writeln!(
            dispatch,
            "    tcp dport {} numgen inc mod {} vmap {{ {} }}",
            rule.published,
            rule.turns,
            turns.join(", ")
        );
    }
    let _ = write!(
        out,
        "  chain ports {{\n{dispatch}  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    {to_node} jump ports\n  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n    {to_node} jump ports\n  }}\n}}\n"
    );
    out
}

/// The kernel's packet filter.
pub trait PacketFilter: Send + Sync {
    /// Runs an `nft -f` script.
    fn apply<'a>(&'a self, script: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Lets forwarded connections marked [`CONN_MARK`] through the
    /// container engine's forward filter, where it has one.
    fn allow_marked<'a>(&'a self) -> BoxFuture<'a, Result<(), String>>;
}

/// `nft` and `iptables` on this host.
pub struct Nft;

/// Runs `program args`, feeding it `input`, within [`COMMAND_TIMEOUT`];
/// the exit status and what it printed on stderr.
async fn command(program: &str, args: &[&str], input: &str) -> Result<(bool, String), String> {
    use tokio::io::AsyncWriteExt;
    let run = async {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| format!("{program}: {e}"))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("{program}: {e}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    };
    tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| format!("{program} did not finish within {COMMAND_TIMEOUT:?}"))?
}

/// The engine's chain for the host's own forward rules (Docker's).
const ENGINE_USER_CHAIN: &str = "DOCKER-USER";

impl PacketFilter for Nft {
    fn apply<'a>(&'a self, script: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match command("nft", &["-f", "-"], script).await? {
                (true, _) => Ok(()),
                (false, err) => Err(format!("nft refused the rules: {err}")),
            }
        })
    }

    fn allow_marked<'a>(&'a self) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mark = format!("{CONN_MARK:#x}/{CONN_MARK:#x}");
            let rule = |op| {
                let chain = ENGINE_USER_CHAIN;
                [
                    "-w", "5", op, chain, "-m", "connmark", "--mark", &mark, "-j", "ACCEPT",
                ]
            };
            // No such chain (or no iptables): the engine filters nothing
            // it forwards.
            let listed = command("iptables", &["-w", "5", "-S", ENGINE_USER_CHAIN], "").await;
            if !listed.is_ok_and(|(exists, _)| exists)
                || command("iptables", &rule("-C"), "").await?.0
            {
                return Ok(());
            }
            match command("iptables", &rule("-I"), "").await? {
                (true, _) => Ok(()),
                (false, err) => Err(format!(
                    "iptables refused the {ENGINE_USER_CHAIN} rule: {err}"
                )),
            }
        })
    }
}

/// Checks at start that kernel forwarding can work with `bind`: an IPv4
/// address other than loopback (connections to loopback cannot be
/// rewritten to a container), and an `nft` that accepts rules.
pub async fn check(bind: IpAddr, filter: &dyn PacketFilter) -> Result<(), String> {
    let bind = match bind {
        IpAddr::V4(v4) if !v4.is_loopback() => v4,
        other => {
            return Err(format!(
                "--mesh-forward kernel needs an IPv4 listen address other than loopback \
                 (connections to {other} cannot be forwarded to a container); allowed: \
                 a host address or 0.0.0.0, or --mesh-forward proxy"
            ))
        }
    };
    // Writes and removes a table no node uses (ids start at 1).
    filter.apply(&script(0, bind, &[])).await.map_err(|e| {
        format!("--mesh-forward kernel needs nftables and root ({e}); or use --mesh-forward proxy")
    })
}

/// Keeps the kernel's rules equal to the endpoint table until the node
/// stops (written again every [`RESYNC_EVERY`] in case something removed
/// them); removes them when the table empties.
pub async fn run(node: Arc<Node>, filter: Arc<dyn PacketFilter>) {
    let mesh = node.mesh.clone();
    let IpAddr::V4(bind) = mesh.config.bind_ip else {
        return;
    };
    let mut tables = mesh.subscribe();
    let mut written: Option<String> = None;
    let mut failing = false;
    loop {
        let table = tables.borrow_and_update().clone();
        let addresses = local_addresses(&mesh, &table).await;
        let (rules, incomplete) = plan(&table, mesh.me, |id| addresses.get(id).copied());
        let text = script(mesh.me, bind, &rules);
        let mut retry = incomplete;
        if written.as_deref() != Some(text.as_str()) {
            let outcome = async {
                if !rules.is_empty() {
                    filter.allow_marked().await?;
                }
                filter.apply(&text).await
            }
            .await;
            match outcome {
                Ok(()) => {
                    if failing {
                        tracing::info!("kernel forwarding rules written again");
                    }
                    failing = false;
                    mesh.set_kernel_ports(rules.iter().map(|r| r.published).collect());
                    tracing::debug!(ports = rules.len(), "kernel forwarding rules written");
                    written = Some(text);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot write kernel forwarding rules; retrying");
                    }
                    failing = true;
                    // Connections the old rules would send to a task that
                    // is gone must not rely on them: the proxy takes all.
                    mesh.set_kernel_ports(Default::default());
                    retry = true;
                }
            }
        }
        let wait = if retry { RETRY_EVERY } else { RESYNC_EVERY };
        match tokio::time::timeout(wait, tables.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) if retry => {}
            Err(_) => written = None,
        }
    }
}

/// The IPv4 addresses of this node's containers that serve an ingress port.
async fn local_addresses(mesh: &super::Mesh, table: &EndpointTable) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    let containers = table
        .services
        .values()
        .flat_map(|s| s.backends.iter())
        .filter(|b| b.node_id == mesh.me)
        .filter_map(|b| b.container_id.clone());
    for id in containers {
        match super::ingress::container_ip(mesh, &id).await {
            Ok(IpAddr::V4(ip)) => {
                out.insert(id, ip);
            }
            Ok(IpAddr::V6(_)) => {}
            Err(e) => {
                tracing::debug!(container = %id, error = %e, "no address for kernel forwarding yet")
            }
        }
    }
    out
}

/// Removes node `me`'s rules (at shutdown).
pub async fn clear(me: NodeId, filter: &dyn PacketFilter) {
    if let Err(e) = filter.apply(&script(me, Ipv4Addr::UNSPECIFIED, &[])).await {
        tracing::warn!(error = %e, "cannot remove the kernel forwarding rules");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::{Backend, ServiceEndpoints};
    use shoal_raft::PortSpec;

    fn backend(task: &str, node: NodeId, port: PortSpec) -> Backend {
        Backend {
            task_id: task.into(),
            slot: 1,
            node_id: node,
            container_id: Some(format!("c-{task}")),
            health: None,
            ports: vec![port],
        }
    }

    fn table(port: PortSpec, tasks: &[(&str, NodeId)]) -> EndpointTable {
        let mut t = EndpointTable::default();
        t.services.insert(
            "web".into(),
            ServiceEndpoints {
                ports: vec![port],
                backends: tasks.iter().map(|(id, n)| backend(id, *n, port)).collect(),
                task_nodes: Vec::new(),
            },
        );
        t
    }

    fn addr(id: &str) -> Option<Ipv4Addr> {
        match id {
            "c-t1" => Some(Ipv4Addr::new(172, 17, 0, 2)),
            "c-t2" => Some(Ipv4Addr::new(172, 17, 0, 3)),
            _ => None,
        }
    }

    /// Records scripts; refuses them all when `refuse` is set.
    struct FakeFilter {
        refuse: bool,
        applied: std::sync::Mutex<Vec<String>>,
    }

    impl PacketFilter for FakeFilter {
        fn apply<'a>(&'a self, script: &'a str) -> BoxFuture<'a, Result<(), String>> {
            self.applied.lock().unwrap().push(script.to_string());
            let refuse = self.refuse;
            Box::pin(async move {
                if refuse {
                    Err("nft refused the rules: Operation not permitted".into())
                } else {
                    Ok(())
                }
            })
        }
        fn allow_marked<'a>(&'a self) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn start_check_refuses_loopback_ipv6_and_a_host_without_nftables() {
        let ok = FakeFilter {
            refuse: false,
            applied: Default::default(),
        };
        for bad in ["127.0.0.1", "::1", "2001:db8::1"] {
            let err = check(bad.parse().unwrap(), &ok).await.unwrap_err();
            assert!(
                err.contains("IPv4 listen address other than loopback"),
                "{err}"
            );
            assert!(err.contains("--mesh-forward proxy"), "{err}");
        }
        assert!(ok.applied.lock().unwrap().is_empty());
        check("10.0.0.1".parse().unwrap(), &ok).await.unwrap();
        check("0.0.0.0".parse().unwrap(), &ok).await.unwrap();
        // The probe touches only a table no node uses.
        assert!(ok
            .applied
            .lock()
            .unwrap()
            .iter()
            .all(|s| s == "table ip shoal_mesh_0\ndelete table ip shoal_mesh_0\n"));
        let refusing = FakeFilter {
            refuse: true,
            applied: Default::default(),
        };
        let err = check("10.0.0.1".parse().unwrap(), &refusing)
            .await
            .unwrap_err();
        assert!(err.contains("needs nftables and root"), "{err}");
        assert!(err.contains("Operation not permitted"), "{err}");
    }

    #[test]
    fn local_tasks_take_their_turns_and_the_rest_fall_through() {
        let port = PortSpec::ingress(8080, 80, Protocol::Tcp);
        let t = table(port, &[("t1", 1), ("t2", 1), ("t3", 2)]);
        let (rules, incomplete) = plan(&t, 1, addr);
        assert!(!incomplete);
        assert_eq!(
            rules,
            vec![PortRule {
                published: 8080,
                turns: 3,
                local: vec![
                    "172.17.0.2:80".parse().unwrap(),
                    "172.17.0.3:80".parse().unwrap()
                ],
            }]
        );
        let text = script(1, Ipv4Addr::new(10, 0, 0, 1), &rules);
        assert!(text.starts_with("table ip shoal_mesh_1\ndelete table ip shoal_mesh_1\n"));
        assert!(text.contains(
            "tcp dport 8080 numgen inc mod 3 vmap { 0 : goto port_8080_0, 1 : goto port_8080_1, 2 : accept }"
        ));
        assert!(text.contains("ct mark set ct mark or 0x10000000 dnat to 172.17.0.3:80"));
        assert!(text.contains("ip daddr 10.0.0.1 jump ports"));
        assert!(text.contains("type nat hook output priority -100"));
    }

    #[test]
    fn nodes_without_tasks_proxy_ports_and_udp_get_no_rule() {
        let tcp = PortSpec::ingress(8080, 80, Protocol::Tcp);
        assert_eq!(plan(&table(tcp, &[("t1", 2)]), 1, addr).0, vec![]);
        let udp = PortSpec::ingress(5353, 53, Protocol::Udp);
        assert_eq!(plan(&table(udp, &[("t1", 1)]), 1, addr).0, vec![]);
        let proxied = PortSpec {
            proxy_protocol: true,
            ..tcp
        };
        assert_eq!(plan(&table(proxied, &[("t1", 1)]), 1, addr).0, vec![]);
        let host = PortSpec::host(8080, 80, Protocol::Tcp);
        assert_eq!(plan(&table(host, &[("t1", 1)]), 1, addr).0, vec![]);
    }

    #[test]
    fn local_first_gives_every_turn_to_the_node_own_tasks() {
        let port = PortSpec {
            policy: BalancePolicy::LocalFirst,
            ..PortSpec::ingress(8080, 80, Protocol::Tcp)
        };
        let (rules, _) = plan(&table(port, &[("t1", 1), ("t3", 2), ("t4", 3)]), 1, addr);
        assert_eq!(rules[0].turns, 1);
        assert!(script(1, Ipv4Addr::UNSPECIFIED, &rules)
            .contains("tcp dport 8080 numgen inc mod 1 vmap { 0 : goto port_8080_0 }"));
    }

    #[test]
    fn a_task_without_an_address_is_left_out_and_reported() {
        let port = PortSpec::ingress(8080, 80, Protocol::Tcp);
        let (rules, incomplete) = plan(&table(port, &[("t1", 1), ("t9", 1)]), 1, addr);
        assert!(incomplete);
        assert_eq!(rules[0].local.len(), 1);
        assert_eq!(rules[0].turns, 2);
    }

    #[test]
    fn unspecified_bind_matches_every_address_but_loopback_and_no_rules_remove_the_table() {
        let port = PortSpec::ingress(8080, 80, Protocol::Tcp);
        let (rules, _) = plan(&table(port, &[("t1", 1)]), 1, addr);
        assert!(script(1, Ipv4Addr::UNSPECIFIED, &rules)
            .contains("fib daddr type local ip daddr != 127.0.0.0/8 jump ports"));
        assert_eq!(
            script(7, Ipv4Addr::UNSPECIFIED, &[]),
            "table ip shoal_mesh_7\ndelete table ip shoal_mesh_7\n"
        );
    }
}
