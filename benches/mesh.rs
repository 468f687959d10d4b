//! Routing-mesh benchmark: an HTTP load against (a) a task's container
//! directly (its bridge address), (b) the mesh on the node that runs the
//! task, (c) the mesh on another node (through QUIC), and, as the baseline
//! of what a user-space proxy costs on the same path, (d) HAProxy on the
//! task's node forwarding TCP to the container (when `haproxy` is
//! installed; a thread per CPU, as the daemon's runtime has). Two daemons
//! on 127.0.0.1 (manager, runs the tasks) and 127.0.0.2 (worker), on the
//! real Docker engine. Then, with `--mesh-forward kernel` (needs root and
//! nftables), (a) and (b) again on a one-node cluster listening on the
//! machine's end of a veth link: the node's share goes by NAT in the
//! kernel.
//!
//! Two backends, each a service of one task: busybox httpd, which closes
//! every connection after one answer (so every request is a new connection:
//! through the mesh a new accept, a new connection to the container, and
//! for (c) a new QUIC stream), and nginx keeping connections open (every
//! request crosses the mesh's byte path only).
//!
//! `cargo bench --bench mesh` (release build), after `scripts/test-image.sh`
//! and `scripts/bench-image.sh`. The load generator is below: a fixed
//! number of client threads, each with one HTTP/1.1 keep-alive connection
//! that it reopens whenever the server closes it, for a fixed time; it
//! reports requests/s and the p50/p99 of each request's latency (a
//! reconnect counts in the request that needed it).
//!
//! Knobs: `BENCH_BACKENDS` (`busybox,nginx`), `BENCH_CONNS` (comma list
//! of concurrencies; `1,4,16`), `BENCH_SECS` (3 per run), `BENCH_ROUNDS`
//! (5: each round runs the targets in turn; medians are reported),
//! `BENCH_FORWARD` (`proxy,kernel`: which phases run),
//! `SHOAL_TEST_IMAGE` (shoal-test:latest), `SHOAL_BENCH_NGINX_IMAGE`
//! (shoal-bench:nginx).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::{docker_running, wait_running};
use common::{wait_for, Cluster};

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// One client connection's loop: a request, its answer, again, until
/// `stop`. Returns the latencies (µs) and the number of failed requests.
fn client(addr: SocketAddr, stop: Arc<AtomicBool>) -> (Vec<u32>, u64) {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: shoal-bench\r\n\r\n");
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut errors = 0u64;
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match one_request(addr, &mut conn, request.as_bytes(), &mut buf) {
            Ok(()) => latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Err(e) => {
                if errors == 0 && std::env::var_os("BENCH_SHOW_ERRORS").is_some() {
                    eprintln!("{addr}: first failed request: {e}");
                }
                errors += 1;
                conn = None;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    (latencies, errors)
}

/// Sends one request on `conn` (opening it first if needed) and reads the
/// whole answer; closes `conn` when the server will not keep it open.
fn one_request(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    request: &[u8],
    buf: &mut [u8],
) -> io::Result<()> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        *conn = Some(s);
    }
    let s = conn.as_mut().expect("opened above");
    s.write_all(request)?;
    let mut have = 0usize;
    let head_end = loop {
        if have == buf.len() {
            return Err(io::Error::other("answer head too long"));
        }
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
        }
        have += n;
        if let Some(i) = find(&buf[..have], b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.") || !head.lines().next().unwrap_or("").contains(" 200") {
        return Err(io::Error::other(format!("answer: {head:?}")));
    }
    let close = head.contains("connection: close") || head.starts_with("http/1.0");
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(len) => {
            let mut body = have - head_end;
            while body < len {
                let n = s.read(buf)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
                }
                body += n;
            }
        }
        None => while s.read(buf)? > 0 {},
    }
    if close || length.is_none() {
        *conn = None;
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Each figure's median over the rounds (errors: the total).
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        rps: mid(|f| f.rps),
        p50_us: mid(|f| f.p50_us),
        p99_us: mid(|f| f.p99_us),
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}

