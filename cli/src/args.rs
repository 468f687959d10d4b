//! The `shoal` command line: every option and subcommand, and the parsers that
//! validate user input before any work starts.
//!
//! Daemon subcommands (`init`, `join`, `run`) are parsed here and executed by the
//! binary; client subcommands are executed by [`crate::run`] against the control
//! API. Input is rejected at parse time with a sentence naming what is allowed,
//! using the same rules as the server ([`crate::api`]).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::api;

/// The socket file inside the data directory.
pub const SOCKET_FILE_NAME: &str = "shoal.sock";
/// Where nodes keep their state unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";
/// The peer port used when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:4500";
/// Bounds for `--heartbeat-timeout`: below the lower one every scheduling hiccup
/// marks nodes down; above the upper one a lost node goes unnoticed for too long.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bounds for `--election-timeout`: below the lower one a loopback round trip
/// under load misses the Raft heartbeat; above the upper one a dead leader
/// leaves the cluster without writes for most of a minute.
pub const MIN_ELECTION_TIMEOUT: Duration = Duration::from_millis(50);
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `--election-timeout`, tuned for fast failover on a LAN.
pub const DEFAULT_ELECTION_TIMEOUT: &str = "150ms";
/// A Unix socket path must fit `sockaddr_un.sun_path` (108 bytes with the NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;
/// Join tokens are short printable strings; anything longer is a paste mistake.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Run a shoal node, or control the cluster through the local node.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "shoal",
    version,
    about = "Run a shoal node, or control a shoal cluster through the local node",
    propagate_version = true
)]
pub struct Cli {
    /// Control socket of the daemon to talk to [default: <data-dir>/shoal.sock]
    #[arg(
        short = 'H',
        long = "host",
        env = "SHOAL_HOST",
        global = true,
        value_name = "unix:///PATH",
        value_parser = parse_host
    )]
    pub host: Option<PathBuf>,

    /// Directory holding the node's state and its control socket
    #[arg(
        long,
        env = "SHOAL_DATA_DIR",
        global = true,
        value_name = "DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,

    /// Log filter for daemon subcommands, e.g. `info` or `shoal=debug,openraft=info`
    #[arg(
        long,
        env = "SHOAL_LOG",
        global = true,
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,

    /// Log line format for daemon subcommands
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The control socket: `-H` if given, else `<data-dir>/shoal.sock`.
    pub fn socket_path(&self) -> PathBuf {
        match &self.host {
            Some(path) => path.clone(),
            None => self.data_dir.join(SOCKET_FILE_NAME),
        }
    }
}

/// `unix:///path` for messages, the form `-H` accepts.
pub fn socket_url(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// `--mesh-forward`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshForward {
    Proxy,
    Kernel,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Start a new cluster with this node as its first manager
    Init(InitArgs),
    /// Join an existing cluster through one of its managers
    Join(JoinArgs),
    /// Bring a node back from its data directory
    Run(RunArgs),
    /// List, inspect and change nodes
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the cluster's Raft state and quorum as the local node sees it
    Status(StatusArgs),
    /// Show or rotate join tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create or update a service, then wait until its tasks run
    Deploy(Box<DeployArgs>),
    /// List, inspect, scale and remove services
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Deploy and manage whole applications from Compose files
    #[command(subcommand)]
    Stack(StackCommand),
    /// Tools for developing shoal (hidden from help)
    #[command(subcommand, hide = true)]
    Dev(DevCommand),
}

impl Command {
    /// Daemon subcommands run a node; the binary executes them, not [`crate::run`].
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Init(_) | Command::Join(_) | Command::Run(_))
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum DevCommand {
    /// Run 3 managers (child processes) and N simulated worker agents (in this process, on the in-memory engine), deploy, fail the leader, kill agents, and measure; the last line printed is a JSON summary
    Simulate(SimulateArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct SimulateArgs {
    /// Simulated worker agents
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub agents: u32,
    /// Tasks in all (replicas spread evenly over the services)
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tasks: u64,
    /// Services
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub services: u32,
    /// Fraction of the agents killed once everything runs (0 to 1; 0 skips the step)
    #[arg(long, default_value_t = 0.1, value_parser = parse_ratio)]
    pub kill_fraction: f64,
    /// How long a container of the in-memory engine takes to start (e.g. 0s, 100ms)
    #[arg(long, default_value = "100ms", value_parser = crate::units::parse_duration)]
    pub start_delay: Duration,
    /// Heartbeat timeout of the managers; the agents beat four times per timeout
    #[arg(long, default_value = "2s", value_parser = parse_heartbeat_timeout)]
    pub heartbeat_timeout: Duration,
    /// Raft election timeout of the managers (see `shoal init --help`)
    #[arg(long, default_value = DEFAULT_ELECTION_TIMEOUT, value_parser = parse_election_timeout)]
    pub election_timeout: Duration,
    /// Do not kill the leader while the tasks are starting
    #[arg(long)]
    pub no_failover: bool,
    /// Workers do not follow the leader's endpoint stream (which real nodes follow for the routing mesh and DNS)
    #[arg(long)]
    pub no_endpoint_feed: bool,
    /// UDP port the managers listen on, on 127.0.0.1-3 [default: a free one]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Where the managers' data directories and logs go [default: a new temporary directory, removed afterwards]
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Give up when one step (joining, converging, rescheduling) takes longer than this
    #[arg(long, default_value = "600s", value_parser = crate::units::parse_duration)]
    pub step_timeout: Duration,
}

/// What a node that starts from an empty data directory is told: `init`
/// and `join` share these.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct NewNodeArgs {
    /// Address to accept peer connections on
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_socket_addr)]
    pub listen: SocketAddr,

    /// Address other nodes use to reach this one [default: the listen address]
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_socket_addr)]
    pub advertise_addr: Option<SocketAddr>,

    /// Node name [default: the host name]
    #[arg(long, value_name = "NAME", default_value_t = default_node_name(), hide_default_value = true, value_parser = parse_node_name)]
    pub name: String,

    /// How long a node may stay silent before it is marked down, when this node leads (e.g. 500ms, 2s)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_heartbeat_timeout)]
    pub heartbeat_timeout: Duration,

    /// Raft election timeout: a follower that hears nothing from its leader for twice this (the leader lease) plus a random one to two times this campaigns, and the Raft heartbeat is 4/5 of it. Longer rides out a loaded machine or a slow network; shorter fails over faster (e.g. 150ms, 1s)
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_ELECTION_TIMEOUT, value_parser = parse_election_timeout)]
    pub election_timeout: Duration,

    /// Address to answer DNS for `*.shoal` on (repeatable; `none` disables) [default: the listen IP, or 127.0.0.1, port 53; port 5354 where 53 is taken]
    #[arg(long = "dns-addr", value_name = "ADDR:PORT|none", env = "SHOAL_DNS_ADDR", value_delimiter = ',', value_parser = parse_dns_addr)]
    pub dns_addr: Vec<String>,

    /// How connections to published ports reach this node's own tasks: `proxy` (through the daemon: least-connections, caps, idle timeout, retry, PROXY header) or `kernel` (nftables DNAT for the node's round-robin share: kernel speed, the client's own address; needs root, nftables and a listen address other than loopback)
    #[arg(long = "mesh-forward", value_name = "MODE", env = "SHOAL_MESH_FORWARD", value_enum, default_value_t = MeshForward::Proxy)]
    pub mesh_forward: MeshForward,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct InitArgs {
    #[command(flatten)]
    pub node: NewNodeArgs,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct JoinArgs {
    /// Address of a manager of the cluster
    #[arg(value_name = "ADDR", value_parser = parse_socket_addr)]
    pub addr: SocketAddr,

    /// Join token from `shoal token show manager|worker`
    #[arg(long, value_name = "TOKEN", value_parser = parse_token)]
    pub token: String,

    #[command(flatten)]
    pub node: NewNodeArgs,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct RunArgs {
    /// Address to accept peer connections on [default: the one stored in the data directory]
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub listen: Option<SocketAddr>,

    /// Address other nodes use to reach this one [default: the one stored in the data directory]
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_socket_addr)]
    pub advertise_addr: Option<SocketAddr>,

    /// How long a node may stay silent before it is marked down, when this node leads (e.g. 500ms, 2s)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_heartbeat_timeout)]
    pub heartbeat_timeout: Duration,

    /// Raft election timeout: a follower that hears nothing from its leader for twice this (the leader lease) plus a random one to two times this campaigns, and the Raft heartbeat is 4/5 of it. Longer rides out a loaded machine or a slow network; shorter fails over faster (e.g. 150ms, 1s)
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_ELECTION_TIMEOUT, value_parser = parse_election_timeout)]
    pub election_timeout: Duration,

    /// Address to answer DNS for `*.shoal` on (repeatable; `none` disables) [default: the listen IP, or 127.0.0.1, port 53; port 5354 where 53 is taken]
    #[arg(long = "dns-addr", value_name = "ADDR:PORT|none", env = "SHOAL_DNS_ADDR", value_delimiter = ',', value_parser = parse_dns_addr)]
    pub dns_addr: Vec<String>,

    /// How connections to published ports reach this node's own tasks: `proxy` (through the daemon: least-connections, caps, idle timeout, retry, PROXY header) or `kernel` (nftables DNAT for the node's round-robin share: kernel speed, the client's own address; needs root, nftables and a listen address other than loopback)
    #[arg(long = "mesh-forward", value_name = "MODE", env = "SHOAL_MESH_FORWARD", value_enum, default_value_t = MeshForward::Proxy)]
    pub mesh_forward: MeshForward,

    /// After losing a majority of the managers for good: make this manager the only one, keeping the cluster state in its data directory (refused while another manager answers)
    #[arg(long)]
    pub force_new_cluster: bool,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum NodeCommand {
    /// List the nodes of the cluster
    #[command(visible_alias = "list")]
    Ls {
        /// Print the API's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one node in detail
    Inspect {
        /// Node id or name
        #[arg(value_name = "NODE", value_parser = parse_node_ref)]
        node: String,
        /// Print the API's JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove a node from the cluster
    #[command(visible_alias = "remove")]
    Rm {
        /// Node id or name
        #[arg(value_name = "NODE", value_parser = parse_node_ref)]
        node: String,
        /// Remove the node even if it is still ready
        #[arg(short, long)]
        force: bool,
    },
    /// Make a worker a voting manager
    Promote {
        /// Node id or name
        #[arg(value_name = "NODE", value_parser = parse_node_ref)]
        node: String,
    },
    /// Make a manager a worker
    Demote {
        /// Node id or name
        #[arg(value_name = "NODE", value_parser = parse_node_ref)]
        node: String,
    },
    /// Change a node's availability, labels or name
    Update(NodeUpdateArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["availability", "label_add", "label_rm", "name"])
))]
pub struct NodeUpdateArgs {
    /// Node id or name
    #[arg(value_name = "NODE", value_parser = parse_node_ref)]
    pub node: String,

