//! The shoal command line: argument definitions ([`args`]), the control API
//! contract ([`api`]) with its shared unit parsers ([`units`]), its Unix-socket
//! client ([`client`]), spec files ([`spec`]), deploy progress ([`progress`]) and
//! rendering ([`output`]).
//!
//! The binary parses [`args::Cli`], runs daemon subcommands itself and hands
//! every client subcommand to [`run`]. Commands that wait (`deploy`, `service
//! update`, `service rollback`, `service scale`, `service rm`) poll the control
//! API here and stream what they see; [`progress`] decides when they are done.

pub mod api;
pub mod args;
pub mod client;
pub mod compose;
pub mod output;
pub mod progress;
pub mod spec;
pub mod units;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

pub use args::Cli;
pub use client::{ApiClient, ClientError};

use args::{
    Command, DeployArgs, NodeCommand, RollbackArgs, ServiceCommand, ServiceUpdateArgs,
    StackCommand, StackDeployArgs, TokenCommand,
};
use progress::{Redraw, UpdateFollower, UpdateGoal, UpdateStep, Verdict};

/// How often waiting commands poll the control API.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Executes a client subcommand against the daemon named by `-H`/`--data-dir`
/// and prints its answer on stdout. Errors are single sentences meant for
/// `error: {:#}` (a failed deploy adds one line per failing task).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(cli.socket_path());
    let mut stdout = QuietPipe(std::io::stdout());
    let mut stderr = QuietPipe(std::io::stderr());
    let mut console = Console {
        out_terminal: std::io::stdout().is_terminal(),
        err_terminal: std::io::stderr().is_terminal(),
        out: &mut stdout,
        err: &mut stderr,
    };
    if let Some(text) = execute(&client, &cli.command, &mut console).await? {
        console
            .out
            .write_all(text.as_bytes())
            .and_then(|()| console.out.flush())
            .context("cannot write to standard output")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a command writes: its answer to `out`, progress to `out` (or to `err`
/// when `out` carries JSON). The flags say whether each is a terminal, which
/// decides between redrawing progress in place and printing changes.
struct Console<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub out_terminal: bool,
    pub err_terminal: bool,
}

impl Console<'_> {
    fn progress_sink(&mut self, json: bool) -> (&mut dyn Write, bool) {
        if json {
            (&mut *self.err, self.err_terminal)
        } else {
            (&mut *self.out, self.out_terminal)
        }
    }
}

