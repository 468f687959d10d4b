//! The `shoal` binary: daemon subcommands (`init`, `join`, `run`) start a
//! node here; every other subcommand is a client of a node's control API.

mod agent;
mod api_server;
mod bootstrap;
mod config;
mod datadir;
mod dispatcher;
mod heartbeat;
mod leader;
mod liveness;
mod mesh;
mod node;
mod ops;
mod pace;
mod peer_server;
mod raft_network;
mod services;
mod simulate;
mod stacks;
mod wire;

use std::process::ExitCode;

use clap::Parser;
use shoal_cli::args::{Command, DevCommand, LogFormat};
use shoal_cli::Cli;

use crate::bootstrap::StartOptions;
use crate::config::Timing;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Command::Dev(DevCommand::Simulate(args)) = &cli.command {
            init_logging(&cli.log_level, cli.log_format)?;
            return simulate::run(args.clone())
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        if cli.command.is_daemon() {
            init_logging(&cli.log_level, cli.log_format)?;
            run_daemon(cli).await.map(|()| ExitCode::SUCCESS)
        } else {
            shoal_cli::run(cli).await
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Bad command lines get one line naming what was wrong (clap's own text),
/// not a page of usage; help and version print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            eprintln!("{}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The first line of clap's message, with the allowed values (which clap
/// prints on a line of their own) appended: `error: invalid value 'random'
/// for '--update-order <ORDER>'; allowed: stop-first, start-first (see --help)`.
fn one_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = e.to_string();
    let mut line = text
        .lines()
        .next()
        .unwrap_or("error: invalid command line")
        .to_owned();
    if let Some(ContextValue::Strings(allowed)) = e.get(ContextKind::ValidValue) {
        if !allowed.is_empty() && !line.contains("allowed") {
            line.push_str(&format!("; allowed: {}", allowed.join(", ")));
        }
    }
    line.push_str(" (see --help)");
    line
}

async fn run_daemon(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.clone();
    match cli.command {
        Command::Init(a) => {
            bootstrap::init(StartOptions {
                data_dir,
                listen: Some(a.node.listen.to_string()),
                advertise: a.node.advertise_addr.map(|s| s.to_string()),
                name: Some(a.node.name),
                timing: Timing::with_heartbeat_timeout(a.node.heartbeat_timeout)
                    .with_election_timeout(a.node.election_timeout),
                dns: a.node.dns_addr,
                forward: forward(a.node.mesh_forward),
            })
            .await
        }
        Command::Join(a) => {
            bootstrap::join(
                StartOptions {
                    data_dir,
                    listen: Some(a.node.listen.to_string()),
                    advertise: a.node.advertise_addr.map(|s| s.to_string()),
                    name: Some(a.node.name),
                    timing: Timing::with_heartbeat_timeout(a.node.heartbeat_timeout)
                        .with_election_timeout(a.node.election_timeout),
                    dns: a.node.dns_addr,
                    forward: forward(a.node.mesh_forward),
                },
                a.addr.to_string(),
                a.token,
            )
            .await
        }
        Command::Run(a) => {
            bootstrap::run(
                StartOptions {
                    data_dir,
                    listen: a.listen.map(|s| s.to_string()),
                    advertise: a.advertise_addr.map(|s| s.to_string()),
                    name: None,
                    timing: Timing::with_heartbeat_timeout(a.heartbeat_timeout)
                        .with_election_timeout(a.election_timeout),
                    dns: a.dns_addr,
                    forward: forward(a.mesh_forward),
                },
                a.force_new_cluster,
            )
            .await
        }
        _ => unreachable!("client subcommands are handled by shoal_cli::run"),
    }
}

fn forward(flag: shoal_cli::args::MeshForward) -> mesh::Forward {
    match flag {
        shoal_cli::args::MeshForward::Proxy => mesh::Forward::Proxy,
        shoal_cli::args::MeshForward::Kernel => mesh::Forward::Kernel,
    }
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // openraft narrates every election at info; keep it to warnings unless
    // the filter asks for it by name.
    let full = if filter.contains("openraft") {
        filter.to_string()
    } else {
        format!("{filter},openraft=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&full).map_err(|e| {
        anyhow::anyhow!("--log-level: {filter:?} is not a log filter ({e}); e.g. info, debug, shoal=debug,openraft=warn")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_line(args: &[&str]) -> String {
        let argv = std::iter::once("shoal").chain(args.iter().copied());
        one_line(&Cli::try_parse_from(argv).unwrap_err())
    }

    #[test]
    fn usage_errors_are_one_line_naming_what_is_allowed() {
        assert_eq!(
            error_line(&["deploy", "web", "--image", "x", "--update-order", "random"]),
            "error: invalid value 'random' for '--update-order <ORDER>'; allowed: stop-first, start-first (see --help)"
        );
        assert_eq!(
            error_line(&["service", "update", "web", "--rollback-failure-action", "rollback"]),
            "error: invalid value 'rollback' for '--rollback-failure-action <ACTION>'; allowed: pause, continue (see --help)"
        );
        let ratio = error_line(&[
            "service",
            "update",
            "web",
            "--update-max-failure-ratio",
            "2",
        ]);
        assert!(
            ratio.ends_with("2 is not allowed; allowed a number from 0 to 1, e.g. 0.2 (a fifth of the tasks may fail) (see --help)"),
            "{ratio}"
        );
        assert!(!ratio.contains('\n'));
    }
}
