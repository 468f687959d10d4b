//! The routing mesh and DNS, end to end: three real daemons on 127.0.0.1-3
//! (a manager and two workers), a service of three busybox httpd tasks on
//! the real Docker engine published on one ingress port, each httpd serving
//! its own hostname. A second test runs the in-memory engine with a Rust
//! backend that reads the PROXY v2 header.
//!
//! Needs Docker and the test image: `SHOAL_DOCKER_TESTS=1 cargo test --test
//! mesh -- --test-threads=1` after `scripts/test-image.sh`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::services::{
    container_ip, docker_kill, docker_running, running_per_node, wait_running, IMAGE,
};
use common::{wait_for, Cluster};
use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{Name, RData, RecordType};

const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

fn docker_tests() -> bool {
    let on = std::env::var("SHOAL_DOCKER_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set SHOAL_DOCKER_TESTS=1 to run tests on the Docker engine");
    }
    on
}

/// A port free for TCP and UDP on 127.0.0.1-3.
fn free_port() -> u16 {
    for _ in 0..100 {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let free = IPS.iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok() && UdpSocket::bind((*ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1-3");
}

/// A cluster of a manager and two workers, each answering DNS on
/// `IP:dns_port`.
fn cluster(dns_port: u16, extra_env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new();
    let env = |i: usize| {
        let mut env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("SHOAL_DNS_ADDR".into(), format!("{}:{dns_port}", IPS[i])));
        env
    };
    let e0 = env(0);
    let e0: Vec<(&str, &str)> = e0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    c.init_with_env("node-a", IPS[0], &e0);
    for (i, name) in [(1, "node-b"), (2, "node-c")] {
        let e = env(i);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        c.join_with_env(name, IPS[i], "worker", &e);
    }
    c
}

/// One HTTP/1.0 GET; the body on a 200.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("read {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    if !text.starts_with("HTTP/1.") || !text.lines().next().unwrap_or("").contains(" 200") {
        return Err(format!("{addr} answered {text:?}"));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    Ok(body.to_string())
}

/// Sends one DNS query over UDP; the answer message.
fn dns_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("a DNS answer");
    Message::from_vec(&buf[..n]).unwrap()
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

fn a_records(msg: &Message) -> BTreeSet<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn ingress_port_answers_on_every_node_balances_and_survives_failures() {
    if !docker_tests() {
        return;
    }
    let dns_port = free_port();
    let port = free_port();
    let mut c = cluster(dns_port, &[]);
    let publish = format!("{port}:80");
    c.nodes[0].ok(&[
        "deploy",
        "web",
        "--image",
        IMAGE,
        "--replicas",
        "3",
        "-p",
        &publish,
        "--stop-grace-period",
        "1s",
        "--restart-delay",
        "0s",
        "--detach",
        "--",
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    wait_running(&c, "web", 3, Duration::from_secs(60));
    let addrs: Vec<SocketAddr> = IPS
        .iter()
        .map(|ip| format!("{ip}:{port}").parse().unwrap())
        .collect();

    // Every node answers, and over 300 requests every task answers some.
    for addr in &addrs {
        wait_for(Duration::from_secs(15), || http_get(*addr).ok())
            .unwrap_or_else(|| panic!("{addr} never answered: {:?}", http_get(*addr)));
    }
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..300 {
        let body = http_get(addrs[i % 3]).unwrap_or_else(|e| panic!("request {i}: {e}"));
        *per_task.entry(body).or_default() += 1;
    }
    println!("answers per task: {per_task:?}");
    assert_eq!(per_task.len(), 3, "{per_task:?}");

    // `service inspect` on a worker lists the three tasks as endpoints.
    let inspect = c.nodes[1].json(&["service", "inspect", "web"]).unwrap();
    let endpoints = inspect["endpoints"].as_array().cloned().unwrap_or_default();
    assert_eq!(endpoints.len(), 3, "{inspect}");
    for e in &endpoints {
        assert_eq!(e["port"], port, "{e}");
        assert_eq!(e["target"], 80, "{e}");
        assert!(IPS.contains(&e["address"].as_str().unwrap_or("")), "{e}");
    }

    // DNS on a worker: web.shoal is every node (ingress), the SRV record
    // names the published port, tasks.web.shoal the tasks' nodes.
    let dns: SocketAddr = format!("127.0.0.2:{dns_port}").parse().unwrap();
    let all: BTreeSet<IpAddr> = IPS.iter().map(|ip| ip.parse().unwrap()).collect();
    let answer = dns_query(dns, "web.shoal.", RecordType::A);
    assert_eq!(a_records(&answer), all, "{answer:?}");
    let answer = dns_query(dns, "tasks.web.shoal.", RecordType::A);
    assert_eq!(a_records(&answer), all, "{answer:?}");
    let answer = dns_query(dns, "_http._tcp.web.shoal.", RecordType::SRV);
    let srv: BTreeSet<(u16, String)> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect();
    let targets: BTreeSet<(u16, String)> = (1..=3)
        .map(|id| (port, format!("node-{id}.nodes.shoal.")))
        .collect();
    assert_eq!(srv, targets, "{answer:?}");
    let additional: BTreeSet<IpAddr> = answer
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(additional, all);
    let missing = dns_query(dns, "nothing.shoal.", RecordType::A);
    assert_eq!(
        missing.metadata.response_code,
        hickory_server::proto::op::ResponseCode::NXDomain
    );

    // A service without ports: a worker holds its task nodes only once
    // its DNS is asked about it (the first query asks the leader and
    // waits for them), and answers with the nodes its tasks run on.
    c.nodes[0].ok(&[
        "deploy",
        "job",
        "--image",
        IMAGE,
        "--replicas",
        "2",
        "--detach",
        "--",
        "sh",
        "-c",
        "exec sleep 3600",
    ]);
    wait_running(&c, "job", 2, Duration::from_secs(60));
    let job_nodes: BTreeSet<IpAddr> = running_per_node(&c, "job")
        .keys()
        .map(|name| {
            let i = ["node-a", "node-b", "node-c"]
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("unknown node {name}"));
            IPS[i].parse().unwrap()
        })
        .collect();
    assert!(!job_nodes.is_empty());
    let answer = wait_for(Duration::from_secs(10), || {
        let answer = dns_query(dns, "tasks.job.shoal.", RecordType::A);
        (a_records(&answer) == job_nodes).then_some(answer)
    });
    assert!(
        answer.is_some(),
        "tasks.job.shoal never named {job_nodes:?}: {:?}",
        dns_query(dns, "tasks.job.shoal.", RecordType::A)
    );
    let answer = dns_query(dns, "job.shoal.", RecordType::A);
    assert_eq!(a_records(&answer), job_nodes, "{answer:?}");
    c.nodes[0].ok(&["service", "rm", "job"]);

    // Kill one task's container: after 1 s, 200 consecutive requests
    // through every node all succeed.
    let victim = docker_running(&c, "web")[0].clone();
    docker_kill(&victim);
    std::thread::sleep(Duration::from_secs(1));
    for addr in &addrs {
        for i in 0..200 {
            if let Err(e) = http_get(*addr) {
                panic!("request {i} through {addr} after a task was killed: {e}");
            }
        }
    }

    // SIGKILL node-c's daemon: the other two nodes keep serving the port.
    wait_running(&c, "web", 3, Duration::from_secs(30));
    c.nodes[2].kill();
    let killed = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let addr = addrs[i % 2];
        let started = Instant::now();
        if let Err(e) = http_get(addr) {
            panic!(
                "request {i} through {addr} {:?} after node-c was killed: {e}",
                killed.elapsed()
            );
        }
        slowest = slowest.max(started.elapsed());
    }
    println!("after node-c was killed: slowest request {slowest:?}");
}

/// A backend that reads a PROXY v2 header and answers with the source
/// address it carries.
fn proxy_backend(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = [0u8; 16];
                if s.read_exact(&mut head).is_err() {
                    return;
                }
                let sig = [
                    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
                ];
                let reply = if head[..12] != sig || head[12] != 0x21 || head[13] != 0x11 {
                    format!("no PROXY v2 TCP4 header: {head:?}")
                } else {
                    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let src = IpAddr::from([body[0], body[1], body[2], body[3]]);
                    let port = u16::from_be_bytes([body[8], body[9]]);
                    SocketAddr::new(src, port).to_string()
                };
                let _ = s.write_all(reply.as_bytes());
            });
        }
    });
}