/// Runs one client subcommand. Commands that answer at once return their text;
/// commands that wait write as they go and return `None`.
async fn execute(
    client: &ApiClient,
    command: &Command,
    console: &mut Console<'_>,
) -> anyhow::Result<Option<String>> {
    let text = match command {
        Command::Deploy(args) => {
            deploy(client, args, console).await?;
            return Ok(None);
        }
        Command::Service(ServiceCommand::Scale(args)) => {
            for (name, replicas) in &args.targets {
                let service = client.scale(name, *replicas).await?;
                writeln!(
                    console.out,
                    "scaled {} to {} replicas",
                    service.name, service.replicas_desired
                )?;
            }
            if !args.detach {
                let deadline = Instant::now() + args.timeout;
                for (name, _) in &args.targets {
                    let (sink, terminal) = console.progress_sink(false);
                    if args.targets.len() > 1 {
                        writeln!(sink, "{name}:")?;
                    }
                    wait_converged(client, name, deadline, args.timeout, sink, terminal).await?;
                }
            }
            return Ok(None);
        }
        Command::Service(ServiceCommand::Rm(args)) => {
            for name in &args.services {
                let removed = client.remove_service(name).await?;
                writeln!(console.out, "removed service {}", removed.name)?;
            }
            if !args.detach {
                let deadline = Instant::now() + args.timeout;
                for name in &args.services {
                    wait_removed(client, name, deadline, args.timeout).await?;
                }
                writeln!(console.out, "verify: containers removed")?;
            }
            return Ok(None);
        }
        Command::Service(ServiceCommand::Ls { json }) => {
            let services = client.services().await?;
            shown(*json, services.as_slice(), output::services_table)
        }
        Command::Service(ServiceCommand::Ps { service, json }) => {
            let tasks = client.tasks(service).await?;
            shown(*json, tasks.as_slice(), |v| {
                output::tasks_table(v, now_ms())
            })
        }
        Command::Service(ServiceCommand::Inspect {
            service,
            json,
            format,
        }) => {
            let view = client.service(service).await?;
            match format.as_deref() {
                Some("yaml") => output::spec_yaml(&view.spec)?,
                Some(_) => output::json(&view.spec),
                None if *json => {
                    // The answering node's mesh adds the service's endpoints.
                    let endpoints = client.endpoints(service).await.unwrap_or_default();
                    let mut value = serde_json::to_value(&view)?;
                    if let Some(object) = value.as_object_mut() {
                        object.insert("endpoints".into(), serde_json::to_value(endpoints)?);
                    }
                    output::json(&value)
                }
                None => {
                    let endpoints = client.endpoints(service).await.unwrap_or_default();
                    output::service_block(&view) + &output::endpoints_text(&endpoints)
                }
            }
        }
        Command::Stack(StackCommand::Deploy(args)) => {
            deploy_stack(client, args, console).await?;
            return Ok(None);
        }
        Command::Stack(StackCommand::Ls { json }) => {
            let stacks = client.stacks().await?;
            shown(*json, stacks.as_slice(), output::stacks_table)
        }
        Command::Stack(StackCommand::Services { stack, json }) => {
            let services = client.stack_services(stack).await?;
            shown(*json, services.as_slice(), output::services_table)
        }
        Command::Stack(StackCommand::Ps { stack, json }) => {
            let tasks = client.stack_tasks(stack).await?;
            shown(*json, tasks.as_slice(), |v| {
                output::tasks_table(v, now_ms())
            })
        }
        Command::Stack(StackCommand::Rm(args)) => {
            let removed = client.remove_stack(&args.stack).await?;
            for name in &removed.services {
                writeln!(console.out, "removed service {name}")?;
            }
            if !args.detach {
                let deadline = Instant::now() + args.timeout;
                for name in &removed.services {
                    wait_removed(client, name, deadline, args.timeout).await?;
                }
                writeln!(console.out, "verify: containers removed")?;
            }
            return Ok(None);
        }
        Command::Service(ServiceCommand::Update(args)) => {
            update_service(client, args, console).await?;
            return Ok(None);
        }
        Command::Service(ServiceCommand::Rollback(args)) => {
            rollback_service(client, args, console).await?;
            return Ok(None);
        }
        Command::Init(_) | Command::Join(_) | Command::Run(_) => {
            bail!("`init`, `join` and `run` start a node; the shoal binary runs them itself, not the control client")
        }
        Command::Dev(_) => {
            bail!("`dev` commands run in the shoal binary itself, not in the control client")
        }
        Command::Node(NodeCommand::Ls { json }) => {
            let nodes = client.nodes().await?;
            shown(*json, nodes.as_slice(), output::nodes_table)
        }
        Command::Node(NodeCommand::Inspect { node, json }) => {
            let node = client.node(node).await?;
            shown(*json, &node, output::node_block)
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
    Ok(Some(text))
}

/// `shoal deploy`: builds the spec (file, then flags), validates it, sends it,
/// and unless `--detach` waits for the service to converge.
async fn deploy(
    client: &ApiClient,
    args: &DeployArgs,
    console: &mut Console<'_>,
) -> anyhow::Result<()> {
    let base = match &args.file {
        Some(path) => Some(spec::load_spec(path)?),
        None => None,
    };
    let mut spec = args.to_spec(base).map_err(anyhow::Error::msg)?;
    spec.validate()?;
    if args.dry_run {
        let plan = client.plan_service(&spec).await?;
        let text = if args.json {
            output::json(&plan)
        } else {
            output::plan_text(&plan, false)
        };
        console.out.write_all(text.as_bytes())?;
        return Ok(());
    }
    if args.force {
        // One more than the stored value redeploys every task; a new service
        // is deployed anyway.
        match client.service(&spec.name).await {
            Ok(current) => {
                let stored = current.spec.force_update.unwrap_or(0);
                spec.force_update = Some(stored.saturating_add(1));
            }
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error.into()),
        }
    }
    let deployed = client.deploy(&spec).await?;
    let name = deployed.service.name.clone();
    if args.json {
        console.out.write_all(output::json(&deployed).as_bytes())?;
        console.out.flush()?;
    } else {
        let what = match (deployed.created, deployed.changed) {
            (true, _) => "created",
            (false, true) => "updated",
            (false, false) => "unchanged:",
        };
        writeln!(console.out, "{what} service {name}")?;
    }
    if args.detach {
        return Ok(());
    }
    let (sink, terminal) = console.progress_sink(args.json);
    follow(
        client,
        &name,
        &deployed,
        UpdateGoal::Update,
        args.timeout,
        sink,
        terminal,
    )
    .await
}

/// A read's answer: the API's JSON with `--json`, else `render`ed for people.
fn shown<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    render: impl Fn(&T) -> String,
) -> String {
    if json {
        output::json(value)
    } else {
        render(value)
    }
}

