//! Test harness: real `shoal` processes on loopback addresses, each with its
//! own temporary data dir, killed with SIGKILL when the test ends.

#![allow(dead_code)]

pub mod netns;
pub mod services;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// A UDP port free on 127.0.0.1, .2 and .3 (each node binds its own address).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        let others_free = (2..=9).all(|i| UdpSocket::bind(format!("127.0.0.{i}:{port}")).is_ok());
        if others_free {
            return port;
        }
    }
    panic!("no free UDP port on 127.0.0.1-9");
}

/// One shoal daemon under test.
pub struct Daemon {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Runs a client command against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("run shoal client")
    }

    /// A client command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`shoal {}` on {} failed: {}{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON: {e}"))
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon as an operator would (SIGTERM), waiting up to 15 s
    /// for it to exit.
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .output();
        let exited = wait_for(Duration::from_secs(15), || c.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{} did not exit within 15 s of SIGTERM", self.name);
        }
    }

    /// `shoal run` from the existing data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.child = Some(spawn_daemon(&self.log, &self.dir, &["run"]));
    }

    /// [`Daemon::restart`] with extra environment for the daemon.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.child = Some(spawn_daemon_with_env(&self.log, &self.dir, &["run"], env));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_daemon(log: &Path, dir: &Path, args: &[&str]) -> Child {
    spawn_daemon_with_env(log, dir, args, &[])
}

fn spawn_daemon_with_env(log: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    spawn_daemon_from(Command::new(BIN), log, dir, args, env)
}

/// Starts a daemon from `base` (the `shoal` binary, or a command that execs
/// it, such as `ip netns exec HOST shoal`), its output appended to `log`.
pub fn spawn_daemon_from(
    mut base: Command,
    log: &Path,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    base.arg("--data-dir")
        .arg(dir)
        .arg("--log-level")
        .arg("info")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .expect("spawn shoal daemon")
}

/// A set of daemons sharing one temporary directory. Dropping it kills the
/// daemons and removes the containers of this cluster (found by its label).
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub nodes: Vec<Daemon>,
    pub cluster_id: Option<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for d in &mut self.nodes {
            d.kill();
        }
        if let Some(id) = &self.cluster_id {
            remove_containers(&format!("shoal.cluster={id}"));
        }
    }
}

/// Removes every container carrying `label` (KEY=VALUE).
pub fn remove_containers(label: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output();
    let Ok(out) = out else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            root: tempfile::tempdir().unwrap(),
            port: free_port(),
            nodes: Vec::new(),
            cluster_id: None,
        }
    }

    fn daemon(&self, name: &str, ip: &str) -> Daemon {
        let dir = self.root.path().join(name);
        Daemon {
            name: name.to_string(),
            ip: ip.to_string(),
            port: self.port,
            log: self.root.path().join(format!("{name}.log")),
            dir,
            child: None,
        }
    }

    /// `shoal init` on `ip`; waits until its API answers.
    pub fn init(&mut self, name: &str, ip: &str) -> usize {
        self.init_with_env(name, ip, &[])
    }

    /// [`Cluster::init`] with extra environment for the daemon.
    pub fn init_with_env(&mut self, name: &str, ip: &str, env: &[(&str, &str)]) -> usize {
        let mut d = self.daemon(name, ip);
        d.child = Some(spawn_daemon_with_env(
            &d.log,
            &d.dir,
            &["init", "--listen", &d.addr(), "--name", name],
            env,
        ));
        self.nodes.push(d);
        let i = self.nodes.len() - 1;
        wait_for(Duration::from_secs(20), || {
            self.nodes[i].json(&["node", "ls"]).ok()
        })
        .unwrap_or_else(|| panic!("init did not come up: {}", self.nodes[i].log_text()));
        self.cluster_id = self.nodes[i]
            .json(&["status"])
            .ok()
            .and_then(|st| st["cluster_id"].as_str().map(str::to_string));
        assert!(self.cluster_id.is_some(), "status shows no cluster id");
        i
    }

    pub fn token(&self, role: &str) -> String {
        self.nodes[0]
            .ok(&["token", "show", role, "-q"])
            .trim()
            .to_string()
    }

    /// `shoal join` through node 0 with the given role's token; waits until
    /// node 0 lists the new node as ready.
    pub fn join(&mut self, name: &str, ip: &str, role: &str) -> usize {
        self.join_with_env(name, ip, role, &[])
    }

    /// [`Cluster::join`] with extra environment for the daemon.
    pub fn join_with_env(
        &mut self,
        name: &str,
        ip: &str,
        role: &str,
        env: &[(&str, &str)],
    ) -> usize {
        let token = self.token(role);
        let via = self.nodes[0].addr();
        let mut d = self.daemon(name, ip);
        d.child = Some(spawn_daemon_with_env(
            &d.log,
            &d.dir,
            &[
                "join",
                &via,
                "--token",
                &token,
                "--listen",
                &d.addr(),
                "--name",
                name,
            ],
            env,
        ));
        self.nodes.push(d);
        let i = self.nodes.len() - 1;
        let name = name.to_string();
        wait_for(Duration::from_secs(30), || {
            let nodes = self.nodes[i].json(&["node", "ls"]).ok()?;
            let me = nodes
                .as_array()?
                .iter()
                .find(|n| n["name"] == name.as_str())?;
            let voter_ok = role != "manager" || me["voter"] == true;
            (me["status"] == "ready" && voter_ok).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} did not join: {}", self.nodes[i].log_text()));
        i
    }

    /// Index of the node that is leader according to a live node.
    pub fn leader(&self) -> Option<usize> {
        for d in &self.nodes {
            let Ok(st) = d.json(&["status"]) else {
                continue;
            };
            let Some(id) = st["leader_id"].as_u64() else {
                continue;
            };
            let members = st["members"].as_array()?;
            let name = members.iter().find(|m| m["id"] == id)?["name"].as_str()?;
            return self.nodes.iter().position(|n| n.name == name);
        }
        None
    }
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