#[test]
fn proxy_protocol_v2_hands_the_client_address_to_the_backend() {
    // The in-memory engine: its "containers" are reached at 127.0.0.1,
    // where this test serves their target port.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = backend.local_addr().unwrap().port();
    proxy_backend(backend);
    let dns_port = free_port();
    let port = free_port();
    let c = cluster(
        dns_port,
        &[
            ("SHOAL_FAKE_RUNTIME", "proxy:1"),
            ("SHOAL_FAKE_ADDRESS", "127.0.0.1"),
        ],
    );
    let publish = format!("{port}:{target},proxy-protocol=v2");
    c.nodes[0].ok(&[
        "deploy",
        "proxy",
        "--image",
        "proxy:1",
        "--replicas",
        "1",
        "-p",
        &publish,
        "--detach",
    ]);
    // Through every node: the task's own node connects directly, the others
    // over QUIC; the backend sees the client's address either way.
    for ip in IPS {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let seen = wait_for(Duration::from_secs(20), || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            let me = s.local_addr().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.shutdown(std::net::Shutdown::Write).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            (!out.is_empty()).then_some((me, out))
        })
        .unwrap_or_else(|| panic!("nothing answered through {addr}"));
        assert_eq!(seen.1, seen.0.to_string(), "through {addr}");
    }
}

