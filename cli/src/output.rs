//! Rendering of control-API answers for people: tables, text blocks, and the
//! pretty JSON behind `--json`.
//!
//! Every function returns a `String` ending in a newline, so rendering is tested
//! without a terminal and the caller decides where it goes.

use std::fmt::Write as _;

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use crate::api::{
    EndpointView, NodeView, PlanView, ServiceInspectView, ServiceSpecDoc, ServiceView, StackView,
    StatusView, TaskView, TokenView, UpdateSettingsDoc,
};
use crate::progress::{short_id, task_name};

/// Pretty JSON of any API value, with a trailing newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("API types serialize to JSON");
    text.push('\n');
    text
}

/// `node ls`: one row per node, sorted by id.
pub fn nodes_table(nodes: &[NodeView]) -> String {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by_key(|node| node.id);
    let rows = sorted.iter().map(|node| {
        vec![
            node.id.to_string(),
            node.name.clone(),
            node.addr.clone(),
            node.role.clone(),
            // A node whose engine is unreachable is up but takes no tasks:
            // the table says so; `node inspect` has the engine's error.
            match node.engine_error {
                Some(_) => format!("{} (engine unavailable)", node.status),
                None => node.status.clone(),
            },
            node.availability.clone(),
            if node.leader { "*" } else { "" }.to_owned(),
        ]
    });
    table(
        &[
            "ID",
            "NAME",
            "ADDRESS",
            "ROLE",
            "STATUS",
            "AVAILABILITY",
            "LEADER",
        ],
        rows,
    )
}

/// `node inspect` without `--json`: one field a line.
pub fn node_block(node: &NodeView) -> String {
    let mut text = String::new();
    let mut line = |key: &str, value: &str| {
        writeln!(text, "{:<14}{value}", format!("{key}:")).expect("writing to a String");
    };
    line("ID", &node.id.to_string());
    line("Name", &node.name);
    line("Address", &node.addr);
    let role = match (node.role.as_str(), node.leader, node.voter) {
        (role, true, _) => format!("{role} (leader)"),
        ("manager", false, false) => "manager (non-voter)".to_owned(),
        (role, false, _) => role.to_owned(),
    };
    line("Role", &role);
    let status = if node.status_message.is_empty() {
        node.status.clone()
    } else {
        format!("{} ({})", node.status, node.status_message)
    };
    line("Status", &status);
    line("Since", &format_unix_millis(node.status_changed_at_ms));
    line("Availability", &node.availability);
    line(
        "Engine",
        node.engine_error
            .as_deref()
            .map_or("ready".to_owned(), |e| format!("unavailable ({e})"))
            .as_str(),
    );
    line("CPUs", &format_cpus(node.nano_cpus));
    line("Memory", &format_bytes(node.memory_bytes));
    line("Version", &node.version);
    line("Joined", &format_unix_millis(node.joined_at_ms));
    if node.labels.is_empty() {
        line("Labels", "none");
    } else {
        text.push_str("Labels:\n");
        for (key, value) in &node.labels {
            writeln!(text, "  {key}={value}").expect("writing to a String");
        }
    }
    text
}