    /// Whether new tasks may be placed on the node (drain also moves its tasks away)
    #[arg(long, value_enum)]
    pub availability: Option<Availability>,

    /// Add or replace a label (repeatable)
    #[arg(long = "label-add", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,

    /// Remove a label (repeatable)
    #[arg(long = "label-rm", value_name = "KEY", value_parser = parse_label_key)]
    pub label_rm: Vec<String>,

    /// Rename the node
    #[arg(long, value_name = "NEW", value_parser = parse_node_name)]
    pub name: Option<String>,
}

impl NodeUpdateArgs {
    /// The request body for `POST /v1/nodes/{node}/update`.
    pub fn to_update(&self) -> api::NodeUpdate {
        api::NodeUpdate {
            availability: self.availability.map(|a| a.as_str().to_owned()),
            labels_add: self.label_add.iter().cloned().collect(),
            labels_rm: self.label_rm.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StatusArgs {
    /// Print the API's JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum TokenCommand {
    /// Show the join token for a role
    Show {
        #[arg(value_enum)]
        role: TokenRole,
        /// Print the token only
        #[arg(short, long)]
        quiet: bool,
    },
    /// Replace the join token for a role; the old one stops working
    Rotate {
        #[arg(value_enum)]
        role: TokenRole,
        /// Print the token only
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    Manager,
    Worker,
}

impl TokenRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Manager => "manager",
            TokenRole::Worker => "worker",
        }
    }
}

pub use crate::units::parse_duration;

/// How long `deploy`, `service scale` and `service rm` wait unless `--timeout` says otherwise.
pub const DEFAULT_WAIT_TIMEOUT: &str = "120s";
/// The longest `--timeout` accepted.
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `shoal deploy`: a service from flags, from a spec file, or from a file with
/// flags overriding it.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(after_help = "Examples:
  shoal deploy web --image nginx:1.27 --replicas 3 -p 8080:80 --memory 256m --cpus 0.5
  shoal deploy -f web.yaml --replicas 5
  shoal deploy job --image busybox:latest --restart-condition none -- sh -c 'echo hi'")]
pub struct DeployArgs {
    /// Service name [required unless given in --file]
    #[arg(value_name = "NAME", value_parser = parse_service_name, required_unless_present = "file")]
    pub name: Option<String>,

    /// Read the spec from a JSON (.json) or YAML (.yaml, .yml) file; flags override it
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Image to run, e.g. nginx:1.27 [required unless given in --file]
    #[arg(long, value_name = "IMAGE", value_parser = parse_image, required_unless_present = "file")]
    pub image: Option<String>,

    /// Number of tasks of a replicated service [default: 1]
    #[arg(long, value_name = "N", value_parser = parse_replicas)]
    pub replicas: Option<u64>,

    /// replicated: --replicas tasks; global: one task on every eligible node [default: replicated]
    #[arg(long, value_name = "MODE", value_parser = PossibleValuesParser::new(api::SERVICE_MODES))]
    pub mode: Option<String>,

    /// Publish a port on the node running the task (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "PUBLISHED:TARGET[/tcp|udp]", value_parser = crate::units::parse_port)]
    pub publish: Vec<api::PortDoc>,

    /// Set an environment variable (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Set a service label (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_service_label)]
    pub label: Vec<(String, String)>,

    /// CPU limit per task, e.g. 0.5
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus_flag)]
    pub cpus: Option<f64>,

    /// Memory limit per task, e.g. 256m or 1g
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_flag)]
    pub memory: Option<String>,

    /// CPUs a node must have free to take a task
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus_flag)]
    pub reserve_cpus: Option<f64>,

    /// Memory a node must have free to take a task
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_flag)]
    pub reserve_memory: Option<String>,

    /// Placement constraint, e.g. node.labels.zone==eu (repeatable, all must hold)
    #[arg(long = "constraint", value_name = "EXPR", value_parser = parse_constraint)]
    pub constraint: Vec<String>,

    /// Most tasks of this service on one node
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_per_node: Option<u64>,

    /// When to replace a task whose container exited [default: any]
    #[arg(long, value_name = "CONDITION", value_parser = PossibleValuesParser::new(api::RESTART_CONDITIONS))]
    pub restart_condition: Option<String>,

    /// Wait between restart attempts, e.g. 5s [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_flag)]
    pub restart_delay: Option<String>,

    /// Give up restarting after this many attempts [default: unlimited]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub restart_max_attempts: Option<u64>,

    /// Window over which restart attempts are counted, e.g. 1m [default: unbounded]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_flag)]
    pub restart_window: Option<String>,

    /// Time a container gets to stop before it is killed [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_flag)]
    pub stop_grace_period: Option<String>,

    /// Signal that asks a container to stop, e.g. SIGTERM [default: the image's]
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal)]
    pub stop_signal: Option<String>,

    /// When to pull the image [default: missing]
    #[arg(long, value_name = "POLICY", value_parser = PossibleValuesParser::new(api::PULL_POLICIES))]
    pub pull: Option<String>,

    /// Replace the image's entrypoint (split on whitespace)
    #[arg(long, value_name = "CMD", value_parser = parse_entrypoint)]
    pub entrypoint: Option<String>,

    #[command(flatten)]
    pub health: HealthArgs,

    #[command(flatten)]
    pub policy: UpdatePolicyArgs,

    /// Redeploy every task even if the spec is unchanged
    #[arg(long)]
    pub force: bool,

    /// Arguments after `--` replace the image's command
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,

    /// Return once the cluster accepted the spec instead of waiting for the tasks
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait for the service to converge (a rolling update: how long without progress)
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,

    /// Print the API's JSON answer (progress goes to standard error)
    #[arg(long)]
    pub json: bool,

    /// Show what the deploy would change and where its tasks would go; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Health check flags, shared by `deploy` and `service update`.
