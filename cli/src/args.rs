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
}

impl Command {
    /// Daemon subcommands run a node; the binary executes them, not [`crate::run`].
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Init(_) | Command::Join(_) | Command::Run(_))
    }
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct InitArgs {
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
}

#[derive(Args, Debug, Clone, PartialEq)]
pub struct JoinArgs {
    /// Address of a manager of the cluster
    #[arg(value_name = "ADDR", value_parser = parse_socket_addr)]
    pub addr: SocketAddr,

    /// Join token from `shoal token show manager|worker`
    #[arg(long, value_name = "TOKEN", value_parser = parse_token)]
    pub token: String,

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

const DURATION_FORMS: &str = "a whole number followed by ms, s, m or h, e.g. 500ms, 2s, 1m, 1h";

/// Parses `500ms`, `2s`, `1m` or `1h` (a whole number and one unit).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let digits_end = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (digits, unit) = input.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "duration {input:?} does not start with a number; expected {DURATION_FORMS}"
        ));
    }
    let too_large = || format!("duration {input:?} is too large; expected {DURATION_FORMS}");
    let count: u64 = digits.parse().map_err(|_| too_large())?;
    let seconds_per = match unit {
        "ms" => return Ok(Duration::from_millis(count)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "" => {
            return Err(format!(
                "duration {input:?} has no unit; expected {DURATION_FORMS}"
            ))
        }
        other => {
            return Err(format!(
                "duration {input:?} has unit {other:?}; expected {DURATION_FORMS}"
            ))
        }
    };
    count
        .checked_mul(seconds_per)
        .map(Duration::from_secs)
        .ok_or_else(too_large)
}

fn parse_heartbeat_timeout(input: &str) -> Result<Duration, String> {
    let timeout = parse_duration(input)?;
    if !(MIN_HEARTBEAT_TIMEOUT..=MAX_HEARTBEAT_TIMEOUT).contains(&timeout) {
        return Err(format!(
            "heartbeat timeout {input} is out of range; use 10ms to 1h"
        ));
    }
    Ok(timeout)
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
                args.listen == "0.0.0.0:4500".parse().unwrap()
                    && args.advertise_addr.is_none()
                    && args.heartbeat_timeout == Duration::from_secs(2)
                    && !args.name.is_empty()
                    && cli.command.is_daemon()
            }
            _ => false,
        });
        check_ok(
            "init --listen 127.0.0.2:4600 --advertise-addr 127.0.0.2:4600 --name n2 --heartbeat-timeout 500ms",
            |cli| {
                cli.command
                    == Command::Init(InitArgs {
                        listen: "127.0.0.2:4600".parse().unwrap(),
                        advertise_addr: Some("127.0.0.2:4600".parse().unwrap()),
                        name: "n2".into(),
                        heartbeat_timeout: Duration::from_millis(500),
                    })
            },
        );
        check_ok(
            "join 127.0.0.1:4500 --token SWMTKN-abc --name w1",
            |cli| match &cli.command {
                Command::Join(args) => {
                    args.addr == "127.0.0.1:4500".parse().unwrap()
                        && args.token == "SWMTKN-abc"
                        && args.name == "w1"
                        && args.listen == "0.0.0.0:4500".parse().unwrap()
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
                })
        });
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
        check_err("init --heartbeat-timeout 0s", "use 10ms to 1h");
        check_err(
            "init --heartbeat-timeout 2d",
            "expected a whole number followed by ms, s, m or h",
        );
        check_err("join 127.0.0.1:4500 --token a\u{7f}b", "printable ASCII");
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("500ms", Ok(Duration::from_millis(500))),
            ("0ms", Ok(Duration::ZERO)),
            ("2s", Ok(Duration::from_secs(2))),
            ("1m", Ok(Duration::from_secs(60))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("", Err("does not start with a number")),
            ("s", Err("does not start with a number")),
            ("-1s", Err("does not start with a number")),
            ("1.5s", Err("has unit \".5s\"")),
            ("2", Err("has no unit")),
            ("2 s", Err("has unit \" s\"")),
            ("2S", Err("has unit \"S\"")),
            ("3d", Err("500ms, 2s, 1m, 1h")),
            ("99999999999999999999s", Err("too large")),
            ("18446744073709551615h", Err("too large")),
        ];
        for (input, expected) in cases {
            match (parse_duration(input), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{input:?}"),
                (Err(error), Err(fragment)) => {
                    assert!(error.contains(fragment), "{input:?}: {error}")
                }
                (got, want) => panic!("{input:?}: got {got:?}, expected {want:?}"),
            }
        }
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

    #[test]
    fn default_name_is_a_valid_node_name() {
        assert_eq!(api::validate_node_name(&default_node_name()), Ok(()));
    }
}