/// `status` without `--json`: Raft state, the quorum line and the members table.
pub fn status_text(status: &StatusView) -> String {
    let mut text = String::new();
    let leader = match (status.leader_id, &status.leader_name) {
        (Some(id), Some(name)) => format!("{id} ({name})"),
        (Some(id), None) => id.to_string(),
        (None, _) => "none (no leader elected)".to_owned(),
    };
    let quorum = &status.quorum;
    let managers = if quorum.voters == 1 {
        "manager"
    } else {
        "managers"
    };
    let lines = [
        ("cluster", status.cluster_id.clone()),
        ("answered by", status.node_id.to_string()),
        ("leader", leader),
        ("term", status.term.to_string()),
        ("commit index", status.commit_index.to_string()),
        ("applied index", status.applied_index.to_string()),
        (
            "quorum",
            format!(
                "{}, {} of {} {managers} ready, {} needed",
                if quorum.healthy { "healthy" } else { "LOST" },
                quorum.voters_ready,
                quorum.voters,
                quorum.needed
            ),
        ),
    ];
    for (key, value) in lines {
        writeln!(text, "{key}: {value}").expect("writing to a String");
    }
    text.push('\n');

    let mut members: Vec<_> = status.members.iter().collect();
    members.sort_by_key(|member| member.id);
    let optional = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let rows = members.iter().map(|member| {
        vec![
            member.id.to_string(),
            member.name.clone(),
            member.addr.clone(),
            member.role.clone(),
            if member.voter { "yes" } else { "no" }.to_owned(),
            member.status.clone(),
            optional(member.match_index),
            optional(member.lag),
        ]
    });
    text.push_str(&table(
        &[
            "ID", "NAME", "ADDRESS", "ROLE", "VOTER", "STATUS", "MATCH", "LAG",
        ],
        rows,
    ));
    text
}

/// `token show|rotate`: the token alone with `quiet`, else the command to run.
pub fn token_text(token: &TokenView, quiet: bool) -> String {
    if quiet {
        return format!("{}\n", token.token);
    }
    format!(
        "To add a {} to this cluster, run this on the new node:\n\n    {}\n",
        token.role, token.join_command
    )
}

/// The endpoints part of `service inspect`: the tasks taking connections,
/// as the answering node's mesh sees them; nothing when there are none.
pub fn endpoints_text(endpoints: &[EndpointView]) -> String {
    if endpoints.is_empty() {
        return String::new();
    }
    let rows = endpoints.iter().map(|e| {
        vec![
            e.task.chars().take(12).collect(),
            e.node.clone(),
            format!("{}:{}", e.address, e.port),
            format!("{}/{}", e.target, e.protocol),
            e.mode.clone(),
            e.health.clone(),
        ]
    });
    format!(
        "Endpoints:\n{}",
        table(
            &["TASK", "NODE", "ADDRESS", "TARGET", "MODE", "HEALTH"],
            rows
        )
    )
}

/// `stack ls`: one row per stack.
pub fn stacks_table(stacks: &[StackView]) -> String {
    let rows = stacks
        .iter()
        .map(|stack| vec![stack.name.clone(), stack.services.to_string()]);
    table(&["NAME", "SERVICES"], rows)
}