#[derive(Args, Debug, Clone, PartialEq, Default)]
pub struct HealthArgs {
    /// Shell command that checks a task's health, e.g. "curl -f http://localhost/"; exit 0 is healthy
    #[arg(long, value_name = "CMD", value_parser = parse_health_cmd)]
    pub health_cmd: Option<String>,

    /// Time between health checks [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub health_interval: Option<String>,

    /// Time a health check may take before it counts as failed [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub health_timeout: Option<String>,

    /// Consecutive failed checks before a task is unhealthy [default: 3]
    #[arg(long, value_name = "N", value_parser = parse_health_retries)]
    pub health_retries: Option<u64>,

    /// Start-up time during which failed checks do not count [default: none]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub health_start_period: Option<String>,

    /// Turn off the image's own health check
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
}

impl HealthArgs {
    /// Lays the flags over a spec document (`--health-cmd` replaces a file's
    /// `health_test`; `--no-healthcheck` clears every other health field).
    pub fn apply(&self, spec: &mut api::ServiceSpecDoc) {
        self.to_request().apply_to(spec);
    }

    fn to_request(&self) -> api::ServiceUpdateRequest {
        api::ServiceUpdateRequest {
            health_cmd: self.health_cmd.clone(),
            health_interval: self.health_interval.clone(),
            health_timeout: self.health_timeout.clone(),
            health_start_period: self.health_start_period.clone(),
            health_retries: self.health_retries,
            no_healthcheck: self.no_healthcheck,
            ..api::ServiceUpdateRequest::default()
        }
    }
}

/// Rolling update and rollback flags, shared by `deploy` and `service update`.
#[derive(Args, Debug, Clone, PartialEq, Default)]
pub struct UpdatePolicyArgs {
    /// Tasks a rolling update replaces at once; 0 = all at once [default: 1]
    #[arg(long, value_name = "N", value_parser = parse_parallelism)]
    pub update_parallelism: Option<u64>,

    /// Wait between batches of a rolling update, e.g. 5s [default: 0s]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub update_delay: Option<String>,

    /// Stop the old task before starting the new one, or the reverse [default: stop-first]
    #[arg(long, value_name = "ORDER", value_parser = PossibleValuesParser::new(api::UPDATE_ORDERS))]
    pub update_order: Option<String>,

    /// How long a new task must run (and stay healthy) to count as updated [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub update_monitor: Option<String>,

    /// What to do when too many new tasks fail [default: pause]
    #[arg(long, value_name = "ACTION", value_parser = PossibleValuesParser::new(api::FAILURE_ACTIONS))]
    pub update_failure_action: Option<String>,

    /// Share of tasks (0 to 1) that may fail before the failure action is taken [default: 0]
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub update_max_failure_ratio: Option<f64>,

    /// Tasks a rollback replaces at once; 0 = all at once [default: 1]
    #[arg(long, value_name = "N", value_parser = parse_parallelism)]
    pub rollback_parallelism: Option<u64>,

    /// Wait between batches of a rollback [default: 0s]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub rollback_delay: Option<String>,

    /// Task order during a rollback [default: stop-first]
    #[arg(long, value_name = "ORDER", value_parser = PossibleValuesParser::new(api::UPDATE_ORDERS))]
    pub rollback_order: Option<String>,

    /// How long a restored task must run to count as rolled back [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait_flag)]
    pub rollback_monitor: Option<String>,

    /// What to do when too many tasks of a rollback fail [default: pause]
    #[arg(long, value_name = "ACTION", value_parser = PossibleValuesParser::new(api::ROLLBACK_FAILURE_ACTIONS))]
    pub rollback_failure_action: Option<String>,

    /// Share of tasks (0 to 1) that may fail during a rollback [default: 0]
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub rollback_max_failure_ratio: Option<f64>,
}

impl UpdatePolicyArgs {
    /// Lays the flags over a spec document.
    pub fn apply(&self, spec: &mut api::ServiceSpecDoc) {
        self.to_request().apply_to(spec);
    }

    fn to_request(&self) -> api::ServiceUpdateRequest {
        api::ServiceUpdateRequest {
            update_parallelism: self.update_parallelism,
            update_delay: self.update_delay.clone(),
            update_order: self.update_order.clone(),
            update_monitor: self.update_monitor.clone(),
            update_failure_action: self.update_failure_action.clone(),
            update_max_failure_ratio: self.update_max_failure_ratio,
            rollback_parallelism: self.rollback_parallelism,
            rollback_delay: self.rollback_delay.clone(),
            rollback_order: self.rollback_order.clone(),
            rollback_monitor: self.rollback_monitor.clone(),
            rollback_failure_action: self.rollback_failure_action.clone(),
            rollback_max_failure_ratio: self.rollback_max_failure_ratio,
            ..api::ServiceUpdateRequest::default()
        }
    }
}

impl DeployArgs {
    /// The spec to send: `base` (from `--file`, or empty) with every flag given on
    /// the command line laid over it. Lists given as flags replace the file's;
    /// `-e` and `--label` add to (or override entries of) the file's maps.
    pub fn to_spec(
        &self,
        base: Option<api::ServiceSpecDoc>,
    ) -> Result<api::ServiceSpecDoc, String> {
        if self.replicas.is_some() && self.mode.as_deref() == Some("global") {
            return Err("--replicas cannot be combined with --mode global: a global service runs one task on every eligible node".into());
        }
        let mut spec = base.unwrap_or_default();
        fn set<T: Clone>(target: &mut Option<T>, flag: &Option<T>) {
            if let Some(value) = flag {
                *target = Some(value.clone());
            }
        }
        if let Some(name) = &self.name {
            spec.name = name.clone();
        }
        if let Some(image) = &self.image {
            spec.image = image.clone();
        }
        set(&mut spec.mode, &self.mode);
        set(&mut spec.replicas, &self.replicas);
        if !self.publish.is_empty() {
            spec.ports = self.publish.clone();
        }
        spec.env.extend(self.env.iter().cloned());
        spec.labels.extend(self.label.iter().cloned());
        set(&mut spec.cpus, &self.cpus);
        set(&mut spec.memory, &self.memory);
        set(&mut spec.reserve_cpus, &self.reserve_cpus);
        set(&mut spec.reserve_memory, &self.reserve_memory);
        if !self.constraint.is_empty() {
            spec.constraints = self.constraint.clone();
        }
        set(&mut spec.max_per_node, &self.max_per_node);
        set(&mut spec.restart_condition, &self.restart_condition);
        set(&mut spec.restart_delay, &self.restart_delay);
        set(&mut spec.restart_max_attempts, &self.restart_max_attempts);
        set(&mut spec.restart_window, &self.restart_window);
        set(&mut spec.stop_grace_period, &self.stop_grace_period);
        set(&mut spec.stop_signal, &self.stop_signal);
        set(&mut spec.pull, &self.pull);
        if let Some(entrypoint) = &self.entrypoint {
            spec.command = entrypoint.split_whitespace().map(str::to_owned).collect();
        }
        if !self.args.is_empty() {
            spec.args = self.args.clone();
        }
        self.health.apply(&mut spec);
        self.policy.apply(&mut spec);
        Ok(spec)
    }
}