/// A UDP echo backend: answers every datagram with "echo:" and the datagram.
fn udp_echo_backend(socket: UdpSocket) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from);
        }
    });
}

#[test]
fn udp_ingress_port_forwards_datagrams_from_every_node() {
    // The in-memory engine: the task's "container" is reached at 127.0.0.1,
    // where this test serves its target port.
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = backend.local_addr().unwrap().port();
    udp_echo_backend(backend);
    let dns_port = free_port();
    let port = free_port();
    let c = cluster(
        dns_port,
        &[
            ("SHOAL_FAKE_RUNTIME", "echo:1"),
            ("SHOAL_FAKE_ADDRESS", "127.0.0.1"),
        ],
    );
    let publish = format!("{port}:{target}/udp");
    c.nodes[0].ok(&[
        "deploy",
        "echo",
        "--image",
        "echo:1",
        "--replicas",
        "1",
        "-p",
        &publish,
        "--detach",
    ]);
    // Another service cannot take the same ingress port, in either mode.
    for other in [
        publish.clone(),
        format!("mode=host,published={port},target=1,protocol=udp"),
    ] {
        let out = c.nodes[1].cli(&[
            "deploy", "other", "--image", "echo:1", "-p", &other, "--detach",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{other}: a clashing port was accepted"
        );
        assert!(
            err.contains(&format!("port {port}/udp is taken: service \"echo\"")),
            "{other}: {err}"
        );
    }
    // Through every node (the task's own directly, the others over QUIC):
    // several datagrams of one flow each come back whole, in their own
    // datagram, and two clients' flows stay apart.
    for ip in IPS {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let clients: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s
            })
            .collect();
        let ask = |s: &UdpSocket, msg: &[u8]| -> Option<Vec<u8>> {
            s.send_to(msg, addr).ok()?;
            let mut buf = [0u8; 65_535];
            let (n, from) = s.recv_from(&mut buf).ok()?;
            assert_eq!(from, addr, "the answer comes from the published address");
            Some(buf[..n].to_vec())
        };
        wait_for(Duration::from_secs(20), || ask(&clients[0], b"hello"))
            .unwrap_or_else(|| panic!("no UDP answer through {addr}"));
        for i in 0..20 {
            for (k, s) in clients.iter().enumerate() {
                let msg = format!("client {k} datagram {i}");
                let got = ask(s, msg.as_bytes())
                    .unwrap_or_else(|| panic!("{msg}: no answer through {addr}"));
                assert_eq!(got, format!("echo:{msg}").into_bytes(), "through {addr}");
            }
        }
        let big = vec![b'z'; 8000];
        let got = ask(&clients[1], &big).expect("an answer to 8000 bytes");
        assert_eq!(got.len(), 5 + big.len(), "through {addr}");
    }
}

/// One `GET path` over a new connection from wherever the calling thread
/// runs; the body on a 200.
fn http_get_path(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    // A CGI script's own header lines end in a bare newline.
    let normal = out.replace("\r\n", "\n");
    match normal.split_once("\n\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!("answer: {out:?}")),
    }
}