/// `shoal stack deploy`: reads the Compose file (warnings to standard error),
/// sends the whole stack as one request, prints the plan, and unless
/// `--detach` or `--dry-run` follows every service it changed.
async fn deploy_stack(
    client: &ApiClient,
    args: &StackDeployArgs,
    console: &mut Console<'_>,
) -> anyhow::Result<()> {
    let environment: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let stack = compose::load_compose(&args.compose_file, &environment)?;
    for warning in &stack.warnings {
        writeln!(console.err, "warning: {warning}")?;
    }
    let request = api::StackDeployRequest {
        services: stack.services.into_values().collect(),
        prune: args.prune,
        dry_run: args.dry_run,
    };
    let plan = client.deploy_stack(&args.stack, &request).await?;
    let text = if args.json {
        output::json(&plan)
    } else {
        output::plan_text(&plan, args.prune)
    };
    console.out.write_all(text.as_bytes())?;
    console.out.flush()?;
    if args.dry_run || args.detach {
        return Ok(());
    }
    for service in &plan.services {
        let (sink, terminal) = console.progress_sink(args.json);
        match service.change.as_str() {
            "create" | "scale" => {
                writeln!(sink, "{}:", service.name)?;
                let deadline = Instant::now() + args.timeout;
                wait_converged(
                    client,
                    &service.name,
                    deadline,
                    args.timeout,
                    sink,
                    terminal,
                )
                .await?;
            }
            "update" => {
                writeln!(sink, "{}:", service.name)?;
                let inspect = client.service(&service.name).await?;
                if let Some(run) = inspect.update {
                    follow_update(
                        client,
                        &service.name,
                        UpdateGoal::Update,
                        run.version,
                        args.timeout,
                        sink,
                        terminal,
                    )
                    .await?;
                }
            }
            "remove" => {
                let deadline = Instant::now() + args.timeout;
                wait_removed(client, &service.name, deadline, args.timeout).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Waits for what a deploy, update or rollback started: the update run it
/// started, else (a create, a scale) until every task runs.
async fn follow(
    client: &ApiClient,
    name: &str,
    answer: &api::DeployView,
    goal: UpdateGoal,
    timeout: Duration,
    sink: &mut dyn Write,
    terminal: bool,
) -> anyhow::Result<()> {
    match &answer.update {
        Some(run) => follow_update(client, name, goal, run.version, timeout, sink, terminal).await,
        None => {
            let deadline = Instant::now() + timeout;
            wait_converged(client, name, deadline, timeout, sink, terminal).await
        }
    }
}

/// `shoal service update`: sends the changes; the leader applies them to the
/// current spec. Then follows what they started, unless `--detach`.
async fn update_service(
    client: &ApiClient,
    args: &ServiceUpdateArgs,
    console: &mut Console<'_>,
) -> anyhow::Result<()> {
    let request = args.to_request().map_err(anyhow::Error::msg)?;
    request.validate()?;
    let answer = client.update_service(&args.service, &request).await?;
    let what = if answer.changed {
        "updated"
    } else {
        "unchanged:"
    };
    writeln!(console.out, "{what} service {}", answer.service.name)?;
    if args.detach {
        return Ok(());
    }
    let (sink, terminal) = console.progress_sink(false);
    let name = &args.service;
    follow(
        client,
        name,
        &answer,
        UpdateGoal::Update,
        args.timeout,
        sink,
        terminal,
    )
    .await
}

/// `shoal service rollback`: returns the service to its previous spec and
/// follows the rollback, unless `--detach`. A refusal (no previous spec) is
/// the daemon's one sentence.
async fn rollback_service(
    client: &ApiClient,
    args: &RollbackArgs,
    console: &mut Console<'_>,
) -> anyhow::Result<()> {
    let answer = client.rollback_service(&args.service).await?;
    writeln!(
        console.out,
        "rolling back service {} to its previous spec",
        answer.service.name
    )?;
    if args.detach {
        return Ok(());
    }
    let (sink, terminal) = console.progress_sink(false);
    let name = &args.service;
    follow(
        client,
        name,
        &answer,
        UpdateGoal::Rollback,
        args.timeout,
        sink,
        terminal,
    )
    .await
}

/// Polls the service every [`POLL_INTERVAL`], drawing the update run's
/// progress, until [`UpdateFollower`] says it is final: `Ok` (after `verify:
/// <the run's message>`) when it ended as `goal` wants, else the error it
/// gives. Gives up when nothing changed for `stall`.
async fn follow_update(
    client: &ApiClient,
    name: &str,
    goal: UpdateGoal,
    version: u64,
    stall: Duration,
    sink: &mut dyn Write,
    terminal: bool,
) -> anyhow::Result<()> {
    let mut follower = UpdateFollower::new(name, goal, version);
    let mut redraw = Redraw::new(terminal);
    let mut seen: Vec<String> = Vec::new();
    let mut deadline = Instant::now() + stall;
    loop {
        let transient = match client.service(name).await {
            Ok(view) => {
                let step = follower.observe(&view);
                let lines = progress::update_lines(&view);
                if lines != seen {
                    deadline = Instant::now() + stall;
                    seen.clone_from(&lines);
                }
                sink.write_all(redraw.frame(&lines).as_bytes())?;
                sink.flush()?;
                match step {
                    UpdateStep::Done(message) => {
                        writeln!(sink, "verify: {message}")?;
                        return Ok(());
                    }
                    UpdateStep::Failed(mut error) => {
                        if let Some(version) = follower.hint_version() {
                            if let Ok(tasks) = client.tasks(name).await {
                                if let Some(hint) = progress::failure_hint(version, &tasks) {
                                    error = format!("{error}: {hint}");
                                }
                            }
                        }
                        return Err(anyhow::Error::msg(error));
                    }
                    UpdateStep::Waiting => None,
                }
            }
            Err(error) if error.is_not_found() => {
                bail!("service {name} no longer exists; it was removed while this command waited")
            }
            Err(error) if error.is_retryable() => Some(error),
            Err(error) => return Err(error.into()),
        };
        if Instant::now() >= deadline {
            let what = match goal {
                UpdateGoal::Update => "update",
                UpdateGoal::Rollback => "rollback",
            };
            let stalled = format!(
                "the {what} of service {name} made no progress for {}; it goes on in the cluster (see `shoal service inspect {name}`)",
                units::format_duration(stall)
            );
            return Err(match transient {
                Some(error) => anyhow::Error::new(error).context(stalled),
                None => anyhow::Error::msg(stalled),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls the service and its tasks every [`POLL_INTERVAL`], drawing progress,
/// until [`progress::progress`] says it converged (prints `verify: service
/// converged`), failed, or `deadline` passes (the error names what is pending).
async fn wait_converged(
    client: &ApiClient,
    name: &str,
    deadline: Instant,
    timeout: Duration,
    sink: &mut dyn Write,
    terminal: bool,
) -> anyhow::Result<()> {
    let mut redraw = Redraw::new(terminal);
    loop {
        let (service, tasks) = tokio::join!(client.service(name), client.tasks(name));
        let transient = match service.and_then(|service| tasks.map(|tasks| (service, tasks))) {
            Ok((service, tasks)) => {
                let progress = progress::progress(&service, &tasks);
                sink.write_all(redraw.frame(&progress.lines()).as_bytes())?;
                sink.flush()?;
                match progress.verdict {
                    Verdict::Converged => {
                        writeln!(sink, "verify: service converged")?;
                        return Ok(());
                    }
                    Verdict::Failed { errors } => {
                        bail!(
                            "service {name} did not converge:\n  {}",
                            errors.join("\n  ")
                        );
                    }
                    Verdict::Waiting { pending } if Instant::now() >= deadline => {
                        bail!(
                            "service {name} did not converge within {}; still waiting:\n  {}",
                            units::format_duration(timeout),
                            pending.join("\n  ")
                        );
                    }
                    Verdict::Waiting { .. } => None,
                }
            }
            Err(error) if error.is_not_found() => {
                bail!("service {name} no longer exists; it was removed while this command waited")
            }
            // A leader election or a busy daemon: keep polling until the deadline.
            Err(error) if error.is_retryable() => Some(error),
            Err(error) => return Err(error.into()),
        };
        if Instant::now() >= deadline {
            if let Some(error) = transient {
                return Err(anyhow::Error::new(error).context(format!(
                    "service {name} did not converge within {}",
                    units::format_duration(timeout)
                )));
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls a removed service's tasks until the daemon answers 404 or an empty
/// list: every container of the service is gone.
async fn wait_removed(
    client: &ApiClient,
    name: &str,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    loop {
        let left = match client.tasks(name).await {
            Ok(tasks) if tasks.is_empty() => return Ok(()),
            Err(error) if error.is_not_found() => return Ok(()),
            Ok(tasks) => Ok(tasks),
            Err(error) if error.is_retryable() => Err(error),
            Err(error) => return Err(error.into()),
        };
        if Instant::now() >= deadline {
            let detail = match left {
                Ok(tasks) => {
                    let names: Vec<String> = tasks
                        .iter()
                        .take(10)
                        .map(|task| format!("{} ({})", progress::task_name(task), task.state))
                        .collect();
                    format!("{} task(s) left: {}", tasks.len(), names.join(", "))
                }
                Err(error) => format!("{error:#}"),
            };
            bail!(
                "the containers of service {name} were not all removed within {}; {detail}",
                units::format_duration(timeout)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Standard output or error where a closed pipe (`shoal service ls | head -1`)
/// is not an error: the rest of the output is dropped quietly.
struct QuietPipe<W>(W);

impl<W: Write> Write for QuietPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(buf.len()),
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.flush() {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
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

    /// Runs a command as `run` would and returns everything it wrote to standard
    /// output, or its error.
    async fn execute_text(client: &ApiClient, command: &Command) -> anyhow::Result<String> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = Console {
            out: &mut out,
            err: &mut err,
            out_terminal: false,
            err_terminal: false,
        };
        let answer = execute(client, command, &mut console).await?;
        let mut text = String::from_utf8(out).unwrap();
        text.push_str(&answer.unwrap_or_default());
        Ok(text)
    }

    #[tokio::test]
    async fn node_ls_renders_table_or_json() {
        let nodes = vec![sample_node(1, "mgr-a")];
        let server = serve(Reply::Json(200, serde_json::to_string(&nodes).unwrap()));
        let client = server.client();

        let table = execute_text(&client, &command("node ls")).await.unwrap();
        assert!(table.starts_with("ID"), "{table}");
        assert!(table.contains("mgr-a"), "{table}");

        let json = execute_text(&client, &command("node ls --json"))
            .await
            .unwrap();
        let parsed: Vec<api::NodeView> = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, nodes);
    }

    #[tokio::test]
    async fn mutations_report_what_changed() {
        let mut node = sample_node(2, "n2");
        node.role = "worker".into();
        let server = serve(Reply::Json(200, serde_json::to_string(&node).unwrap()));
        let client = server.client();
        let text = execute_text(&client, &command("node demote n2"))
            .await
            .unwrap();
        assert_eq!(text, "node n2 (2) is now a worker\n");
        let text = execute_text(&client, &command("node update n2 --label-add zone=eu"))
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
        let text = execute_text(&server.client(), &command("token rotate manager -q"))
            .await
            .unwrap();
        assert_eq!(text, "SHOAL-new\n");
        assert_eq!(server.seen()[0].target, "/v1/tokens/manager/rotate");
    }

    use crate::client::tests::sample_service;
    use crate::progress::tests::{service as inspect_view, task};
    use std::sync::Arc;

    /// A daemon holding one replicated service `web` of 2 replicas whose tasks
    /// move from pending to running as it is polled; `second_state` is where
    /// slot 2 ends up.
    fn deploying_daemon(second_state: &'static str) -> crate::client::tests::TestServer {
        let route = move |method: &str, target: &str, earlier: usize| -> (u16, String) {
            let polls = earlier.saturating_sub(1) / 2;
            let body = match (method, target) {
                ("POST", "/v1/services") => serde_json::to_string(&api::DeployView {
                    update: None,
                    service: sample_service("web", 0, 2),
                    created: true,
                    changed: true,
                }),
                ("GET", "/v1/services/web") => {
                    let running = if polls >= 2 {
                        1 + u64::from(second_state == "running")
                    } else {
                        0
                    };
                    serde_json::to_string(&inspect_view("replicated", 2, running, 1))
                }
                ("GET", "/v1/services/web/tasks") => {
                    let mut second = task(
                        2,
                        if polls >= 2 { second_state } else { "pending" },
                        Some(2),
                        1,
                    );
                    second.error = if second_state == "rejected" {
                        "image \"nope:1\" not found locally and pull is \"never\"".into()
                    } else {
                        String::new()
                    };
                    let first = task(
                        1,
                        if polls >= 1 { "running" } else { "assigned" },
                        Some(1),
                        1,
                    );
                    serde_json::to_string(&vec![first, second])
                }
                _ => {
                    return (
                        404,
                        r#"{"error":"no such service","retryable":false}"#.into(),
                    )
                }
            };
            (200, body.unwrap())
        };
        serve(Reply::Route(Arc::new(route)))
    }

    #[tokio::test]
    async fn deploy_waits_until_converged() {
        let server = deploying_daemon("running");
        let text = execute_text(
            &server.client(),
            &command("deploy web --image nginx:1.27 --replicas 2"),
        )
        .await
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "created service web");
        assert_eq!(lines[1], "overall progress: 0 out of 2 tasks");
        assert!(lines[2].starts_with("1/2: assigned  [========="), "{text}");
        assert!(
            text.contains("overall progress: 2 out of 2 tasks\n"),
            "{text}"
        );
        assert!(text.ends_with("verify: service converged\n"), "{text}");
        // Not a terminal: each line is printed only when it changed.
        assert_eq!(
            text.matches("overall progress: 0 out of 2 tasks").count(),
            1,
            "{text}"
        );
        let sent: api::ServiceSpecDoc = serde_json::from_str(&server.seen()[0].body).unwrap();
        assert_eq!(sent.replicas, Some(2));
    }

    #[tokio::test]
    async fn deploy_fails_on_a_rejected_task() {
        let server = deploying_daemon("rejected");
        let error = execute_text(
            &server.client(),
            &command("deploy web --image nope:1 --pull never"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "service web did not converge:\n  task web.2 rejected: image \"nope:1\" not found locally and pull is \"never\""
        );
    }

    #[tokio::test]
    async fn deploy_times_out_naming_what_is_pending() {
        let route = |method: &str, target: &str, _: usize| -> (u16, String) {
            let body = match (method, target) {
                ("POST", "/v1/services") => serde_json::to_string(&api::DeployView {
                    update: None,
                    service: sample_service("web", 0, 1),
                    created: false,
                    changed: true,
                }),
                ("GET", "/v1/services/web") => {
                    serde_json::to_string(&inspect_view("replicated", 1, 0, 1))
                }
                _ => {
                    let mut pending = task(1, "pending", None, 1);
                    pending.message = "no node satisfies node.labels.zone==eu: 0 of 3 nodes".into();
                    serde_json::to_string(&vec![pending])
                }
            };
            (200, body.unwrap())
        };
        let server = serve(Reply::Route(Arc::new(route)));
        let error = execute_text(
            &server.client(),
            &command("deploy web --image x --timeout 300ms"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "service web did not converge within 300ms; still waiting:\n  task web.1 is pending: no node satisfies node.labels.zone==eu: 0 of 3 nodes"
        );
    }

    #[tokio::test]
    async fn deploy_from_a_yaml_file_detached() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(
            &file,
            "name: web\nimage: nginx:1.27\nreplicas: 4\nmemory: 256m\n",
        )
        .unwrap();
        let deployed = api::DeployView {
            update: None,
            service: sample_service("web", 4, 4),
            created: false,
            changed: false,
        };
        let server = serve(Reply::Json(200, serde_json::to_string(&deployed).unwrap()));
        let line = format!("deploy -f {} --replicas 5 --detach", file.display());
        let text = execute_text(&server.client(), &command(&line))
            .await
            .unwrap();
        assert_eq!(text, "unchanged: service web\n");
        let sent: api::ServiceSpecDoc = serde_json::from_str(&server.seen()[0].body).unwrap();
        assert_eq!(
            (sent.replicas, sent.memory.as_deref()),
            (Some(5), Some("256m"))
        );

        std::fs::write(&file, "name: web\nimage: nginx:1.27\nmemory: 12q\n").unwrap();
        let line = format!("deploy -f {} --detach", file.display());
        let error = execute_text(&server.client(), &command(&line))
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").starts_with("invalid memory: size \"12q\""),
            "{error:#}"
        );
        assert_eq!(server.seen().len(), 1, "an invalid spec is never sent");
    }

    #[tokio::test]
    async fn service_reads_as_json() {
        let services = vec![sample_service("web", 2, 3)];
        let server = serve(Reply::Json(200, serde_json::to_string(&services).unwrap()));
        let text = execute_text(&server.client(), &command("service ls --json"))
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for field in ["name", "replicas_running", "replicas_desired", "image"] {
            assert!(
                value[0].get(field).is_some(),
                "service ls --json lacks {field}: {text}"
            );
        }
        let table = execute_text(&server.client(), &command("service ls"))
            .await
            .unwrap();
        assert!(
            table.starts_with("NAME") && table.contains("2/3"),
            "{table}"
        );

        let tasks = vec![task(1, "running", Some(1), 1)];
        let server = serve(Reply::Json(200, serde_json::to_string(&tasks).unwrap()));
        let text = execute_text(&server.client(), &command("service ps web --json"))
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(value.is_array());
        for field in [
            "id",
            "slot",
            "node_id",
            "desired_state",
            "state",
            "error",
            "container_id",
        ] {
            assert!(
                value[0].get(field).is_some(),
                "service ps --json lacks {field}: {text}"
            );
        }
        assert_eq!(server.seen()[0].target, "/v1/services/web/tasks");
    }

    #[tokio::test]
    async fn rm_waits_until_the_tasks_are_gone() {
        let route = |method: &str, _target: &str, earlier: usize| -> (u16, String) {
            match (method, earlier) {
                ("DELETE", _) => (200, r#"{"name":"web"}"#.into()),
                (_, 1) => (
                    200,
                    serde_json::to_string(&vec![task(1, "running", Some(1), 1)]).unwrap(),
                ),
                _ => (
                    404,
                    r#"{"error":"service \"web\" does not exist","retryable":false}"#.into(),
                ),
            }
        };
        let server = serve(Reply::Route(Arc::new(route)));
        let text = execute_text(&server.client(), &command("service rm web"))
            .await
            .unwrap();
        assert_eq!(text, "removed service web\nverify: containers removed\n");
        assert_eq!(server.seen().len(), 3);
    }

    #[tokio::test]
    async fn scale_detached_reports_the_new_count() {
        let server = serve(Reply::Json(
            200,
            serde_json::to_string(&sample_service("web", 1, 5)).unwrap(),
        ));
        let text = execute_text(&server.client(), &command("service scale web=5 --detach"))
            .await
            .unwrap();
        assert_eq!(text, "scaled web to 5 replicas\n");
        assert_eq!(server.seen()[0].body, r#"{"replicas":5}"#);
    }

    use crate::progress::tests::{run as update_run, updating};

    /// A daemon whose POST to `post_target` answers `answer`, whose
    /// `GET /v1/services/web` answers `views` in turn (the last one from then
    /// on), and whose other requests are 404s.
    fn updating_daemon(
        post_target: &'static str,
        answer: (u16, String),
        views: Vec<api::ServiceInspectView>,
    ) -> crate::client::tests::TestServer {
        let polls = std::sync::Mutex::new(0usize);
        let route = move |method: &str, target: &str, _: usize| -> (u16, String) {
            match (method, target) {
                ("POST", t) if t == post_target => answer.clone(),
                ("GET", "/v1/services/web") => {
                    let mut polls = polls.lock().unwrap();
                    let view = &views[(*polls).min(views.len() - 1)];
                    *polls += 1;
                    (200, serde_json::to_string(view).unwrap())
                }
                _ => (
                    404,
                    r#"{"error":"no service named \"web\"","retryable":false}"#.into(),
                ),
            }
        };
        serve(Reply::Route(Arc::new(route)))
    }

    fn started(run: api::UpdateStatusView) -> (u16, String) {
        let view = api::DeployView {
            service: sample_service("web", 2, 2),
            created: false,
            changed: true,
            update: Some(run),
        };
        (200, serde_json::to_string(&view).unwrap())
    }

    #[tokio::test]
    async fn deploy_follows_the_update_it_started() {
        let first = update_run("updating", 2, [2, 0, 1, 0], "updating to version 2");
        let server = updating_daemon(
            "/v1/services",
            started(first.clone()),
            vec![
                updating(first.clone()),
                updating(first),
                updating(update_run(
                    "updating",
                    2,
                    [2, 1, 1, 0],
                    "updating to version 2",
                )),
                updating(update_run("completed", 2, [2, 2, 0, 0], "update completed")),
            ],
        );
        let text = execute_text(
            &server.client(),
            &command("deploy web --image app:2 --update-parallelism 2"),
        )
        .await
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "updated service web");
        assert!(
            lines[1].starts_with("updating: 0 out of 2 tasks  ["),
            "{text}"
        );
        assert!(lines[1].ends_with("]  1 in flight"), "{text}");
        assert_eq!(lines[2], "updating to version 2");
        assert!(
            lines[3].starts_with("updating: 1 out of 2 tasks  [="),
            "{text}"
        );
        assert!(
            lines[4].starts_with("completed: 2 out of 2 tasks  [="),
            "{text}"
        );
        assert_eq!(lines[5..], ["update completed", "verify: update completed"]);
        let sent: api::ServiceSpecDoc = serde_json::from_str(&server.seen()[0].body).unwrap();
        assert_eq!(sent.update_parallelism, Some(2));
    }

    #[tokio::test]
    async fn deploy_fails_when_its_update_is_rolled_back() {
        let reason =
            "update failed at 1/2: task web.2 failed its health check; rolling back to app:1";
        let server = updating_daemon(
            "/v1/services",
            started(update_run(
                "updating",
                2,
                [2, 0, 1, 0],
                "updating to version 2",
            )),
            vec![
                updating(update_run("rolling-back", 3, [2, 1, 1, 0], reason)),
                updating(update_run(
                    "rolled-back",
                    3,
                    [2, 2, 0, 0],
                    "rollback completed",
                )),
            ],
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = Console {
            out: &mut out,
            err: &mut err,
            out_terminal: false,
            err_terminal: false,
        };
        let error = execute(
            &server.client(),
            &command("deploy web --image app:2"),
            &mut console,
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!("update rolled back: {reason}")
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(&format!("rollback: {reason}\n")), "{text}");
        assert!(text.contains("rolled back: 2 out of 2 tasks"), "{text}");
    }

    #[tokio::test]
    async fn a_rollback_seen_only_when_finished_names_the_failed_task() {
        let answer = started(update_run(
            "updating",
            2,
            [2, 0, 1, 0],
            "updating to version 2",
        ));
        let view = updating(update_run(
            "rolled-back",
            3,
            [2, 2, 0, 0],
            "rollback completed",
        ));
        let route = move |method: &str, target: &str, _: usize| -> (u16, String) {
            match (method, target) {
                ("POST", _) => answer.clone(),
                ("GET", "/v1/services/web") => (200, serde_json::to_string(&view).unwrap()),
                _ => {
                    let mut failed = task(2, "failed", Some(1), 2);
                    failed.error = "the container's health check reported unhealthy".into();
                    let tasks = vec![task(1, "running", Some(1), 1), failed];
                    (200, serde_json::to_string(&tasks).unwrap())
                }
            }
        };
        let server = serve(Reply::Route(Arc::new(route)));
        let error = execute_text(&server.client(), &command("deploy web --image app:2"))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "update rolled back: task web.2 failed: the container's health check reported unhealthy"
        );
    }

    #[tokio::test]
    async fn deploy_fails_when_its_update_pauses() {
        let paused = "update paused at 1/2: task web.2 failed (exit 1)";
        let server = updating_daemon(
            "/v1/services",
            started(update_run(
                "updating",
                2,
                [2, 0, 1, 0],
                "updating to version 2",
            )),
            vec![updating(update_run("paused", 2, [2, 1, 0, 1], paused))],
        );
        let error = execute_text(&server.client(), &command("deploy web --image app:2"))
            .await
            .unwrap_err();
        assert_eq!(format!("{error:#}"), paused);
    }

    #[tokio::test]
    async fn an_update_without_progress_gives_up() {
        let stuck = update_run("updating", 2, [2, 0, 1, 0], "updating to version 2");
        let server = updating_daemon(
            "/v1/services/web/update",
            started(stuck.clone()),
            vec![updating(stuck)],
        );
        let error = execute_text(
            &server.client(),
            &command("service update web --image app:2 --timeout 300ms"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "the update of service web made no progress for 300ms; it goes on in the cluster (see `shoal service inspect web`)"
        );
    }

    #[tokio::test]
    async fn deploy_force_bumps_the_stored_counter() {
        let mut current = inspect_view("replicated", 2, 2, 1);
        current.spec.force_update = Some(3);
        let server = updating_daemon(
            "/v1/services",
            started(update_run(
                "updating",
                2,
                [2, 0, 1, 0],
                "updating to version 2",
            )),
            vec![current],
        );
        let text = execute_text(
            &server.client(),
            &command("deploy web --image app:1 --force --detach"),
        )
        .await
        .unwrap();
        assert_eq!(text, "updated service web\n");
        let seen = server.seen();
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("GET", "/v1/services/web")
        );
        let sent: api::ServiceSpecDoc = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(sent.force_update, Some(4));
    }

    #[tokio::test]
    async fn service_update_sends_a_patch() {
        let server = updating_daemon(
            "/v1/services/web/update",
            started(update_run(
                "updating",
                2,
                [2, 0, 1, 0],
                "updating to version 2",
            )),
            vec![],
        );
        let text = execute_text(
            &server.client(),
            &command("service update web --image app:2 --env-add A=1 --update-order start-first --detach"),
        )
        .await
        .unwrap();
        assert_eq!(text, "updated service web\n");
        let sent: serde_json::Value = serde_json::from_str(&server.seen()[0].body).unwrap();
        assert_eq!(sent["image"], "app:2");
        assert_eq!(sent["env_add"], serde_json::json!({"A": "1"}));
        assert_eq!(sent["update_order"], "start-first");
        assert_eq!(sent["force"], false);
    }

    #[tokio::test]
    async fn service_rollback_follows_to_rolled_back() {
        let server = updating_daemon(
            "/v1/services/web/rollback",
            started(update_run(
                "rolling-back",
                3,
                [2, 1, 1, 0],
                "rollback requested",
            )),
            vec![updating(update_run(
                "rolled-back",
                3,
                [2, 2, 0, 0],
                "rollback completed",
            ))],
        );
        let text = execute_text(&server.client(), &command("service rollback web"))
            .await
            .unwrap();
        assert!(
            text.starts_with("rolling back service web to its previous spec\n"),
            "{text}"
        );
        assert!(
            text.ends_with("rollback completed\nverify: rollback completed\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn service_rollback_refusal_is_one_line() {
        let refusal = "service \"web\" has no previous spec to roll back to; it has not been updated since it was created";
        let body = serde_json::to_string(&api::ApiError::new(refusal, false)).unwrap();
        let server = updating_daemon("/v1/services/web/rollback", (409, body), vec![]);
        let error = execute_text(&server.client(), &command("service rollback web"))
            .await
            .unwrap_err();
        assert_eq!(format!("{error:#}"), refusal);
    }

    #[tokio::test]
    async fn service_inspect_text_or_json() {
        let mut view = inspect_view("replicated", 2, 2, 3);
        view.update = Some(update_run("completed", 3, [2, 2, 0, 0], "update completed"));
        let server = updating_daemon("/none", (404, String::new()), vec![view.clone()]);
        let text = execute_text(&server.client(), &command("service inspect web"))
            .await
            .unwrap();
        assert!(text.contains("completed (version 3)"), "{text}");
        let json = execute_text(&server.client(), &command("service inspect web --json"))
            .await
            .unwrap();
        let back: api::ServiceInspectView = serde_json::from_str(&json).unwrap();
        assert_eq!(back, view);
    }

    #[tokio::test]
    async fn daemon_subcommands_are_refused() {
        let client = ApiClient::new("/nonexistent/shoal.sock");
        let error = execute_text(&client, &command("run")).await.unwrap_err();
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