#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum ServiceCommand {
    /// List services
    #[command(visible_alias = "list")]
    Ls {
        /// Print the API's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// List a service's tasks, newest first in each slot
    Ps {
        #[arg(value_name = "SERVICE", value_parser = parse_service_name)]
        service: String,
        /// Print the API's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show a service's state, health check, update settings, last update run and previous spec
    Inspect {
        #[arg(value_name = "SERVICE", value_parser = parse_service_name)]
        service: String,
        /// Print the API's JSON answer as it is
        #[arg(long)]
        json: bool,
        /// yaml: print the spec as a file `shoal deploy -f` takes back unchanged
        #[arg(long, value_name = "FORMAT", value_parser = PossibleValuesParser::new(["yaml", "json"]))]
        format: Option<String>,
    },
    /// Change some fields of a service's spec; a change of its tasks rolls out as a rolling update
    Update(Box<ServiceUpdateArgs>),
    /// Return a service to its spec before the last update, by a rolling update
    Rollback(RollbackArgs),
    /// Change the number of replicas of one or more services
    Scale(ScaleArgs),
    /// Remove services and wait until their containers are gone
    #[command(visible_alias = "remove")]
    Rm(ServiceRmArgs),
}

/// `shoal service update NAME [flags]`: changes to the current spec, applied
/// by the leader.
#[derive(Args, Debug, Clone, PartialEq)]
#[command(after_help = "Examples:
  shoal service update web --image app:2 --update-parallelism 2 --update-failure-action rollback
  shoal service update web --env-add MODE=fast --label-rm old
  shoal service update web --force")]
pub struct ServiceUpdateArgs {
    #[arg(value_name = "SERVICE", value_parser = parse_service_name)]
    pub service: String,

    /// New image, e.g. nginx:1.28
    #[arg(long, value_name = "IMAGE", value_parser = parse_image)]
    pub image: Option<String>,

    /// Set or replace an environment variable (repeatable)
    #[arg(long = "env-add", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env_add: Vec<(String, String)>,

    /// Remove an environment variable (repeatable)
    #[arg(long = "env-rm", value_name = "KEY", value_parser = parse_spec_key)]
    pub env_rm: Vec<String>,

    /// Set or replace a service label (repeatable)
    #[arg(long = "label-add", value_name = "KEY=VALUE", value_parser = parse_service_label)]
    pub label_add: Vec<(String, String)>,

    /// Remove a service label (repeatable)
    #[arg(long = "label-rm", value_name = "KEY", value_parser = parse_spec_key)]
    pub label_rm: Vec<String>,

    /// Number of tasks of a replicated service
    #[arg(long, value_name = "N", value_parser = parse_replicas)]
    pub replicas: Option<u64>,

    /// CPU limit per task, e.g. 0.5
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus_flag)]
    pub cpus: Option<f64>,

    /// Memory limit per task, e.g. 256m
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_flag)]
    pub memory: Option<String>,

    /// CPUs a node must have free to take a task
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus_flag)]
    pub reserve_cpus: Option<f64>,

    /// Memory a node must have free to take a task
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_flag)]
    pub reserve_memory: Option<String>,

    #[command(flatten)]
    pub health: HealthArgs,

    #[command(flatten)]
    pub policy: UpdatePolicyArgs,

    /// Redeploy every task even if nothing else changes
    #[arg(long)]
    pub force: bool,

    /// Return once the cluster accepted the change instead of following the update
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait without progress of the update (or for the tasks to converge)
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,
}

impl ServiceUpdateArgs {
    /// The body of `POST /v1/services/{name}/update`; an error when no flag
    /// asks for a change.
    pub fn to_request(&self) -> Result<api::ServiceUpdateRequest, String> {
        let health = self.health.to_request();
        let policy = self.policy.to_request();
        let request = api::ServiceUpdateRequest {
            image: self.image.clone(),
            env_add: self.env_add.iter().cloned().collect(),
            env_rm: self.env_rm.clone(),
            labels_add: self.label_add.iter().cloned().collect(),
            labels_rm: self.label_rm.clone(),
            replicas: self.replicas,
            cpus: self.cpus,
            memory: self.memory.clone(),
            reserve_cpus: self.reserve_cpus,
            reserve_memory: self.reserve_memory.clone(),
            health_cmd: health.health_cmd,
            health_interval: health.health_interval,
            health_timeout: health.health_timeout,
            health_start_period: health.health_start_period,
            health_retries: health.health_retries,
            no_healthcheck: health.no_healthcheck,
            force: self.force,
            ..policy
        };
        if request.is_empty() {
            return Err(format!(
                "nothing to change in service {}; give at least one flag such as --image, --env-add, --replicas or --force (see `shoal service update --help`)",
                self.service
            ));
        }
        Ok(request)
    }
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct RollbackArgs {
    #[arg(value_name = "SERVICE", value_parser = parse_service_name)]
    pub service: String,

    /// Return once the cluster accepted the rollback instead of following it
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait without progress of the rollback
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS, e.g. web=5
    #[arg(value_name = "SERVICE=REPLICAS", required = true, value_parser = parse_scale_target)]
    pub targets: Vec<(String, u64)>,

    /// Return once the cluster accepted the change instead of waiting for the tasks
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait for the services to converge
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,
}

/// `shoal stack ...`: applications described by Compose files.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum StackCommand {
    /// Create or update a stack from a Compose file, then wait until it runs
    #[command(after_help = "Examples:
  shoal stack deploy -c compose.yml shop --dry-run
  shoal stack deploy -c compose.yml shop --prune")]
    Deploy(StackDeployArgs),
    /// List stacks
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// List a stack's services
    Services {
        #[arg(value_name = "STACK", value_parser = parse_service_name)]
        stack: String,
        #[arg(long)]
        json: bool,
    },
    /// List a stack's tasks
    Ps {
        #[arg(value_name = "STACK", value_parser = parse_service_name)]
        stack: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a stack's services and wait until their containers are gone
    Rm(StackRmArgs),
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackDeployArgs {
    /// The Compose file (its folder's .env supplies variables too)
    #[arg(short = 'c', long = "compose-file", value_name = "FILE")]
    pub compose_file: PathBuf,

    #[arg(value_name = "STACK", value_parser = parse_service_name)]
    pub stack: String,

    /// Remove the stack's services that the file no longer has
    #[arg(long)]
    pub prune: bool,

    /// Show what would change and where tasks would go; change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Return once the cluster accepted the stack instead of waiting for it to run
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait for each service to converge
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,

    /// Print the API's JSON answer
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct StackRmArgs {
    #[arg(value_name = "STACK", value_parser = parse_service_name)]
    pub stack: String,

    /// Return once the cluster accepted the removal instead of waiting for the containers
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait for the containers to be gone
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct ServiceRmArgs {
    #[arg(value_name = "SERVICE", required = true, value_parser = parse_service_name)]
    pub services: Vec<String>,

    /// Return once the cluster accepted the removal instead of waiting for the containers
    #[arg(short, long)]
    pub detach: bool,

    /// How long to wait for the containers to be gone
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WAIT_TIMEOUT, value_parser = parse_wait_timeout)]
    pub timeout: Duration,
}

fn parse_service_name(input: &str) -> Result<String, String> {
    api::validate_service_name(input)
        .map(|()| input.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_image(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Err("the image is empty; give a reference such as nginx:1.27".into());
    }
    if input.len() > api::MAX_IMAGE_LEN
        || input.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{input:?} is not an image reference; use at most {} characters without whitespace, e.g. nginx:1.27",
            api::MAX_IMAGE_LEN
        ));
    }
    Ok(input.to_owned())
}

fn parse_replicas(input: &str) -> Result<u64, String> {
    parse_bounded(input, api::MAX_REPLICAS, "replicas from 0")
}

/// A whole number from 0 to `max`; `expected` says what it counts, e.g.
/// "replicas from 0", for the error.
fn parse_bounded(input: &str, max: u64, expected: &str) -> Result<u64, String> {
    let expected = format!("expected a whole number of {expected} to {max}");
    match input.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("{input} is too many; {expected}")),
        Err(_) => Err(format!("{input:?} is not a number; {expected}")),
    }
}

fn parse_count(input: &str) -> Result<u64, String> {
    input
        .parse()
        .map_err(|_| format!("{input:?} is not a number; expected a whole number such as 3"))
}

