//! The shoal command line: argument definitions ([`args`]), the control API
//! contract ([`api`]), its Unix-socket client ([`client`]) and rendering
//! ([`output`]).
//!
//! The binary parses [`args::Cli`], runs daemon subcommands itself and hands
//! every client subcommand to [`run`].

pub mod api;
pub mod args;
pub mod client;
pub mod output;

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;

pub use args::Cli;
pub use client::{ApiClient, ClientError};

use args::{Command, NodeCommand, TokenCommand};

/// Executes a client subcommand against the daemon named by `-H`/`--data-dir`
/// and prints its answer on stdout. Errors are single sentences meant for
/// `error: {:#}`.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(cli.socket_path());
    let text = execute(&client, &cli.command).await?;
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one client subcommand and returns what it prints.
async fn execute(client: &ApiClient, command: &Command) -> anyhow::Result<String> {
    let text = match command {
        Command::Init(_) | Command::Join(_) | Command::Run(_) => {
            bail!("`init`, `join` and `run` start a node; the shoal binary runs them itself, not the control client")
        }
        Command::Node(NodeCommand::Ls { json }) => {
            let nodes = client.nodes().await?;
            if *json {
                output::json(&nodes)
            } else {
                output::nodes_table(&nodes)
            }
        }
        Command::Node(NodeCommand::Inspect { node, json }) => {
            let node = client.node(node).await?;
            if *json {
                output::json(&node)
            } else {
                output::node_block(&node)
            }
        }
        Command::Node(NodeCommand::Rm { node, force }) => {
            let removed = client.remove_node(node, *force).await?;
            format!("removed node {}\n", removed.id)
        }
        Command::Node(NodeCommand::Promote { node }) => {
            let node = client.promote(node).await?;
            format!("node {} ({}) is now a {}\n", node.name, node.id, node.role)
        }
        Command::Node(NodeCommand::Demote { node }) => {
            let node = client.demote(node).await?;
            format!("node {} ({}) is now a {}\n", node.name, node.id, node.role)
        }
        Command::Node(NodeCommand::Update(args)) => {
            let node = client.update_node(&args.node, &args.to_update()).await?;
            format!("updated node {} ({})\n", node.name, node.id)
        }
        Command::Status(args) => {
            let status = client.status().await?;
            if args.json {
                output::json(&status)
            } else {
                output::status_text(&status)
            }
        }
        Command::Token(TokenCommand::Show { role, quiet }) => {
            let token = client.token(role.as_str()).await?;
            output::token_text(&token, *quiet)
        }
        Command::Token(TokenCommand::Rotate { role, quiet }) => {
            let token = client.rotate_token(role.as_str()).await?;
            if *quiet {
                output::token_text(&token, true)
            } else {
                format!(
                    "rotated the {} token; the old one no longer works\n\n{}",
                    token.role,
                    output::token_text(&token, false)
                )
            }
        }
    };
    Ok(text)
}

/// Writes to stdout; a closed pipe (`shoal node ls | head -1`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("cannot write to standard output"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{sample_node, serve, Reply};
    use clap::Parser;

    fn command(line: &str) -> Command {
        Cli::try_parse_from(std::iter::once("shoal").chain(line.split_whitespace()))
            .unwrap()
            .command
    }

    #[tokio::test]
    async fn node_ls_renders_table_or_json() {
        let nodes = vec![sample_node(1, "mgr-a")];
        let server = serve(Reply::Json(200, serde_json::to_string(&nodes).unwrap()));
        let client = server.client();

        let table = execute(&client, &command("node ls")).await.unwrap();
        assert!(table.starts_with("ID"), "{table}");
        assert!(table.contains("mgr-a"), "{table}");

        let json = execute(&client, &command("node ls --json")).await.unwrap();
        let parsed: Vec<api::NodeView> = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, nodes);
    }

    #[tokio::test]
    async fn mutations_report_what_changed() {
        let mut node = sample_node(2, "n2");
        node.role = "worker".into();
        let server = serve(Reply::Json(200, serde_json::to_string(&node).unwrap()));
        let client = server.client();
        let text = execute(&client, &command("node demote n2")).await.unwrap();
        assert_eq!(text, "node n2 (2) is now a worker\n");
        let text = execute(&client, &command("node update n2 --label-add zone=eu"))
            .await
            .unwrap();
        assert_eq!(text, "updated node n2 (2)\n");
        let body: api::NodeUpdate = serde_json::from_str(&server.seen()[1].body).unwrap();
        assert_eq!(body.labels_add.get("zone").map(String::as_str), Some("eu"));
    }

    #[tokio::test]
    async fn token_rotate_quiet_prints_the_token_only() {
        let token = api::TokenView {
            role: "manager".into(),
            token: "SHOAL-new".into(),
            join_command: "shoal join 127.0.0.1:4500 --token SHOAL-new".into(),
        };
        let server = serve(Reply::Json(200, serde_json::to_string(&token).unwrap()));
        let text = execute(&server.client(), &command("token rotate manager -q"))
            .await
            .unwrap();
        assert_eq!(text, "SHOAL-new\n");
        assert_eq!(server.seen()[0].target, "/v1/tokens/manager/rotate");
    }

    #[tokio::test]
    async fn daemon_subcommands_are_refused() {
        let client = ApiClient::new("/nonexistent/shoal.sock");
        let error = execute(&client, &command("run")).await.unwrap_err();
        assert!(format!("{error:#}").contains("the shoal binary runs them itself"));
    }

    #[tokio::test]
    async fn run_reports_a_missing_daemon_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let cli = Cli::try_parse_from(["shoal", "--data-dir", data_dir, "status"]).unwrap();
        let error = run(cli).await.unwrap_err();
        let message = format!("{error:#}");
        assert_eq!(
            message,
            format!(
                "cannot reach the shoal daemon at unix://{data_dir}/shoal.sock: no such socket (is `shoal run` running? set -H or --data-dir)"
            )
        );
    }
}