/// `conns` clients against `addr` for `secs`.
fn load(addr: SocketAddr, conns: usize, secs: u64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || client(addr, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for c in clients {
        let (lat, err) = c.join().expect("client thread");
        all.extend(lat);
        errors += err;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            return f64::NAN;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64
    };
    Figures {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// A TCP port free on 127.0.0.1 and 127.0.0.2.
fn free_tcp_port() -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if ["127.0.0.1", "127.0.0.2"]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1-2");
}

fn container_ip(id: &str) -> String {
    let ip = common::services::container_ip(id);
    assert!(!ip.is_empty(), "container {id} has no bridge address");
    ip
}

/// One backend under test: a service of one task on node-a.
struct Backend {
    name: &'static str,
    service: &'static str,
    image: String,
    command: &'static [&'static str],
    port: u16,
    /// The task's container, once deployed.
    direct: Option<SocketAddr>,
    /// HAProxy's listener for it.
    haproxy: Option<SocketAddr>,
}

fn backends() -> Vec<Backend> {
    let wanted = env_str("BENCH_BACKENDS", "busybox,nginx");
    let all = [
        Backend {
            name: "busybox httpd, a connection per request",
            service: "web",
            image: env_str("SHOAL_TEST_IMAGE", "shoal-test:latest"),
            command: &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello from the mesh bench > /www/index.html \
                 && exec httpd -f -p 80 -h /www",
            ],
            port: 0,
            direct: None,
            haproxy: None,
        },
        Backend {
            name: "nginx, connections kept open",
            service: "ngx",
            image: env_str("SHOAL_BENCH_NGINX_IMAGE", "shoal-bench:nginx"),
            command: &["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"],
            port: 0,
            direct: None,
            haproxy: None,
        },
    ];
    let chosen: Vec<Backend> = all
        .into_iter()
        .filter(|b| wanted.split(',').any(|w| b.name.starts_with(w.trim())))
        .collect();
    assert!(
        !chosen.is_empty(),
        "BENCH_BACKENDS={wanted:?} names no backend (busybox, nginx)"
    );
    chosen
}

/// HAProxy forwarding TCP to each backend's container, killed on drop.
struct Haproxy {
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts HAProxy (when installed) with `threads` threads and a listener
/// per backend, and fills in each backend's `haproxy` address.
fn start_haproxy(backends: &mut [Backend], threads: usize) -> Option<Haproxy> {
    let installed = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        println!("(d) skipped: haproxy is not installed (apt-get install haproxy)");
        return None;
    }
    let mut config = format!(
        "global\n  nbthread {threads}\n  maxconn 4000\ndefaults\n  mode tcp\n  \
         timeout connect 2s\n  timeout client 300s\n  timeout server 300s\n"
    );
    for b in backends.iter_mut() {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        config += &format!(
            "listen {}\n  bind {addr}\n  server task {}\n",
            b.service,
            b.direct.expect("deployed first")
        );
        b.haproxy = Some(addr);
    }
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(config.as_bytes())
        .expect("write haproxy.cfg");
    let mut child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(file.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy");
    // HAProxy refuses some settings only when it starts (a file-descriptor
    // limit below maxconn, say): name it rather than a silent port.
    let listening = wait_for(Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("haproxy exited at start ({status}); its messages are above; config:\n{config}");
        }
        backends
            .iter()
            .all(|b| TcpStream::connect(b.haproxy.expect("set above")).is_ok())
            .then_some(())
    });
    assert!(
        listening.is_some(),
        "haproxy did not listen within 10 s; config:\n{config}"
    );
    Some(Haproxy {
        child,
        _config: file,
    })
}