/// `service inspect --format yaml`: the spec as a file `shoal deploy -f` takes
/// back unchanged.
pub fn spec_yaml(spec: &ServiceSpecDoc) -> anyhow::Result<String> {
    let mut text = serde_saphyr::to_string(spec)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A plan (`--dry-run`, `stack deploy`): one line per service saying what
/// changes, then where new tasks go and what cannot be placed.
pub fn plan_text(plan: &PlanView, prune: bool) -> String {
    let mut out = String::new();
    let width = plan
        .services
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    for s in &plan.services {
        let replicas = s
            .replicas
            .map_or_else(|| "global".to_owned(), |r| format!("replicas {r}"));
        let (mark, what) = match s.change.as_str() {
            "create" => ('+', format!("image {}  {replicas}  (new)", s.image)),
            "update" => (
                '~',
                format!(
                    "image {} -> {}  (rolling update, parallelism {})",
                    s.from_image.as_deref().unwrap_or("?"),
                    s.image,
                    match s.parallelism {
                        Some(0) => "all".to_owned(),
                        Some(p) => p.to_string(),
                        None => "?".to_owned(),
                    }
                ),
            ),
            "scale" => (
                '~',
                format!(
                    "replicas {} -> {}  (scale; no task restarts)",
                    s.from_replicas.unwrap_or(0),
                    s.replicas.unwrap_or(0)
                ),
            ),
            "settings" => ('~', "update settings only; no task restarts".to_owned()),
            "remove" => ('-', "(removed)".to_owned()),
            "would-remove" => (
                '-',
                if prune {
                    "(removed)".to_owned()
                } else {
                    "(would be removed with --prune)".to_owned()
                },
            ),
            _ => ('=', "(unchanged)".to_owned()),
        };
        let _ = writeln!(out, "{mark} service {:<width$}  {what}", s.name);
    }
    for s in &plan.services {
        let placed: u64 = s.placed.values().sum();
        if placed > 0 {
            let nodes: Vec<String> = s.placed.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let first = if s.change == "update" {
                " (first batch)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "placement: {} {placed} task{}{first} -> {}",
                s.name,
                if placed == 1 { "" } else { "s" },
                nodes.join(", ")
            );
        }
        for (reason, count) in &s.unplaced {
            let _ = writeln!(
                out,
                "placement: {} {count} task{} cannot be placed: {reason}",
                s.name,
                if *count == 1 { "" } else { "s" }
            );
        }
    }
    if !plan.applied {
        out.push_str("(dry run: nothing was changed)\n");
    }
    out
}

/// `service ls`: one row per service, sorted by name.
pub fn services_table(services: &[ServiceView]) -> String {
    let mut sorted: Vec<&ServiceView> = services.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rows = sorted.iter().map(|service| {
        vec![
            service.name.clone(),
            service.mode.clone(),
            format!("{}/{}", service.replicas_running, service.replicas_desired),
            service.image.clone(),
            service.ports.join(", "),
        ]
    });
    table(&["NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)
}

/// `service inspect` without `--json`: the service's state, its health check,
/// update settings, its last update run and what a rollback would return to.
pub fn service_block(view: &ServiceInspectView) -> String {
    let spec = view.spec.with_defaults();
    let mut text = String::new();
    let mut line = |key: &str, value: &str| {
        writeln!(text, "{:<17}{value}", format!("{key}:")).expect("writing to a String");
    };
    line("Name", &spec.name);
    line("Image", &spec.image);
    line("Mode", spec.mode.as_deref().unwrap_or("replicated"));
    line(
        "Tasks",
        &format!(
            "{}/{} running",
            view.replicas_running, view.replicas_desired
        ),
    );
    line("Version", &view.version.to_string());
    line("Created", &format_unix_millis(view.created_at_ms));
    line("Updated", &format_unix_millis(view.updated_at_ms));
    line("Health check", &health_summary(&spec));
    let [update, rollback] = spec.update_settings();
    line("Update config", &update_summary(&update));
    line("Rollback config", &update_summary(&rollback));
    match &view.update {
        None => line("Last update", "none"),
        Some(run) => {
            line(
                "Last update",
                &format!("{} (version {})", run.state, run.version),
            );
            line("  Message", &run.message);
            line(
                "  Progress",
                &format!(
                    "{} of {} tasks done, {} in flight, {} failed",
                    run.done, run.total, run.in_flight, run.failed
                ),
            );
            line("  Started", &format_unix_millis(run.started_at_ms));
            line(
                "  Completed",
                &run.completed_at_ms
                    .map_or("-".to_owned(), format_unix_millis),
            );
        }
    }
    match &view.previous_spec {
        None => line("Previous spec", "none (nothing to roll back to)"),
        Some(previous) => {
            let changed = changed_fields(previous, &view.spec);
            let detail = if changed.is_empty() {
                String::new()
            } else {
                format!("; differs in {}", changed.join(", "))
            };
            line(
                "Previous spec",
                &format!("image {}{detail}", previous.image),
            );
        }
    }
    text
}

/// `curl -f localhost (interval 2s, retries 3)`, `disabled`, or the image's own.
fn health_summary(spec: &ServiceSpecDoc) -> String {
    if spec.no_healthcheck {
        return "disabled (--no-healthcheck)".to_owned();
    }
    let test = match (&spec.health_cmd, &spec.health_test) {
        (Some(cmd), _) => cmd.clone(),
        (None, Some(test)) => format!("{test:?}"),
        (None, None) => return "the image's own, if it has one".to_owned(),
    };
    let timings: Vec<String> = [
        ("interval", spec.health_interval.clone()),
        ("timeout", spec.health_timeout.clone()),
        ("start period", spec.health_start_period.clone()),
        ("retries", spec.health_retries.map(|n| n.to_string())),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| format!("{name} {value}")))
    .collect();
    if timings.is_empty() {
        test
    } else {
        format!("{test} ({})", timings.join(", "))
    }
}

/// `parallelism 2, delay 5s, stop-first, monitor 5s, on failure pause (max ratio 0)`.
fn update_summary(settings: &UpdateSettingsDoc<'_>) -> String {
    format!(
        "parallelism {}, delay {}, {}, monitor {}, on failure {} (max ratio {})",
        settings.parallelism.unwrap_or(1),
        settings.delay.unwrap_or("0s"),
        settings.order.unwrap_or("stop-first"),
        settings.monitor.unwrap_or("5s"),
        settings.failure_action.unwrap_or("pause"),
        settings.max_failure_ratio.unwrap_or(0.0)
    )
}

/// The spec document fields whose values differ, by name.
fn changed_fields(a: &ServiceSpecDoc, b: &ServiceSpecDoc) -> Vec<String> {
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (
        serde_json::to_value(a).expect("specs serialize"),
        serde_json::to_value(b).expect("specs serialize"),
    ) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(key, value)| b.get(key.as_str()) != Some(value))
        .map(|(key, _)| key.clone())
        .collect()
}

/// `service ps`: slots in order, each slot's tasks newest first; older tasks of a
/// slot are marked ` \_ ` as in `docker service ps`. `now_ms` is the local clock,
/// for the ages.
pub fn tasks_table(tasks: &[TaskView], now_ms: u64) -> String {
    let mut sorted: Vec<&TaskView> = tasks.iter().collect();
    // Replicated tasks share a slot across nodes; global ones have one per node.
    let slot_key = |task: &TaskView| match task.slot {
        0 => (0, task.node_name.clone(), task.node_id),
        slot => (slot, None, None),
    };
    sorted.sort_by(|a, b| {
        slot_key(a)
            .cmp(&slot_key(b))
            .then_with(|| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)))
    });
    let mut previous_slot = None;
    let rows = sorted.iter().map(|task| {
        let key = slot_key(task);
        let name = if previous_slot.as_ref() == Some(&key) {
            format!(" \\_ {}", task_name(task))
        } else {
            task_name(task)
        };
        previous_slot = Some(key);
        let node = match (&task.node_name, task.node_id) {
            (Some(name), _) => name.clone(),
            (None, Some(id)) => id.to_string(),
            (None, None) => String::new(),
        };
        let state = if task.state_changed_at_ms == 0 {
            task.state.clone()
        } else {
            format!(
                "{} {}",
                task.state,
                format_age(now_ms.saturating_sub(task.state_changed_at_ms))
            )
        };
        let note = if task.error.is_empty() {
            task.message.clone()
        } else {
            task.error.clone()
        };
        vec![
            short_id(&task.id).to_owned(),
            name,
            node,
            task.desired_state.clone(),
            state,
            task.health.clone().unwrap_or_else(|| "-".to_owned()),
            note.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        ]
    });
    table(
        &[
            "ID",
            "NAME",
            "NODE",
            "DESIRED",
            "STATE",
            "HEALTH",
            "ERROR / MESSAGE",
        ],
        rows.collect::<Vec<_>>().into_iter(),
    )
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`; under a second is `just now`.
pub fn format_age(millis: u64) -> String {
    let seconds = millis / 1000;
    match seconds {
        0 => "just now".to_owned(),
        1..=119 => format!("{seconds}s ago"),
        120..=7199 => format!("{}m ago", seconds / 60),
        7200..=172_799 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

/// A borderless, left-aligned table without trailing spaces, never wrapped to
/// the terminal width (scripts read it too).
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

fn format_cpus(nano_cpus: u64) -> String {
    let whole = nano_cpus / 1_000_000_000;
    let hundredths = (nano_cpus % 1_000_000_000) / 10_000_000;
    if hundredths == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{hundredths:02}")
    }
}

fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`; zero means "never".
fn format_unix_millis(millis: u64) -> String {
    if millis == 0 {
        return "-".to_owned();
    }
    let days = millis / 86_400_000;
    let of_day = millis % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600_000,
        of_day / 60_000 % 60,
        of_day / 1000 % 60,
        of_day % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MemberView, QuorumView};
    use crate::client::tests::sample_node;

    fn cells(line: &str) -> Vec<&str> {
        line.split("   ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .collect()
    }

    fn planned(name: &str, change: &str) -> crate::api::ServicePlanView {
        crate::api::ServicePlanView {
            name: name.into(),
            change: change.into(),
            image: "app:2".into(),
            from_image: None,
            replicas: Some(3),
            from_replicas: None,
            parallelism: None,
            placed: Default::default(),
            unplaced: Default::default(),
        }
    }

    #[test]
    fn a_plan_reads_as_a_diff_then_placements() {
        let mut web = planned("shop_web", "create");
        web.placed = [("node-a", 1), ("node-b", 1), ("node-c", 1)]
            .iter()
            .map(|(n, c)| (n.to_string(), *c))
            .collect();
        let mut api = planned("shop_api", "update");
        api.from_image = Some("app:1".into());
        api.parallelism = Some(1);
        api.placed = [("node-b".to_string(), 1)].into_iter().collect();
        let mut eu = planned("shop_eu", "create");
        eu.unplaced = [(
            "no node satisfies node.labels.zone==eu: 0 of 3 nodes".to_string(),
            2,
        )]
        .into_iter()
        .collect();
        let mut db = planned("shop_db", "scale");
        db.from_replicas = Some(1);
        let plan = PlanView {
            services: vec![
                api,
                db,
                eu,
                planned("shop_old", "would-remove"),
                planned("shop_same", "unchanged"),
                web,
            ],
            applied: false,
        };
        assert_eq!(
            plan_text(&plan, false),
            "~ service shop_api   image app:1 -> app:2  (rolling update, parallelism 1)\n\
             ~ service shop_db    replicas 1 -> 3  (scale; no task restarts)\n\
             + service shop_eu    image app:2  replicas 3  (new)\n\
             - service shop_old   (would be removed with --prune)\n\
             = service shop_same  (unchanged)\n\
             + service shop_web   image app:2  replicas 3  (new)\n\
             placement: shop_api 1 task (first batch) -> node-b 1\n\
             placement: shop_eu 2 tasks cannot be placed: no node satisfies \
             node.labels.zone==eu: 0 of 3 nodes\n\
             placement: shop_web 3 tasks -> node-a 1, node-b 1, node-c 1\n\
             (dry run: nothing was changed)\n"
        );
    }

    #[test]
    fn a_spec_printed_as_yaml_reads_back_unchanged() {
        let doc = ServiceSpecDoc {
            name: "web".into(),
            image: "app:1".into(),
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo 'a: b' # not a comment".into(),
            ],
            env: [
                ("EMPTY".to_string(), String::new()),
                ("N".to_string(), "007".to_string()),
            ]
            .into_iter()
            .collect(),
            replicas: Some(3),
            cpus: Some(0.5),
            health_test: Some(vec!["CMD".into(), "true".into()]),
            update_max_failure_ratio: Some(0.25),
            update_order: Some("start-first".into()),
            constraints: vec!["node.labels.zone==eu".into()],
            ports: vec![crate::units::parse_port("8080:80/udp").unwrap()],
            ..ServiceSpecDoc::default()
        };
        let yaml = spec_yaml(&doc).unwrap();
        let back = crate::spec::parse_spec(&yaml, crate::spec::SpecFormat::Yaml).unwrap();
        assert_eq!(back, doc, "{yaml}");
    }

    #[test]
    fn nodes_table_columns_and_rows() {
        let mut down = sample_node(2, "worker-b");
        down.role = "worker".into();
        down.status = "down".into();
        down.availability = "drain".into();
        let mut no_engine = sample_node(3, "worker-c");
        no_engine.engine_error = Some("connection refused".into());
        let text = nodes_table(&[down, sample_node(1, "mgr-a"), no_engine]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            cells(lines[0]),
            [
                "ID",
                "NAME",
                "ADDRESS",
                "ROLE",
                "STATUS",
                "AVAILABILITY",
                "LEADER"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "1",
                "mgr-a",
                "127.0.0.1:4500",
                "manager",
                "ready",
                "active",
                "*"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            ["2", "worker-b", "127.0.0.2:4500", "worker", "down", "drain"]
        );
        assert_eq!(cells(lines[3])[4], "ready (engine unavailable)", "{text}");
        assert!(text.lines().all(|line| line == line.trim_end()));
        assert!(!lines[0].starts_with(' '), "{text}");
        // Columns line up: every NAME cell starts where the header's does.
        let name_at = lines[0].find("NAME").unwrap();
        assert_eq!(lines[1].find("mgr-a"), Some(name_at));
        assert_eq!(lines[2].find("worker-b"), Some(name_at));
    }

    #[test]
    fn empty_nodes_table_keeps_its_header() {
        let text = nodes_table(&[]);
        assert_eq!(text.lines().count(), 1);
        assert!(text.starts_with("ID"));
    }

    fn sample_status(healthy: bool) -> StatusView {
        StatusView {
            cluster_id: "c0ffee".into(),
            node_id: 2,
            leader_id: healthy.then_some(1),
            leader_name: healthy.then(|| "mgr-a".into()),
            term: 4,
            commit_index: 120,
            applied_index: 119,
            members: vec![
                MemberView {
                    id: 3,
                    name: "w3".into(),
                    addr: "127.0.0.3:4500".into(),
                    role: "worker".into(),
                    voter: false,
                    status: "ready".into(),
                    match_index: None,
                    lag: None,
                },
                MemberView {
                    id: 1,
                    name: "mgr-a".into(),
                    addr: "127.0.0.1:4500".into(),
                    role: "manager".into(),
                    voter: true,
                    status: "ready".into(),
                    match_index: Some(120),
                    lag: Some(0),
                },
            ],
            quorum: QuorumView {
                voters: 3,
                voters_ready: if healthy { 3 } else { 1 },
                needed: 2,
                healthy,
            },
        }
    }

    #[test]
    fn status_text_summary_and_members() {
        let text = status_text(&sample_status(true));
        for expected in [
            "cluster: c0ffee\n",
            "answered by: 2\n",
            "leader: 1 (mgr-a)\n",
            "term: 4\n",
            "commit index: 120\n",
            "applied index: 119\n",
            "quorum: healthy, 3 of 3 managers ready, 2 needed\n",
        ] {
            assert!(text.contains(expected), "lacks {expected:?}:\n{text}");
        }
        let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("ID")).collect();
        assert_eq!(
            cells(table[0]),
            ["ID", "NAME", "ADDRESS", "ROLE", "VOTER", "STATUS", "MATCH", "LAG"]
        );
        assert_eq!(
            cells(table[1]),
            [
                "1",
                "mgr-a",
                "127.0.0.1:4500",
                "manager",
                "yes",
                "ready",
                "120",
                "0"
            ]
        );
        assert_eq!(
            cells(table[2]),
            [
                "3",
                "w3",
                "127.0.0.3:4500",
                "worker",
                "no",
                "ready",
                "-",
                "-"
            ]
        );
    }

    #[test]
    fn status_text_without_leader() {
        let text = status_text(&sample_status(false));
        assert!(
            text.contains("leader: none (no leader elected)\n"),
            "{text}"
        );
        assert!(
            text.contains("quorum: LOST, 1 of 3 managers ready, 2 needed\n"),
            "{text}"
        );
    }

    #[test]
    fn node_block_fields() {
        let mut node = sample_node(1, "mgr-a");
        node.labels.insert("zone".into(), "eu".into());
        node.status = "down".into();
        node.status_message = "heartbeat missed for 2.1s".into();
        let text = node_block(&node);
        for expected in [
            "ID:           1\n",
            "Name:         mgr-a\n",
            "Role:         manager (leader)\n",
            "Status:       down (heartbeat missed for 2.1s)\n",
            "CPUs:         2\n",
            "Memory:       8.0 GiB\n",
            "Joined:       2023-11-14T22:13:20.000Z\n",
            "Labels:\n  zone=eu\n",
        ] {
            assert!(text.contains(expected), "lacks {expected:?}:\n{text}");
        }
    }

    #[test]
    fn services_table_rows() {
        let service = |name: &str, running, desired| ServiceView {
            name: name.into(),
            mode: "replicated".into(),
            replicas_desired: desired,
            replicas_running: running,
            image: "nginx:1.27".into(),
            ports: vec!["8080:80/tcp".into(), "5353:53/udp".into()],
            version: 1,
            updated_at_ms: 0,
        };
        let text = services_table(&[service("web", 2, 3), service("api", 1, 1)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            cells(lines[0]),
            ["NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "api",
                "replicated",
                "1/1",
                "nginx:1.27",
                "8080:80/tcp, 5353:53/udp"
            ]
        );
        assert_eq!(cells(lines[2])[..3], ["web", "replicated", "2/3"]);
    }

    #[test]
    fn tasks_table_newest_first_per_slot() {
        use crate::progress::tests::task;
        let now = 1_000_000;
        let mut old = task(2, "failed", Some(1), 1);
        old.id = "aaaaaaaaaaaaaaaa".into();
        old.desired_state = "shutdown".into();
        old.error = "exit code 1".into();
        old.state_changed_at_ms = now - 300_000;
        old.created_at_ms = 1_000;
        let mut new = task(2, "running", Some(2), 1);
        new.id = "bbbbbbbbbbbbbbbb".into();
        new.created_at_ms = 2_000;
        new.state_changed_at_ms = now - 5_000;
        new.health = Some("healthy".into());
        let mut pending = task(1, "pending", None, 1);
        pending.id = "cccccccccccccccc".into();
        pending.message = "no node satisfies node.labels.zone==eu: 0 of 3 nodes".into();
        pending.state_changed_at_ms = now - 500;
        let text = tasks_table(&[old, pending, new], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            cells(lines[0]),
            [
                "ID",
                "NAME",
                "NODE",
                "DESIRED",
                "STATE",
                "HEALTH",
                "ERROR / MESSAGE"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "cccccccccccc",
                "web.1",
                "running",
                "pending just now",
                "-",
                "no node satisfies node.labels.zone==eu: 0 of 3 nodes"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "bbbbbbbbbbbb",
                "web.2",
                "node-b",
                "running",
                "running 5s ago",
                "healthy"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "aaaaaaaaaaaa",
                "\\_ web.2",
                "node-a",
                "shutdown",
                "failed 5m ago",
                "-",
                "exit code 1"
            ]
        );
    }

    #[test]
    fn service_block_shows_the_update_run_and_previous_spec() {
        use crate::api::UpdateStatusView;
        use crate::progress::tests::service;
        let mut view = service("replicated", 10, 10, 3);
        view.spec.image = "app:1".into();
        view.spec.health_cmd = Some("curl -f localhost".into());
        view.spec.health_interval = Some("2s".into());
        view.spec.update_parallelism = Some(2);
        view.spec.update_failure_action = Some("rollback".into());
        view.update = Some(UpdateStatusView {
            state: "rolled-back".into(),
            version: 3,
            message: "rollback completed".into(),
            started_at_ms: 1_000,
            completed_at_ms: Some(61_000),
            total: 10,
            done: 10,
            in_flight: 0,
            failed: 0,
        });
        let mut previous = view.spec.clone();
        previous.image = "app:2".into();
        view.previous_spec = Some(previous);
        let text = service_block(&view);
        let row = |key: &str, value: &str| format!("{:<17}{value}\n", format!("{key}:"));
        for expected in [
            row("Image", "app:1"),
            row("Tasks", "10/10 running"),
            row("Health check", "curl -f localhost (interval 2s)"),
            row(
                "Update config",
                "parallelism 2, delay 0s, stop-first, monitor 5s, on failure rollback (max ratio 0)",
            ),
            row(
                "Rollback config",
                "parallelism 1, delay 0s, stop-first, monitor 5s, on failure pause (max ratio 0)",
            ),
            row("Last update", "rolled-back (version 3)"),
            row("  Message", "rollback completed"),
            row("  Progress", "10 of 10 tasks done, 0 in flight, 0 failed"),
            row("  Completed", "1970-01-01T00:01:01.000Z"),
            row("Previous spec", "image app:2; differs in image"),
        ] {
            assert!(text.contains(&expected), "lacks {expected:?}:\n{text}");
        }
        view.update = None;
        view.previous_spec = None;
        view.spec.health_cmd = None;
        view.spec.health_interval = None;
        view.spec.no_healthcheck = true;
        let text = service_block(&view);
        assert!(text.contains(&row("Last update", "none")), "{text}");
        assert!(
            text.contains(&row("Previous spec", "none (nothing to roll back to)")),
            "{text}"
        );
        assert!(
            text.contains(&row("Health check", "disabled (--no-healthcheck)")),
            "{text}"
        );
    }

    #[test]
    fn ages() {
        let cases = [
            (0, "just now"),
            (999, "just now"),
            (5_000, "5s ago"),
            (119_000, "119s ago"),
            (120_000, "2m ago"),
            (7_200_000, "2h ago"),
            (172_800_000, "2d ago"),
        ];
        for (millis, text) in cases {
            assert_eq!(format_age(millis), text);
        }
    }

    #[test]
    fn token_text_forms() {
        let token = TokenView {
            role: "worker".into(),
            token: "SHOAL-abc".into(),
            join_command: "shoal join 127.0.0.1:4500 --token SHOAL-abc".into(),
        };
        assert_eq!(token_text(&token, true), "SHOAL-abc\n");
        let text = token_text(&token, false);
        assert!(text.starts_with("To add a worker to this cluster"));
        assert!(text.contains("    shoal join 127.0.0.1:4500 --token SHOAL-abc\n"));
    }

    #[test]
    fn json_is_pretty_and_ends_with_newline() {
        let text = json(&vec![sample_node(1, "n1")]);
        assert!(text.starts_with("[\n  {\n    \"id\": 1,"), "{text}");
        assert!(text.ends_with("]\n"));
    }

    #[test]
    fn units() {
        let cases = [
            (format_cpus(2_000_000_000), "2"),
            (format_cpus(1_500_000_000), "1.50"),
            (format_cpus(0), "0"),
            (format_bytes(512), "512 B"),
            (format_bytes(1536), "1.5 KiB"),
            (format_bytes(8 << 30), "8.0 GiB"),
            (format_unix_millis(0), "-"),
            (format_unix_millis(1), "1970-01-01T00:00:00.001Z"),
            (
                format_unix_millis(951_782_400_000),
                "2000-02-29T00:00:00.000Z",
            ),
            (
                format_unix_millis(1_709_251_199_999),
                "2024-02-29T23:59:59.999Z",
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }
}
