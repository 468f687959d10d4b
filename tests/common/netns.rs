//! Real network faults for tests: every host is a Linux network namespace.
//!
//! [`Net::create`] makes N hosts, each a namespace with one interface
//! (`eth0`, address `10.231.0.<i+1>/24`) on a bridge that lives in a switch
//! namespace of its own. Nothing is added to the machine's own namespace, so
//! its routes and firewall (Docker's `FORWARD DROP` policy, which bridge
//! netfilter would apply to a bridge there) never see the test's traffic,
//! and two runs can use the same addresses side by side.
//!
//! Faults are per direction, on the receiving host (the sender sees no
//! error, as on a real network):
//! - [`Net::cut`] drops what `from` sends to `to` (an iptables `DROP` in
//!   `to`'s `INPUT` chain); [`Net::heal`] removes it. [`Net::cut_link`],
//!   [`Net::partition`] and [`Net::heal_all`] are built on these.
//! - [`Net::impair`] delays and drops a share of what `from` sends to `to`.
//!   This kernel has no `sch_netem`, so an `NFQUEUE` rule hands those
//!   packets to a thread of the test process that holds each one's verdict
//!   for the delay (the kernel keeps the packet meanwhile) and drops the
//!   given share at random.
//!
//! [`Net`] removes everything it made when dropped, also when a test panics:
//! the impairment threads stop, processes still inside its namespaces are
//! killed, and the namespaces (with their interfaces) are deleted. Names
//! carry the pid of the test process (`shoalnet-<pid>-<n>-...`), so parallel
//! runs never collide, and [`clean_leftovers`] removes those of runs whose
//! process is gone.
//!
//! [`NsCluster`] runs `shoal` daemons inside the hosts (`ip netns exec`);
//! their control sockets are in their data dirs, so the CLI runs from here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{wait_for, Daemon, BIN};

/// Every namespace this harness makes starts with this.
pub const PREFIX: &str = "shoalnet-";

/// The port every daemon listens on (each host has its own address).
pub const PORT: u16 = 4500;

static NEXT_NET: AtomicU64 = AtomicU64::new(0);

/// Why network-namespace tests cannot run here, or `None` if they can
/// (root, `ip netns`, iptables with the NFQUEUE target in a namespace).
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        });
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "network namespace tests need root (uid is {})",
            uid.unwrap_or_else(|| "unknown".into())
        ));
    }
    match Net::create(1) {
        Ok(net) => {
            let probe = net.iptables(0, &["-A", "INPUT", "-s", "10.231.0.9", "-j", "DROP"]);
            let queue = net.iptables(
                0,
                &[
                    "-A",
                    "INPUT",
                    "-s",
                    "10.231.0.9",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "9",
                ],
            );
            match (probe, queue) {
                (Ok(()), Ok(())) => None,
                (Err(e), _) | (_, Err(e)) => Some(format!("iptables in a namespace: {e}")),
            }
        }
        Err(e) => Some(format!("cannot create network namespaces: {e}")),
    }
}

/// Runs a command; an error names it and carries its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Deletes namespaces left by runs whose process is gone, killing what
/// still runs inside them (daemons a crashed test started).
pub fn clean_leftovers() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(name);
    }
}

/// Kills the processes inside a namespace, then deletes it.
fn delete_namespace(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    let _ = ip(&["netns", "del", name]);
}