/// Waits until `addr` answers a request.
fn wait_answers(addr: SocketAddr, c: &Cluster) {
    wait_for(Duration::from_secs(20), || {
        let mut conn = None;
        one_request(
            addr,
            &mut conn,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &mut [0u8; 4096],
        )
        .ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "{addr} never answered; node-a's log:\n{}\nnode-b's log:\n{}",
            c.nodes[0].log_text(),
            c.nodes[1].log_text()
        )
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too
    // and must not start a cluster.
    if !std::env::args().any(|a| a == "--bench") {
        println!("mesh bench: run it with `cargo bench --bench mesh`");
        return;
    }
    let secs: u64 = env_str("BENCH_SECS", "3").parse().expect("BENCH_SECS");
    let rounds: usize = env_str("BENCH_ROUNDS", "5").parse().expect("BENCH_ROUNDS");
    let concurrencies: Vec<usize> = env_str("BENCH_CONNS", "1,4,16")
        .split(',')
        .map(|c| c.trim().parse().expect("BENCH_CONNS"))
        .collect();
    let mut backends = backends();
    for b in &backends {
        let present = Command::new("docker")
            .args(["image", "inspect", &b.image])
            .output()
            .expect("docker is installed");
        assert!(
            present.status.success(),
            "the image {} is missing: run scripts/test-image.sh and scripts/bench-image.sh",
            b.image
        );
    }
    // The daemon's runtime has a worker thread per CPU; HAProxy gets as many.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let forwards = env_str("BENCH_FORWARD", "proxy,kernel");
    let knobs = Knobs {
        secs,
        rounds,
        concurrencies,
        threads,
    };
    for forward in forwards.split(',').map(str::trim) {
        match forward {
            "proxy" => bench_proxy(&mut backends, &knobs),
            "kernel" => bench_kernel(&mut backends, &knobs),
            other => panic!("BENCH_FORWARD names {other:?}; allowed: proxy, kernel"),
        }
    }
}

/// What every phase runs with.
struct Knobs {
    secs: u64,
    rounds: usize,
    concurrencies: Vec<usize>,
    threads: usize,
}

/// Deploys each backend as a service of one task on node-a (node 0 of
/// `c`) and records its container's address.
fn deploy(c: &Cluster, backends: &mut [Backend]) {
    for b in backends.iter_mut() {
        b.port = free_tcp_port();
        let publish = format!("{}:80", b.port);
        let mut args = vec![
            "deploy",
            b.service,
            "--image",
            &b.image,
            "--replicas",
            "1",
            "--constraint",
            "node.name==node-a",
            "-p",
            &publish,
            "--detach",
            "--",
        ];
        args.extend_from_slice(b.command);
        c.nodes[0].ok(&args);
        wait_running(c, b.service, 1, Duration::from_secs(60));
        let container = docker_running(c, b.service)[0].clone();
        b.direct = Some(format!("{}:80", container_ip(&container)).parse().unwrap());
    }
}

/// The mesh's proxy (the default `--mesh-forward proxy`): (a), (b), (c),
/// and (d) when HAProxy is installed.
fn bench_proxy(backends: &mut [Backend], knobs: &Knobs) {
    let env = [("SHOAL_DNS_ADDR", "none")];
    let mut c = Cluster::new();
    c.init_with_env("node-a", "127.0.0.1", &env);
    c.join_with_env("node-b", "127.0.0.2", "worker", &env);
    deploy(&c, backends);
    let _haproxy = start_haproxy(backends, knobs.threads);

    for b in backends.iter() {
        let mut targets = vec![
            ("(a) container directly", b.direct.unwrap()),
            (
                "(b) mesh on the task's node",
                format!("127.0.0.1:{}", b.port).parse().unwrap(),
            ),
            (
                "(c) mesh on another node (QUIC)",
                format!("127.0.0.2:{}", b.port).parse().unwrap(),
            ),
        ];
        if let Some(addr) = b.haproxy {
            targets.push(("(d) HAProxy on the task's node", addr));
        }
        for (_, addr) in &targets {
            wait_answers(*addr, &c);
        }
        println!(
            "\nmesh bench, --mesh-forward proxy: {}; {} rounds of {} s per target; task on node-a \
             (127.0.0.1), node-b on 127.0.0.2; {} threads each for the daemons' runtimes and HAProxy",
            b.name, knobs.rounds, knobs.secs, knobs.threads
        );
        run_targets(&targets, knobs);
    }
}

/// `--mesh-forward kernel`: (a) and (b) with the node's share forwarded
/// by nftables. node-a listens on the machine's end of a veth link (an
/// address of the machine other than loopback, which kernel forwarding
/// needs); the load comes from the machine itself, as for (a).
fn bench_kernel(backends: &mut [Backend], knobs: &Knobs) {
    if let Some(why) = common::netns::unavailable() {
        println!("\n--mesh-forward kernel skipped: {why}");
        return;
    }
    let link = common::netns::Client::create().expect("a veth link for node-a's address");
    let ip = link.machine_ip.to_string();
    let mut c = Cluster::new();
    c.init_with_env(
        "node-a",
        &ip,
        &[("SHOAL_DNS_ADDR", "none"), ("SHOAL_MESH_FORWARD", "kernel")],
    );
    deploy(&c, backends);
    for b in backends.iter() {
        let targets = vec![
            ("(a) container directly", b.direct.unwrap()),
            (
                "(b) mesh on the task's node, kernel fwd",
                format!("{ip}:{}", b.port).parse().unwrap(),
            ),
        ];
        for (_, addr) in &targets {
            wait_answers(*addr, &c);
        }
        println!(
            "\nmesh bench, --mesh-forward kernel: {}; {} rounds of {} s per target; task on node-a ({ip})",
            b.name, knobs.rounds, knobs.secs
        );
        run_targets(&targets, knobs);
    }
}

/// The table of one backend: every concurrency, every target.
fn run_targets(targets: &[(&str, SocketAddr)], knobs: &Knobs) {
    println!(
        "{:<48} {:>5} {:>10} {:>9} {:>9} {:>6}",
        "target", "conns", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for &conns in &knobs.concurrencies {
        run_concurrency(targets, conns, knobs.rounds, knobs.secs);
    }
}

/// Runs every target `rounds` times at `conns` and prints the medians and
/// the ratios.
fn run_concurrency(targets: &[(&str, SocketAddr)], conns: usize, rounds: usize, secs: u64) {
    // Rounds interleave the targets, so a change in the machine's load
    // during the bench hits all of them alike; medians are reported.
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (t, (name, addr)) in targets.iter().enumerate() {
            let f = load(*addr, conns, secs);
            println!(
                "  round {} {:<42} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>6}",
                round + 1,
                name,
                conns,
                f.rps,
                f.p50_us / 1000.0,
                f.p99_us / 1000.0,
                f.errors
            );
            runs[t].push(f);
        }
    }
    let row: Vec<Figures> = runs.iter().map(|r| median(r)).collect();
    for ((name, addr), f) in targets.iter().zip(&row) {
        println!(
            "{:<48} {:>5} {:>10.0} {:>9.3} {:>9.3} {:>6}",
            format!("{name} {addr}"),
            conns,
            f.rps,
            f.p50_us / 1000.0,
            f.p99_us / 1000.0,
            f.errors
        );
    }
    // Every target against (a), and the mesh against HAProxy.
    let a = row[0];
    let mut summary = format!("  {conns} conns (medians of {rounds}):");
    for ((name, _), f) in targets.iter().zip(&row).skip(1) {
        let label = name.split(' ').next().unwrap_or(name);
        summary += &format!(
            " {label}/(a) throughput {:.0} %, added p50 {:.3} ms;",
            100.0 * f.rps / a.rps,
            (f.p50_us - a.p50_us) / 1000.0,
        );
    }
    if let (Some(b), Some(d)) = (row.get(1), row.get(3)) {
        summary += &format!(" (b)/(d) throughput {:.0} %;", 100.0 * b.rps / d.rps);
    }
    summary += " target for (b): >= 80 % and < 0.2 ms";
    println!("{summary}");
}