/// The node's nftables table, or `None` when it has none.
fn nft_table(node_id: u64) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", &format!("shoal_mesh_{node_id}")])
        .output()
        .expect("nft is installed");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `--mesh-forward kernel`: a client outside the machine (a namespace
/// routed through it) reaches node-a's address; node-a's own task gets its
/// round-robin share by DNAT and sees the client's own address, the rest
/// goes through the mesh to node-b's task; the rules follow the task when
/// it is killed and go when the daemon stops.
#[test]
fn kernel_forwarding_sends_the_node_share_by_nat_and_keeps_the_client_address() {
    if !docker_tests() {
        return;
    }
    if let Some(why) = common::netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let client = common::netns::Client::create().expect("a client namespace");
    let a_ip = client.machine_ip.to_string();
    let mut c = Cluster::new();
    c.init_with_env(
        "node-a",
        &a_ip,
        &[("SHOAL_DNS_ADDR", "none"), ("SHOAL_MESH_FORWARD", "kernel")],
    );
    c.join_with_env(
        "node-b",
        "127.0.0.2",
        "worker",
        &[("SHOAL_DNS_ADDR", "none")],
    );
    let port = free_port();
    let publish = format!("{port}:80");
    let who = "mkdir -p /www/cgi-bin && { echo '#!/bin/sh'; echo 'echo Content-Type: text/plain'; \
               echo echo; echo 'echo $REMOTE_ADDR $(hostname)'; } > /www/cgi-bin/who \
               && chmod +x /www/cgi-bin/who && exec httpd -f -p 80 -h /www";
    c.nodes[0].ok(&[
        "deploy",
        "who",
        "--image",
        IMAGE,
        "--replicas",
        "2",
        "--max-per-node",
        "1",
        "-p",
        &publish,
        "--restart-delay",
        "0s",
        "--detach",
        "--",
        "sh",
        "-c",
        who,
    ]);
    wait_running(&c, "who", 2, Duration::from_secs(60));
    let per_node = running_per_node(&c, "who");
    assert_eq!(per_node.len(), 2, "{per_node:?}");

    // node-a's rules name its task's container.
    let rules = wait_for(Duration::from_secs(10), || {
        nft_table(1).filter(|t| t.contains("dnat to"))
    })
    .unwrap_or_else(|| {
        panic!(
            "node-a wrote no rules: {:?}\n{}",
            nft_table(1),
            c.nodes[0].log_text()
        )
    });
    println!("{rules}");

    // From outside: every answer comes, both tasks answer, and node-a's
    // task (the one the rules name) sees the client's own address.
    let addr: SocketAddr = format!("{a_ip}:{port}").parse().unwrap();
    let answers = client.run(move || {
        wait_for(Duration::from_secs(15), || {
            http_get_path(addr, "/cgi-bin/who").ok()
        })
        .ok_or_else(|| {
            let last = http_get_path(addr, "/cgi-bin/who");
            format!("{addr} never answered the client: {last:?}")
        })?;
        (0..100)
            .map(|i| http_get_path(addr, "/cgi-bin/who").map_err(|e| format!("request {i}: {e}")))
            .collect::<Result<Vec<String>, String>>()
    });
    let answers = answers.unwrap_or_else(|e| panic!("{e}\n{}", c.nodes[0].log_text()));
    let mut per_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &answers {
        let (remote, host) = a.rsplit_once(' ').unwrap_or_else(|| panic!("answer {a:?}"));
        per_task
            .entry(host.to_string())
            .or_default()
            .push(remote.to_string());
    }
    let seen: BTreeMap<&String, (usize, BTreeSet<&String>)> = per_task
        .iter()
        .map(|(host, seen)| (host, (seen.len(), seen.iter().collect())))
        .collect();
    println!("answers and client addresses seen per task: {seen:?}");
    assert_eq!(per_task.len(), 2, "{seen:?}");
    let client_ip = client.ip.to_string();
    let direct: Vec<&String> = per_task
        .iter()
        .filter(|(_, seen)| seen.iter().all(|r| r.contains(&client_ip)))
        .map(|(host, _)| host)
        .collect();
    assert_eq!(
        direct.len(),
        1,
        "one task (node-a's) sees the client's address: {per_task:?}"
    );

    // From the machine itself (the output path), too.
    http_get_path(addr, "/cgi-bin/who").unwrap_or_else(|e| panic!("from the machine: {e}"));

    // Kill node-a's task: after 1 s, 100 consecutive requests succeed.
    let table = nft_table(1).unwrap();
    let victim = docker_running(&c, "who")
        .into_iter()
        .find(|id| {
            let ip = container_ip(id);
            !ip.is_empty() && table.contains(&format!("dnat to {ip}:80"))
        })
        .expect("a running container the rules name");
    docker_kill(&victim);
    std::thread::sleep(Duration::from_secs(1));
    let after = client.run(move || {
        (0..100)
            .map(|i| http_get_path(addr, "/cgi-bin/who").map_err(|e| format!("request {i}: {e}")))
            .collect::<Result<Vec<String>, String>>()
    });
    if let Err(e) = after {
        panic!(
            "after node-a's task was killed: {e}\nrules: {:?}",
            nft_table(1)
        );
    }

    // A daemon that stops removes its rules.
    c.nodes[0].terminate();
    assert_eq!(nft_table(1), None, "node-a's rules outlived it");
}