/// One host: a namespace and its address.
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// A delay-and-loss stage on one direction of a link.
struct Impairment {
    queue: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Faults {
    /// (from, to) directions that are cut.
    cuts: BTreeSet<(usize, usize)>,
    impaired: BTreeMap<(usize, usize), Impairment>,
}

/// N hosts on one bridge, and the faults applied between them.
pub struct Net {
    switch: String,
    pub hosts: Vec<Host>,
    faults: Mutex<Faults>,
}

impl Net {
    /// Creates `n` hosts (at most 200) with addresses 10.231.0.1, .2, ...
    pub fn create(n: usize) -> Result<Net, String> {
        assert!(n > 0 && n <= 200, "between 1 and 200 hosts");
        clean_leftovers();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_NET.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            switch: format!("{base}-sw"),
            hosts: Vec::new(),
            faults: Mutex::new(Faults::default()),
        };
        // From here on, Drop removes whatever was made, also on an error.
        ip(&["netns", "add", &net.switch])?;
        ip(&["-n", &net.switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let host = Host {
                netns: format!("{base}-h{i}"),
                ip: Ipv4Addr::new(10, 231, 0, (i + 1) as u8),
            };
            ip(&["netns", "add", &host.netns])?;
            net.hosts.push(host.clone());
            let port = format!("h{i}");
            ip(&[
                "-n",
                &net.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            ip(&["-n", &net.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &net.switch, "link", "set", &port, "up"])?;
            let cidr = format!("{}/24", host.ip);
            ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    pub fn ip(&self, host: usize) -> Ipv4Addr {
        self.hosts[host].ip
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn exec(&self, host: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[host].netns, program]);
        cmd
    }

    /// Runs `f` on a thread inside `host`'s namespace (sockets it opens
    /// live there) and returns its result.
    pub fn in_host<T: Send + 'static>(
        &self,
        host: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let netns = self.hosts[host].netns.clone();
        std::thread::spawn(move || {
            enter(&netns).unwrap_or_else(|e| panic!("{e}"));
            f()
        })
    }

    fn iptables(&self, host: usize, args: &[&str]) -> Result<(), String> {
        // -w: wait for the xtables lock rather than fail when another
        // namespace's rule is being written at the same moment.
        run(self.exec(host, "iptables").arg("-w").args(args)).map(|_| ())
    }

    fn drop_rule(&self, from: usize) -> Vec<String> {
        let src = format!("{}/32", self.ip(from));
        ["INPUT", "-s", &src, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn queue_rule(&self, from: usize, queue: u16) -> Vec<String> {
        let src = format!("{}/32", self.ip(from));
        let q = queue.to_string();
        ["INPUT", "-s", &src, "-j", "NFQUEUE", "--queue-num", &q]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn rule(&self, host: usize, op: &str, rule: &[String]) {
        let mut args = vec![op];
        args.extend(rule.iter().map(String::as_str));
        self.iptables(host, &args)
            .unwrap_or_else(|e| panic!("changing the firewall of host {host}: {e}"));
    }

    /// Drops everything `from` sends to `to` (one direction).
    pub fn cut(&self, from: usize, to: usize) {
        assert_ne!(from, to, "a host cannot be cut from itself");
        let mut faults = self.faults.lock().unwrap();
        if faults.cuts.insert((from, to)) {
            // Inserted first, so a cut also wins over an impairment.
            self.rule(to, "-I", &self.drop_rule(from));
        }
    }

    /// Lets `from` reach `to` again (an impairment stays).
    pub fn heal(&self, from: usize, to: usize) {
        let mut faults = self.faults.lock().unwrap();
        if faults.cuts.remove(&(from, to)) {
            self.rule(to, "-D", &self.drop_rule(from));
        }
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_link(&self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Heals both directions between `a` and `b`.
    pub fn heal_link(&self, a: usize, b: usize) {
        self.heal(a, b);
        self.heal(b, a);
    }

    /// Cuts every link between a host of `side_a` and one of `side_b`.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                self.cut_link(a, b);
            }
        }
    }

    /// Delays what `from` sends to `to` by `delay` and drops `loss` of it
    /// (0.0..=1.0), replacing an earlier impairment of that direction.
    pub fn impair(&self, from: usize, to: usize, delay: Duration, loss: f64) {
        assert_ne!(from, to, "a host cannot be impaired towards itself");
        assert!((0.0..=1.0).contains(&loss), "loss is a share, 0.0..=1.0");
        self.clear_impairment(from, to);
        // One queue per sender within the receiver's namespace.
        let queue = 100 + from as u16;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let netns = self.hosts[to].netns.clone();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("impair-{from}-{to}"))
            .spawn(move || {
                delay_queue(&netns, queue, delay, loss, &thread_stop, ready_tx);
            })
            .expect("spawn the impairment thread");
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("impairing {from} -> {to}: {e}"),
            Err(_) => panic!("impairing {from} -> {to}: the queue thread did not start"),
        }
        // The rule goes in only once the queue is bound: packets queued to
        // an unbound queue are dropped.
        self.rule(to, "-A", &self.queue_rule(from, queue));
        self.faults.lock().unwrap().impaired.insert(
            (from, to),
            Impairment {
                queue,
                stop,
                thread: Some(thread),
            },
        );
    }

    /// Removes the delay and loss of one direction.
    pub fn clear_impairment(&self, from: usize, to: usize) {
        let removed = self.faults.lock().unwrap().impaired.remove(&(from, to));
        if let Some(mut imp) = removed {
            self.rule(to, "-D", &self.queue_rule(from, imp.queue));
            imp.stop.store(true, Ordering::Relaxed);
            if let Some(t) = imp.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Removes every cut and impairment.
    pub fn heal_all(&self) {
        let (cuts, impaired): (Vec<_>, Vec<_>) = {
            let f = self.faults.lock().unwrap();
            (
                f.cuts.iter().copied().collect(),
                f.impaired.keys().copied().collect(),
            )
        };
        for (from, to) in cuts {
            self.heal(from, to);
        }
        for (from, to) in impaired {
            self.clear_impairment(from, to);
        }
    }

    /// The directions currently cut, as (from, to).
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.faults.lock().unwrap().cuts.iter().copied().collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let faults = std::mem::take(&mut *self.faults.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, mut imp) in faults.impaired {
            imp.stop.store(true, Ordering::Relaxed);
            if let Some(t) = imp.thread.take() {
                let _ = t.join();
            }
        }
        for host in &self.hosts {
            delete_namespace(&host.netns);
        }
        delete_namespace(&self.switch);
    }
}

/// A client host outside the machine, for what must come in from the
/// network (forwarded, not local traffic): a namespace joined to the
/// machine's own namespace by a veth pair, the machine's end
/// `10.232.<k>.1/24` and the client `10.232.<k>.2`, its default route via
/// the machine. Removed when dropped.
pub struct Client {
    netns: String,
    /// The machine's address on the link (a local address of the machine).
    pub machine_ip: Ipv4Addr,
    pub ip: Ipv4Addr,
}

impl Client {
    pub fn create() -> Result<Client, String> {
        clean_leftovers();
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A subnet per run and client, so parallel runs rarely share one.
        let k = ((pid as u64 * 7 + n) % 250) as u8;
        let client = Client {
            netns: format!("{PREFIX}{pid}-{n}-client"),
            machine_ip: Ipv4Addr::new(10, 232, k, 1),
            ip: Ipv4Addr::new(10, 232, k, 2),
        };
        // Interface names are at most 15 bytes.
        let link = format!("shc{}", (pid as u64 * 100 + n) % 100_000_000_000);
        ip(&["netns", "add", &client.netns])?;
        ip(&[
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.netns,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", client.machine_ip),
            "dev",
            &link,
        ])?;
        ip(&["link", "set", &link, "up"])?;
        let ns = client.netns.as_str();
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", client.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let via = client.machine_ip.to_string();
        ip(&["-n", ns, "route", "add", "default", "via", &via])?;
        Ok(client)
    }

    /// Runs `f` on a thread inside the client's namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = self.netns.clone();
        std::thread::spawn(move || {
            enter(&netns).unwrap_or_else(|e| panic!("{e}"));
            f()
        })
        .join()
        .expect("the client thread")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        delete_namespace(&self.netns);
    }
}

// --- the delay queue: NFQUEUE over netlink -------------------------------

const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
const CLONE_NEWNET: i32 = 0x4000_0000;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// Packets the kernel may hold for one delayed direction.
const QUEUE_MAXLEN: u32 = 8192;

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

/// Moves the calling thread (only it) into the network namespace `netns`.
fn enter(netns: &str) -> Result<(), String> {
    let ns = File::open(format!("/run/netns/{netns}"))
        .map_err(|e| format!("open namespace {netns}: {e}"))?;
    // SAFETY: setns only changes this thread's network namespace; the
    // descriptor is valid for the call.
    if unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) } != 0 {
        return Err(format!(
            "enter namespace {netns}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn nl_attr(kind: u16, payload: &[u8], out: &mut Vec<u8>) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// One nfnetlink message to the queue subsystem: header, `nfgenmsg`
/// (family unspecified, version 0, the queue number big-endian), attributes.
fn nl_message(kind: u16, flags: u16, queue: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// Sends a configuration message and reads the kernel's acknowledgement.
fn nl_config(sock: &socket2::Socket, queue: u16, attrs: &[u8]) -> Result<(), String> {
    sock.send(&nl_message(
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        queue,
        attrs,
    ))
    .map_err(|e| format!("netlink send: {e}"))?;
    let mut buf = [0u8; 512];
    let n = (&*sock)
        .read(&mut buf)
        .map_err(|e| format!("netlink ack: {e}"))?;
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(format!(
                "the kernel refused to configure queue {queue}: {}",
                std::io::Error::from_raw_os_error(-code)
            ));
        }
    }
    Ok(())
}

/// Packet ids from one received netlink datagram.
fn packet_ids(data: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut off = 0;
    while off + 16 <= data.len() {
        let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        if len < 16 || off + len > data.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            let mut a = off + 20;
            while a + 4 <= off + len {
                let alen = u16::from_ne_bytes([data[a], data[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([data[a + 2], data[a + 3]]) & 0x7fff;
                if alen < 4 {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes(data[a + 4..a + 8].try_into().unwrap()));
                }
                a += (alen + 3) & !3;
            }
        }
        off += (len + 3) & !3;
    }
    ids
}

/// The impairment thread: enters `netns`, binds NFQUEUE `queue`, and gives
/// each packet its verdict: drop with probability `loss`, else accept once
/// `delay` has passed. Reports on `ready` once bound; returns when `stop`.
fn delay_queue(
    netns: &str,
    queue: u16,
    delay: Duration,
    loss: f64,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let setup = || -> Result<socket2::Socket, String> {
        enter(netns)?;
        let sock = socket2::Socket::new(
            socket2::Domain::from(AF_NETLINK),
            socket2::Type::RAW,
            Some(socket2::Protocol::from(NETLINK_NETFILTER)),
        )
        .map_err(|e| format!("netlink socket: {e}"))?;
        let _ = sock.set_recv_buffer_size(4 << 20);
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut attrs = Vec::new();
        nl_attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0], &mut attrs);
        nl_config(&sock, queue, &attrs)?;
        let mut attrs = Vec::new();
        // Copy range 0 and metadata only: the verdict needs just the id.
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        nl_attr(NFQA_CFG_PARAMS, &params, &mut attrs);
        nl_attr(
            NFQA_CFG_QUEUE_MAXLEN,
            &QUEUE_MAXLEN.to_be_bytes(),
            &mut attrs,
        );
        nl_config(&sock, queue, &attrs)?;
        Ok(sock)
    };
    let sock = match setup() {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let verdict = |id: u32, v: u32| {
        let mut attrs = Vec::new();
        let mut hdr = v.to_be_bytes().to_vec();
        hdr.extend_from_slice(&id.to_be_bytes());
        nl_attr(NFQA_VERDICT_HDR, &hdr, &mut attrs);
        let _ = sock.send(&nl_message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, queue, &attrs));
    };
    // Verdicts in arrival order: every packet waits the same delay.
    let mut pending: std::collections::VecDeque<(Instant, u32)> = Default::default();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while pending.front().is_some_and(|(due, _)| *due <= now) {
            let (_, id) = pending.pop_front().unwrap();
            verdict(id, NF_ACCEPT);
        }
        let wait = pending
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        let _ = sock.set_read_timeout(Some(wait));
        match sock.recv(&mut buf) {
            Ok(n) => {
                // SAFETY: recv initialised the first n bytes.
                let data: &[u8] =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, n) };
                let arrived = Instant::now();
                for id in packet_ids(data) {
                    if loss > 0.0 && rand::random::<f64>() < loss {
                        verdict(id, NF_DROP);
                    } else {
                        pending.push_back((arrived + delay, id));
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // ENOBUFS: the kernel dropped messages this thread was too slow
            // for; those packets are lost, which a lossy link allows.
            Err(_) => {}
        }
    }
}

// --- shoal daemons inside the hosts ---------------------------------------

/// Starts `shoal` inside `host` (its log appended to `log`).
pub fn spawn_in(
    net: &Net,
    host: usize,
    log: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    // `ip netns exec` execs the program, so the child is the daemon itself
    // and killing it kills the daemon.
    super::spawn_daemon_from(net.exec(host, BIN), log, dir, args, env)
}

/// Daemons each in its own host of a [`Net`]: node `i` runs on host `i`.
/// Dropping it kills the daemons, then removes the namespaces.
pub struct NsCluster {
    pub nodes: Vec<Daemon>,
    pub net: Net,
    /// Environment for every daemon (e.g. `SHOAL_FAKE_RUNTIME`).
    pub env: Vec<(String, String)>,
    pub root: tempfile::TempDir,
    /// The node names, by host (`node-<host>` where none is given).
    pub names: Vec<String>,
}

impl Drop for NsCluster {
    fn drop(&mut self) {
        for d in &mut self.nodes {
            d.kill();
        }
        // A failed test shows what the daemons last logged.
        if std::thread::panicking() {
            for d in &self.nodes {
                let log = d.log_text();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- last lines of {} ({}):\n{tail}", d.name, d.addr());
            }
        }
    }
}

impl NsCluster {
    pub fn new(net: Net, env: &[(&str, &str)]) -> NsCluster {
        NsCluster {
            nodes: Vec::new(),
            net,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            root: tempfile::tempdir().unwrap(),
            names: Vec::new(),
        }
    }

    /// Names the nodes (host `i` gets `names[i]`) instead of `node-<host>`.
    pub fn with_names(mut self, names: &[&str]) -> NsCluster {
        self.names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    fn spawn(&self, host: usize, d: &Daemon, args: &[&str]) -> Child {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        spawn_in(&self.net, host, &d.log, &d.dir, args, &env)
    }

    fn daemon(&self, host: usize) -> Daemon {
        let name = self
            .names
            .get(host)
            .cloned()
            .unwrap_or_else(|| format!("node-{host}"));
        Daemon {
            ip: self.net.ip(host).to_string(),
            port: PORT,
            dir: self.root.path().join(&name),
            log: self.root.path().join(format!("{name}.log")),
            name,
            child: None,
        }
    }

    /// `shoal init` on host 0; waits until its API answers.
    pub fn init(&mut self) {
        assert!(self.nodes.is_empty(), "init starts the first node");
        let mut d = self.daemon(0);
        d.child = Some(self.spawn(0, &d, &["init", "--listen", &d.addr(), "--name", &d.name]));
        self.nodes.push(d);
        wait_for(Duration::from_secs(20), || {
            self.nodes[0].json(&["node", "ls"]).ok()
        })
        .unwrap_or_else(|| panic!("init did not come up: {}", self.nodes[0].log_text()));
    }

    /// `shoal join` of the next host through node 0 with `role`'s token;
    /// waits until the new node is ready (and a voter, for a manager).
    pub fn join(&mut self, role: &str) -> usize {
        let host = self.nodes.len();
        let token = self.nodes[0]
            .ok(&["token", "show", role, "-q"])
            .trim()
            .to_string();
        let via = self.nodes[0].addr();
        let mut d = self.daemon(host);
        let args = [
            "join",
            &via,
            "--token",
            &token,
            "--listen",
            &d.addr(),
            "--name",
            &d.name,
        ];
        d.child = Some(self.spawn(host, &d, &args));
        let name = d.name.clone();
        self.nodes.push(d);
        wait_for(Duration::from_secs(30), || {
            let nodes = self.nodes[host].json(&["node", "ls"]).ok()?;
            let me = nodes
                .as_array()?
                .iter()
                .find(|n| n["name"] == name.as_str())?;
            let voter_ok = role != "manager" || me["voter"] == true;
            (me["status"] == "ready" && voter_ok).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} did not join: {}", self.nodes[host].log_text()));
        host
    }

    /// Starts a killed node again (`shoal run`) inside its host.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is still running");
        let child = self.spawn(i, &self.nodes[i], &["run"]);
        self.nodes[i].child = Some(child);
    }

    /// The Raft node id of each daemon, by index (from `node ls`: a
    /// follower's `status` is the leader's).
    pub fn node_ids(&self) -> Vec<u64> {
        let nodes = self.nodes[0].json(&["node", "ls"]).expect("node ls");
        self.nodes
            .iter()
            .map(|d| {
                nodes
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["name"] == d.name.as_str())
                    .and_then(|n| n["id"].as_u64())
                    .unwrap_or_else(|| panic!("{} is not in `node ls`: {nodes}", d.name))
            })
            .collect()
    }
}