/// Parses `KEY=VALUE` for `-e`; the value may be empty or contain '='.
pub fn parse_env(input: &str) -> Result<(String, String), String> {
    let Some((key, value)) = input.split_once('=') else {
        return Err(format!(
            "{input:?} has no '='; expected KEY=VALUE, e.g. MODE=production"
        ));
    };
    if !api::valid_spec_key(key) {
        return Err(format!(
            "variable name {key:?} is not allowed; use 1-{} characters without whitespace or '='",
            api::MAX_SPEC_KEY_LEN
        ));
    }
    if value.contains('\0') {
        return Err(format!("value of {key:?} contains a NUL character"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses `KEY=VALUE` for a service's `--label`.
pub fn parse_service_label(input: &str) -> Result<(String, String), String> {
    let Some((key, value)) = input.split_once('=') else {
        return Err(format!(
            "label {input:?} has no '='; expected KEY=VALUE, e.g. tier=frontend"
        ));
    };
    if !api::valid_spec_key(key) {
        return Err(format!(
            "label key {key:?} is not allowed; use 1-{} characters without whitespace or '='",
            api::MAX_SPEC_KEY_LEN
        ));
    }
    if key.starts_with("shoal.") {
        return Err(format!(
            "label key {key:?} starts with \"shoal.\", which is reserved for shoal itself"
        ));
    }
    if value.contains('\0') {
        return Err(format!("value of label {key:?} contains a NUL character"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// An environment variable name or label key for `--env-rm` / `--label-rm`.
fn parse_spec_key(input: &str) -> Result<String, String> {
    if api::valid_spec_key(input) {
        Ok(input.to_owned())
    } else {
        Err(format!(
            "key {input:?} is not allowed; use 1-{} characters without whitespace or '='",
            api::MAX_SPEC_KEY_LEN
        ))
    }
}

fn parse_health_cmd(input: &str) -> Result<String, String> {
    api::validate_health_cmd(input).map(|()| input.to_owned())
}

/// A duration from 0s to 24h (health check timings, update delay and monitor).
fn parse_wait_flag(input: &str) -> Result<String, String> {
    let duration = parse_duration(input)?;
    if duration > api::MAX_SPEC_WAIT {
        return Err(format!("{input} is too long; allowed 0s to 24h"));
    }
    Ok(input.to_owned())
}

fn parse_health_retries(input: &str) -> Result<u64, String> {
    parse_bounded(
        input,
        api::MAX_HEALTH_RETRIES,
        "failed checks from 0 (Docker's default of 3)",
    )
}

fn parse_parallelism(input: &str) -> Result<u64, String> {
    parse_bounded(input, api::MAX_REPLICAS, "tasks from 0 (all at once)")
}

fn parse_ratio(input: &str) -> Result<f64, String> {
    let ratio: f64 = input.trim().parse().map_err(|_| {
        format!("{input:?} is not a number; allowed a number from 0 to 1, e.g. 0.2")
    })?;
    api::check_ratio(ratio)?;
    Ok(ratio)
}

fn parse_cpus_flag(input: &str) -> Result<f64, String> {
    crate::units::parse_cpus(input)?;
    input
        .trim()
        .parse()
        .map_err(|_| format!("{input:?} is not a number"))
}

fn parse_memory_flag(input: &str) -> Result<String, String> {
    crate::units::parse_memory(input).map(|_| input.to_owned())
}

fn parse_duration_flag(input: &str) -> Result<String, String> {
    parse_duration(input).map(|_| input.to_owned())
}

fn parse_constraint(input: &str) -> Result<String, String> {
    api::validate_constraint(input).map(|()| input.to_owned())
}

fn parse_signal(input: &str) -> Result<String, String> {
    api::validate_signal(input).map(|()| input.to_owned())
}

fn parse_entrypoint(input: &str) -> Result<String, String> {
    if input.split_whitespace().next().is_none() {
        return Err("the entrypoint is empty; give a command such as /bin/sh".into());
    }
    Ok(input.to_owned())
}

/// Parses `SERVICE=REPLICAS` for `service scale`.
pub fn parse_scale_target(input: &str) -> Result<(String, u64), String> {
    let Some((name, replicas)) = input.split_once('=') else {
        return Err(format!(
            "{input:?} has no '='; expected SERVICE=REPLICAS, e.g. web=3"
        ));
    };
    api::validate_service_name(name).map_err(|error| error.to_string())?;
    let replicas = parse_replicas(replicas).map_err(|error| format!("{input}: {error}"))?;
    Ok((name.to_owned(), replicas))
}

fn parse_wait_timeout(input: &str) -> Result<Duration, String> {
    let timeout = parse_duration(input)?;
    if timeout.is_zero() || timeout > MAX_WAIT_TIMEOUT {
        return Err(format!("timeout {input} is out of range; use 1ms to 24h"));
    }
    Ok(timeout)
}

/// `none`, or an `IP:PORT` to serve DNS on.
fn parse_dns_addr(input: &str) -> Result<String, String> {
    if input == "none" || input.parse::<SocketAddr>().is_ok() {
        Ok(input.to_string())
    } else {
        Err(format!(
            "DNS address {input:?} is not IP:PORT or none, e.g. 127.0.0.1:53"
        ))
    }
}

fn parse_heartbeat_timeout(input: &str) -> Result<Duration, String> {
    parse_duration_within(
        input,
        "heartbeat timeout",
        MIN_HEARTBEAT_TIMEOUT..=MAX_HEARTBEAT_TIMEOUT,
        "10ms to 1h",
    )
}

fn parse_election_timeout(input: &str) -> Result<Duration, String> {
    parse_duration_within(
        input,
        "election timeout",
        MIN_ELECTION_TIMEOUT..=MAX_ELECTION_TIMEOUT,
        "50ms to 10s",
    )
}

/// A duration within `allowed` (described as `range` in the error).
fn parse_duration_within(
    input: &str,
    what: &str,
    allowed: std::ops::RangeInclusive<Duration>,
    range: &str,
) -> Result<Duration, String> {
    let value = parse_duration(input)?;
    if !allowed.contains(&value) {
        return Err(format!("{what} {input} is out of range; use {range}"));
    }
    Ok(value)
}

/// Parses `unix:///absolute/path`, the only transport the control API uses.
pub fn parse_host(input: &str) -> Result<PathBuf, String> {
    let Some(path) = input.strip_prefix("unix://") else {
        return Err(format!(
            "host {input:?} is not a Unix socket URL; expected unix:///path/to/shoal.sock"
        ));
    };
    if !path.starts_with('/') {
        return Err(format!(
            "host {input:?} has a relative path; expected an absolute one, e.g. unix:///var/lib/shoal/shoal.sock"
        ));
    }
    if path.len() > MAX_SOCKET_PATH_LEN {
        return Err(format!(
            "socket path in {input:?} is {} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH_LEN}",
            path.len()
        ));
    }
    Ok(PathBuf::from(path))
}

/// Parses `IP:PORT`, or `HOST:PORT` resolved to its first address.
pub fn parse_socket_addr(input: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = "expected HOST:PORT, e.g. 10.0.0.5:4500 or [::1]:4500";
    let Some((host, port)) = input.rsplit_once(':') else {
        return Err(format!("address {input:?} has no port; {expected}"));
    };
    if host.is_empty() {
        return Err(format!("address {input:?} has no host; {expected}"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "address {input:?} has port {port:?}; a port is a number from 0 to 65535"
        ));
    }
    match input.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host name in {input:?} resolved to no address; {expected}")),
        Err(error) => Err(format!("cannot resolve {input:?}: {error}; {expected}")),
    }
}

/// A node reference: an id number or a valid node name.
pub fn parse_node_ref(input: &str) -> Result<String, String> {
    if !input.is_empty() && input.bytes().all(|b| b.is_ascii_digit()) {
        return input
            .parse::<u64>()
            .map(|_| input.to_owned())
            .map_err(|_| format!("node id {input} is too large; ids fit in 64 bits"));
    }
    api::validate_node_name(input)
        .map(|()| input.to_owned())
        .map_err(|error| format!("{error} (or give a node id)"))
}

fn parse_node_name(input: &str) -> Result<String, String> {
    api::validate_node_name(input)
        .map(|()| input.to_owned())
        .map_err(|error| error.to_string())
}

/// Parses `KEY=VALUE` for `--label-add`.
pub fn parse_label(input: &str) -> Result<(String, String), String> {
    let Some((key, value)) = input.split_once('=') else {
        return Err(format!(
            "label {input:?} has no '='; expected KEY=VALUE, e.g. zone=eu"
        ));
    };
    api::validate_label_key(key).map_err(|error| error.to_string())?;
    api::validate_label_value(key, value).map_err(|error| error.to_string())?;
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_label_key(input: &str) -> Result<String, String> {
    api::validate_label_key(input)
        .map(|()| input.to_owned())
        .map_err(|error| error.to_string())
}

fn parse_token(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Err("token is empty; copy it from `shoal token show worker` on a manager".into());
    }
    if input.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "token is {} bytes long, more than {MAX_TOKEN_LEN}; copy it again from `shoal token show`",
            input.len()
        ));
    }
    if let Some(bad) = input.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "token contains {bad:?}; tokens are printable ASCII without spaces"
        ));
    }
    Ok(input.to_owned())
}

/// The host name, when it is a valid node name; "shoal" otherwise.
pub fn default_node_name() -> String {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let candidates = from_kernel
        .into_iter()
        .chain(std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned());
    for name in candidates {
        if api::validate_node_name(&name).is_ok() {
            return name;
        }
    }
    "shoal".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(line: &str) -> Result<Cli, String> {
        let argv = std::iter::once("shoal").chain(line.split_whitespace());
        Cli::try_parse_from(argv).map_err(|error| error.to_string())
    }

    /// Checks that `line` parses and that `expected` holds for it.
    fn check_ok(line: &str, expected: impl FnOnce(&Cli) -> bool) {
        match parse(line) {
            Ok(cli) => assert!(expected(&cli), "{line:?} parsed to {cli:#?}"),
            Err(error) => panic!("{line:?} failed: {error}"),
        }
    }

    fn check_err(line: &str, fragment: &str) {
        match parse(line) {
            Ok(cli) => panic!("{line:?} parsed to {cli:#?}, expected an error"),
            Err(error) => assert!(
                error.contains(fragment),
                "{line:?}: error lacks {fragment:?}:\n{error}"
            ),
        }
    }

    #[test]
    fn global_options_and_socket_path() {
        check_ok("status", |cli| {
            cli.socket_path() == Path::new("/var/lib/shoal/shoal.sock")
                && cli.log_level == "info"
                && cli.log_format == LogFormat::Text
        });
        check_ok("--data-dir /tmp/n1 status", |cli| {
            cli.socket_path() == Path::new("/tmp/n1/shoal.sock")
        });
        check_ok("node ls --data-dir /tmp/n1", |cli| {
            cli.socket_path() == Path::new("/tmp/n1/shoal.sock")
        });
        check_ok("-H unix:///run/s.sock --data-dir /tmp/n1 status", |cli| {
            cli.socket_path() == Path::new("/run/s.sock")
        });
        check_ok("--log-level debug --log-format json run", |cli| {
            cli.log_level == "debug" && cli.log_format == LogFormat::Json
        });
        check_err("-H tcp://1.2.3.4:2375 status", "expected unix:///path");
        check_err("-H unix://rel/s.sock status", "relative path");
        let long = format!("-H unix:///{} status", "a".repeat(MAX_SOCKET_PATH_LEN));
        check_err(&long, "at most 107");
        check_err("--log-format yaml status", "possible values: text, json");
    }

    #[test]
    fn daemon_subcommands() {
        check_ok("init", |cli| match &cli.command {
            Command::Init(args) => {
                args.node.listen == "0.0.0.0:4500".parse().unwrap()
                    && args.node.advertise_addr.is_none()
                    && args.node.heartbeat_timeout == Duration::from_secs(2)
                    && args.node.election_timeout == Duration::from_millis(150)
                    && !args.node.name.is_empty()
                    && cli.command.is_daemon()
            }
            _ => false,
        });
        check_ok(
            "init --listen 127.0.0.2:4600 --advertise-addr 127.0.0.2:4600 --name n2 --heartbeat-timeout 500ms --election-timeout 1s --mesh-forward kernel",
            |cli| {
                cli.command
                    == Command::Init(InitArgs {
                        node: NewNodeArgs {
                            listen: "127.0.0.2:4600".parse().unwrap(),
                            advertise_addr: Some("127.0.0.2:4600".parse().unwrap()),
                            name: "n2".into(),
                            heartbeat_timeout: Duration::from_millis(500),
                            election_timeout: Duration::from_secs(1),
                            dns_addr: Vec::new(),
                            mesh_forward: MeshForward::Kernel,
                        },
                    })
            },
        );
        check_ok(
            "join 127.0.0.1:4500 --token SWMTKN-abc --name w1",
            |cli| match &cli.command {
                Command::Join(args) => {
                    args.addr == "127.0.0.1:4500".parse().unwrap()
                        && args.token == "SWMTKN-abc"
                        && args.node.name == "w1"
                        && args.node.listen == "0.0.0.0:4500".parse().unwrap()
                }
                _ => false,
            },
        );
        check_ok(
            "join localhost:4500 --token t",
            |cli| matches!(&cli.command, Command::Join(args) if args.addr.port() == 4500 && args.addr.ip().is_loopback()),
        );
        check_ok("run", |cli| {
            cli.command
                == Command::Run(RunArgs {
                    listen: None,
                    advertise_addr: None,
                    heartbeat_timeout: Duration::from_secs(2),
                    election_timeout: Duration::from_millis(150),
                    dns_addr: Vec::new(),
                    mesh_forward: MeshForward::Proxy,
                    force_new_cluster: false,
                })
        });
        check_ok(
            "run --force-new-cluster",
            |cli| matches!(&cli.command, Command::Run(args) if args.force_new_cluster),
        );
        check_ok(
            "run --listen [::1]:4501",
            |cli| matches!(&cli.command, Command::Run(args) if args.listen == Some("[::1]:4501".parse().unwrap())),
        );
        check_err("join 127.0.0.1:4500", "--token <TOKEN>");
        check_err("join 127.0.0.1 --token t", "has no port");
        check_err("join 127.0.0.1:99999 --token t", "from 0 to 65535");
        check_err("join :4500 --token t", "has no host");
        check_err("init --listen 0.0.0.0", "has no port");
        check_err("init --name=-bad", "starting with a letter or digit");
        check_err("init --name 42", "all digits");
        check_err("init --heartbeat-timeout 2", "has no unit");
        check_err("init --election-timeout 10ms", "use 50ms to 10s");
        check_err("run --election-timeout 11s", "use 50ms to 10s");
        check_err(
            "join 127.0.0.1:4500 --token t --election-timeout x",
            "election",
        );
        check_err("init --heartbeat-timeout 0s", "use 10ms to 1h");
        check_err(
            "init --heartbeat-timeout 2d",
            "expected a whole number followed by ms, s, m or h",
        );
        check_err("join 127.0.0.1:4500 --token a\u{7f}b", "printable ASCII");
    }

    #[test]
    fn node_subcommands() {
        check_ok("node ls", |cli| {
            cli.command == Command::Node(NodeCommand::Ls { json: false })
        });
        check_ok("node list --json", |cli| {
            cli.command == Command::Node(NodeCommand::Ls { json: true })
        });
        check_ok("node inspect 3 --json", |cli| {
            cli.command
                == Command::Node(NodeCommand::Inspect {
                    node: "3".into(),
                    json: true,
                })
        });
        check_ok("node rm n2 --force", |cli| {
            cli.command
                == Command::Node(NodeCommand::Rm {
                    node: "n2".into(),
                    force: true,
                })
        });
        check_ok("node rm n2", |cli| {
            cli.command
                == Command::Node(NodeCommand::Rm {
                    node: "n2".into(),
                    force: false,
                })
        });
        check_ok("node promote n2", |cli| {
            cli.command == Command::Node(NodeCommand::Promote { node: "n2".into() })
        });
        check_ok("node demote 2", |cli| {
            cli.command == Command::Node(NodeCommand::Demote { node: "2".into() })
        });
        check_err("node inspect", "<NODE>");
        check_err("node inspect a/b", "has '/'");
        check_err("node rm 99999999999999999999", "ids fit in 64 bits");
        check_err("node frobnicate", "unrecognized subcommand");
    }

    #[test]
    fn node_update() {
        check_ok(
            "node update n1 --availability drain --label-add zone=eu --label-add tier= --label-rm old --name n1b",
            |cli| {
                let Command::Node(NodeCommand::Update(args)) = &cli.command else {
                    return false;
                };
                args.node == "n1"
                    && args.to_update()
                        == api::NodeUpdate {
                            availability: Some("drain".into()),
                            labels_add: [("tier".into(), String::new()), ("zone".into(), "eu".into())]
                                .into(),
                            labels_rm: vec!["old".into()],
                            name: Some("n1b".into()),
                        }
            },
        );
        check_ok("node update 4 --label-add a=b=c", |cli| {
            matches!(&cli.command, Command::Node(NodeCommand::Update(args))
                if args.label_add == [("a".to_owned(), "b=c".to_owned())])
        });
        check_err("node update n1", "required arguments were not provided");
        check_err(
            "node update n1 --availability paused",
            "possible values: active, pause, drain",
        );
        check_err("node update n1 --label-add zone", "expected KEY=VALUE");
        check_err(
            "node update n1 --label-add =eu",
            "label key must not be empty",
        );
        check_err("node update n1 --label-add zo+ne=eu", "has '+'");
        check_err("node update n1 --label-rm zo+ne", "has '+'");
        check_err("node update n1 --name 12", "all digits");
    }

    #[test]
    fn status_and_tokens() {
        check_ok("status --json", |cli| {
            cli.command == Command::Status(StatusArgs { json: true })
        });
        check_ok("token show worker", |cli| {
            cli.command
                == Command::Token(TokenCommand::Show {
                    role: TokenRole::Worker,
                    quiet: false,
                })
        });
        check_ok("token rotate manager -q", |cli| {
            cli.command
                == Command::Token(TokenCommand::Rotate {
                    role: TokenRole::Manager,
                    quiet: true,
                })
        });
        check_ok("token show manager --quiet", |cli| {
            !cli.command.is_daemon()
                && matches!(
                    cli.command,
                    Command::Token(TokenCommand::Show { quiet: true, .. })
                )
        });
        check_err("token show admin", "possible values: manager, worker");
        check_err("token show", "<ROLE>");
    }

    fn deploy_args(line: &str) -> DeployArgs {
        match parse(line) {
            Ok(Cli {
                command: Command::Deploy(args),
                ..
            }) => *args,
            other => panic!("{line:?} parsed to {other:?}"),
        }
    }

    #[test]
    fn deploy_flags_build_the_spec() {
        let args = deploy_args(
            "deploy web --image nginx:1.27 --replicas 3 -p 8080:80 -p 5353:53/udp -e A=1 -e B=x=y \
             --label tier=front --cpus 0.5 --memory 256m --reserve-cpus 0.25 --reserve-memory 64m \
             --constraint node.labels.zone==eu --constraint node.role!=manager --max-per-node 2 \
             --restart-condition on-failure --restart-delay 1s --restart-max-attempts 3 \
             --restart-window 1m --stop-grace-period 2s --stop-signal SIGINT --pull never \
             --entrypoint /bin/sh --detach --timeout 30s -- -c echo",
        );
        assert!(args.detach);
        assert_eq!(args.timeout, Duration::from_secs(30));
        let spec = args.to_spec(None).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        let expected = api::ServiceSpecDoc {
            name: "web".into(),
            image: "nginx:1.27".into(),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo".into()],
            env: [("A".into(), "1".into()), ("B".into(), "x=y".into())].into(),
            labels: [("tier".into(), "front".into())].into(),
            mode: None,
            replicas: Some(3),
            ports: vec![
                crate::units::parse_port("8080:80").unwrap(),
                crate::units::parse_port("5353:53/udp").unwrap(),
            ],
            cpus: Some(0.5),
            memory: Some("256m".into()),
            reserve_cpus: Some(0.25),
            reserve_memory: Some("64m".into()),
            constraints: vec!["node.labels.zone==eu".into(), "node.role!=manager".into()],
            max_per_node: Some(2),
            restart_condition: Some("on-failure".into()),
            restart_delay: Some("1s".into()),
            restart_max_attempts: Some(3),
            restart_window: Some("1m".into()),
            stop_grace_period: Some("2s".into()),
            stop_signal: Some("SIGINT".into()),
            pull: Some("never".into()),
            ..api::ServiceSpecDoc::default()
        };
        assert_eq!(spec, expected);

        let minimal = deploy_args("deploy web --image nginx:1.27");
        assert!(!minimal.detach && !minimal.json);
        assert_eq!(minimal.timeout, Duration::from_secs(120));
        let spec = minimal.to_spec(None).unwrap();
        assert_eq!(spec.replicas, None);
        assert_eq!(spec.with_defaults().replicas, Some(1));

        let entry = Cli::try_parse_from([
            "shoal",
            "deploy",
            "w",
            "--image",
            "x",
            "--entrypoint",
            "sh -c",
        ])
        .unwrap();
        let Command::Deploy(args) = entry.command else {
            panic!()
        };
        assert_eq!(args.to_spec(None).unwrap().command, ["sh", "-c"]);

        let global = deploy_args("deploy agent --image x --mode global");
        assert_eq!(
            global.to_spec(None).unwrap().mode.as_deref(),
            Some("global")
        );
        let both = deploy_args("deploy agent --image x --mode global --replicas 2");
        assert!(both
            .to_spec(None)
            .unwrap_err()
            .contains("--replicas cannot be combined with --mode global"));
    }

    #[test]
    fn deploy_flags_override_the_file() {
        let file = api::ServiceSpecDoc {
            name: "web".into(),
            image: "nginx:1.26".into(),
            replicas: Some(2),
            env: [("A".into(), "file".into()), ("KEEP".into(), "1".into())].into(),
            ports: vec![crate::units::parse_port("80:80").unwrap()],
            ..api::ServiceSpecDoc::default()
        };
        let args = deploy_args("deploy -f web.yaml --image nginx:1.27 -e A=flag");
        assert_eq!(args.file.as_deref(), Some(Path::new("web.yaml")));
        assert_eq!(args.name, None);
        let spec = args.to_spec(Some(file.clone())).unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.image, "nginx:1.27");
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.ports, file.ports);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("flag"));
        assert_eq!(spec.env.get("KEEP").map(String::as_str), Some("1"));
        let renamed = deploy_args("deploy other -f web.yaml --replicas 5");
        let spec = renamed.to_spec(Some(file)).unwrap();
        assert_eq!((spec.name.as_str(), spec.replicas), ("other", Some(5)));
    }

    #[test]
    fn deploy_flag_errors() {
        let cases = [
            ("deploy web", "--image <IMAGE>"),
            ("deploy --image x", "<NAME>"),
            (
                "deploy Web --image x",
                "service name \"Web\" is not allowed",
            ),
            (
                "deploy web --image x --replicas three",
                "\"three\" is not a number",
            ),
            (
                "deploy web --image x --replicas 100001",
                "100001 is too many",
            ),
            (
                "deploy web --image x --memory 12q",
                "\"12q\" has unit \"q\"; allowed units b, k, m, g",
            ),
            ("deploy web --image x --reserve-memory 0", "is zero"),
            (
                "deploy web --image x --cpus lots",
                "\"lots\" is not a number",
            ),
            ("deploy web --image x --cpus 0", "allowed more than 0"),
            ("deploy web --image x -p 8080", "PUBLISHED:TARGET"),
            ("deploy web --image x -p 8080:80/sctp", "allowed tcp or udp"),
            ("deploy web --image x -e NOVALUE", "expected KEY=VALUE"),
            (
                "deploy web --image x --label shoal.x=1",
                "reserved for shoal",
            ),
            (
                "deploy web --image x --mode both",
                "possible values: replicated, global",
            ),
            (
                "deploy web --image x --constraint zone=eu",
                "has no operator",
            ),
            (
                "deploy web --image x --constraint node.zone==eu",
                "has key \"node.zone\"",
            ),
            (
                "deploy web --image x --constraint node.role==boss",
                "manager or worker",
            ),
            (
                "deploy web --image x --restart-condition always",
                "possible values: any, on-failure, none",
            ),
            ("deploy web --image x --restart-delay 5", "has no unit"),
            (
                "deploy web --image x --stop-signal SIGFOO",
                "is not a signal",
            ),
            (
                "deploy web --image x --pull sometimes",
                "possible values: missing, always, never",
            ),
            (
                "deploy web --image x --max-per-node -1",
                "unexpected argument",
            ),
            ("deploy web --image x --timeout 0s", "out of range"),
            (
                "deploy web --image x --bogus",
                "unexpected argument '--bogus'",
            ),
        ];
        for (line, fragment) in cases {
            check_err(line, fragment);
        }
    }

    #[test]
    fn service_subcommands() {
        check_ok("service ls --json", |cli| {
            cli.command == Command::Service(ServiceCommand::Ls { json: true })
        });
        check_ok("service ps web", |cli| {
            cli.command
                == Command::Service(ServiceCommand::Ps {
                    service: "web".into(),
                    json: false,
                })
        });
        check_ok(
            "service inspect web --json",
            |cli| matches!(&cli.command, Command::Service(ServiceCommand::Inspect { service, json: true, .. }) if service == "web"),
        );
        check_ok("service scale web=5 api=0 --detach", |cli| {
            cli.command
                == Command::Service(ServiceCommand::Scale(ScaleArgs {
                    targets: vec![("web".into(), 5), ("api".into(), 0)],
                    detach: true,
                    timeout: Duration::from_secs(120),
                }))
        });
        check_ok("service rm web api --timeout 10s", |cli| {
            cli.command
                == Command::Service(ServiceCommand::Rm(ServiceRmArgs {
                    services: vec!["web".into(), "api".into()],
                    detach: false,
                    timeout: Duration::from_secs(10),
                }))
        });
        let cases = [
            ("service scale", "SERVICE=REPLICAS"),
            (
                "service scale web",
                "\"web\" has no '='; expected SERVICE=REPLICAS, e.g. web=3",
            ),
            (
                "service scale web=three",
                "web=three: \"three\" is not a number",
            ),
            ("service scale web=-1", "\"-1\" is not a number"),
            ("service scale WEB=1", "service name \"WEB\" is not allowed"),
            ("service scale =1", "service name \"\" is not allowed"),
            ("service rm", "<SERVICE>"),
            ("service ps a/b", "is not allowed"),
        ];
        for (line, fragment) in cases {
            check_err(line, fragment);
        }
    }

    #[test]
    fn deploy_health_and_update_flags() {
        let args = deploy_args(
            "deploy web --image app:2 --health-cmd true --health-interval 2s --health-timeout 1s \
             --health-retries 4 --health-start-period 30s --update-parallelism 2 --update-delay 5s \
             --update-order start-first --update-monitor 10s --update-failure-action rollback \
             --update-max-failure-ratio 0.25 --rollback-parallelism 0 --rollback-delay 1s \
             --rollback-order stop-first --rollback-monitor 2s --rollback-failure-action continue \
             --rollback-max-failure-ratio 1 --force",
        );
        assert!(args.force);
        let spec = args.to_spec(None).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        let expected = api::ServiceSpecDoc {
            name: "web".into(),
            image: "app:2".into(),
            health_cmd: Some("true".into()),
            health_interval: Some("2s".into()),
            health_timeout: Some("1s".into()),
            health_retries: Some(4),
            health_start_period: Some("30s".into()),
            update_parallelism: Some(2),
            update_delay: Some("5s".into()),
            update_order: Some("start-first".into()),
            update_monitor: Some("10s".into()),
            update_failure_action: Some("rollback".into()),
            update_max_failure_ratio: Some(0.25),
            rollback_parallelism: Some(0),
            rollback_delay: Some("1s".into()),
            rollback_order: Some("stop-first".into()),
            rollback_monitor: Some("2s".into()),
            rollback_failure_action: Some("continue".into()),
            rollback_max_failure_ratio: Some(1.0),
            ..api::ServiceSpecDoc::default()
        };
        assert_eq!(spec, expected);

        // Flags override a file's health check form.
        let file = api::ServiceSpecDoc {
            name: "web".into(),
            image: "app:1".into(),
            health_test: Some(vec!["CMD".into(), "/check".into()]),
            health_retries: Some(2),
            ..api::ServiceSpecDoc::default()
        };
        let spec = deploy_args("deploy -f web.yaml --health-cmd true")
            .to_spec(Some(file.clone()))
            .unwrap();
        assert_eq!(
            (
                spec.health_cmd.as_deref(),
                &spec.health_test,
                spec.health_retries
            ),
            (Some("true"), &None, Some(2))
        );
        let spec = deploy_args("deploy -f web.yaml --no-healthcheck")
            .to_spec(Some(file))
            .unwrap();
        assert!(spec.no_healthcheck);
        assert_eq!((&spec.health_test, spec.health_retries), (&None, None));
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn health_and_update_flag_errors() {
        let cases = [
            (
                "deploy web --image x --update-order random",
                "invalid value 'random' for '--update-order <ORDER>'",
            ),
            (
                "deploy web --image x --update-order random",
                "possible values: stop-first, start-first",
            ),
            (
                "deploy web --image x --update-failure-action panic",
                "possible values: pause, continue, rollback",
            ),
            (
                "deploy web --image x --rollback-failure-action rollback",
                "possible values: pause, continue",
            ),
            (
                "deploy web --image x --update-max-failure-ratio 1.5",
                "1.5 is not allowed; allowed a number from 0 to 1",
            ),
            (
                "deploy web --image x --rollback-max-failure-ratio half",
                "\"half\" is not a number; allowed a number from 0 to 1",
            ),
            (
                "deploy web --image x --update-parallelism -1",
                "unexpected argument",
            ),
            (
                "deploy web --image x --update-parallelism many",
                "expected a whole number of tasks from 0 (all at once)",
            ),
            ("deploy web --image x --update-delay 5", "has no unit"),
            (
                "deploy web --image x --update-monitor 48h",
                "48h is too long; allowed 0s to 24h",
            ),
            (
                "deploy web --image x --health-retries 101",
                "101 is too many",
            ),
            (
                "deploy web --image x --health-interval soon",
                "for '--health-interval <DURATION>'",
            ),
            (
                "deploy web --image x --no-healthcheck --health-cmd true",
                "cannot be used with",
            ),
            (
                "service update web --no-healthcheck --health-retries 2",
                "cannot be used with",
            ),
            (
                "service update web --env-rm A=B",
                "key \"A=B\" is not allowed",
            ),
            (
                "service update web --label-add shoal.x=1",
                "reserved for shoal",
            ),
            ("service update", "<SERVICE>"),
            ("service rollback", "<SERVICE>"),
            (
                "service rollback Web",
                "service name \"Web\" is not allowed",
            ),
        ];
        for (line, fragment) in cases {
            check_err(line, fragment);
        }
        let error = Cli::try_parse_from([
            "shoal",
            "deploy",
            "web",
            "--image",
            "x",
            "--health-cmd",
            " ",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("the command is empty"), "{error}");
    }

    fn update_args(line: &str) -> ServiceUpdateArgs {
        match parse(line) {
            Ok(Cli {
                command: Command::Service(ServiceCommand::Update(args)),
                ..
            }) => *args,
            other => panic!("{line:?} parsed to {other:?}"),
        }
    }

    #[test]
    fn service_update_builds_the_request() {
        let args = update_args(
            "service update web --image app:2 --env-add A=1 --env-rm B --label-add tier=front \
             --label-rm old --replicas 4 --cpus 0.5 --memory 64m --reserve-cpus 0.25 \
             --reserve-memory 32m --health-cmd true --health-retries 2 --update-parallelism 3 \
             --rollback-order start-first --force --detach --timeout 30s",
        );
        assert_eq!(args.service, "web");
        assert!(args.detach);
        assert_eq!(args.timeout, Duration::from_secs(30));
        let request = args.to_request().unwrap();
        assert_eq!(request.validate(), Ok(()));
        assert_eq!(
            request,
            api::ServiceUpdateRequest {
                image: Some("app:2".into()),
                env_add: [("A".into(), "1".into())].into(),
                env_rm: vec!["B".into()],
                labels_add: [("tier".into(), "front".into())].into(),
                labels_rm: vec!["old".into()],
                replicas: Some(4),
                cpus: Some(0.5),
                memory: Some("64m".into()),
                reserve_cpus: Some(0.25),
                reserve_memory: Some("32m".into()),
                health_cmd: Some("true".into()),
                health_retries: Some(2),
                update_parallelism: Some(3),
                rollback_order: Some("start-first".into()),
                force: true,
                ..api::ServiceUpdateRequest::default()
            }
        );
        let force = update_args("service update web --force")
            .to_request()
            .unwrap();
        assert!(force.force && !force.is_empty());
        let error = update_args("service update web --detach")
            .to_request()
            .unwrap_err();
        assert!(
            error.starts_with("nothing to change in service web; give at least one flag"),
            "{error}"
        );
        check_ok("service rollback web --detach", |cli| {
            cli.command
                == Command::Service(ServiceCommand::Rollback(RollbackArgs {
                    service: "web".into(),
                    detach: true,
                    timeout: Duration::from_secs(120),
                }))
        });
    }

    #[test]
    fn default_name_is_a_valid_node_name() {
        assert_eq!(api::validate_node_name(&default_node_name()), Ok(()));
    }
}
