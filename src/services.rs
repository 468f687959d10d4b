//! The service API's edge: the user's spec document becomes the replicated
//! `ServiceSpec` (every field checked, errors naming the field), and the
//! replicated services and tasks become the API's views.

use std::str::FromStr;

use shoal_cli::api::{
    self, PortDoc, ServiceSpecDoc, ServiceView, TaskView, UpdateSettingsDoc, UpdateStatusView,
};
use shoal_cli::units;
use shoal_raft::{
    BalancePolicy, ClusterState, Constraint, DesiredState, FailureAction, HealthCheck, PortSpec,
    Protocol, PublishMode, PullPolicy, ResourceSpec, RestartCondition, RestartPolicy, Service,
    ServiceMode, ServiceSpec, Task, TaskState, UpdateConfig, UpdateOrder,
};

use crate::wire::OpError;

fn field(name: &str, why: impl std::fmt::Display) -> OpError {
    OpError::bad_request(format!("{name}: {why}"))
}

fn millis(name: &str, text: &Option<String>, default_ms: u64) -> Result<u64, OpError> {
    match text {
        None => Ok(default_ms),
        Some(t) => units::parse_duration(t)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| field(name, e)),
    }
}

/// The replicated spec for a user's document, validated.
pub fn spec_from_doc(doc: &ServiceSpecDoc) -> Result<ServiceSpec, OpError> {
    doc.validate()
        .map_err(|e| OpError::bad_request(e.to_string()))?;
    let defaults = ServiceSpec::default_for(&doc.name, &doc.image);
    let mode = match doc.mode.as_deref() {
        None | Some("replicated") => ServiceMode::Replicated {
            replicas: doc.replicas.unwrap_or(1),
        },
        Some("global") => {
            if doc.replicas.is_some() {
                return Err(field(
                    "replicas",
                    "not allowed with mode global (a global service runs one task per eligible node)",
                ));
            }
            ServiceMode::Global
        }
        Some(other) => {
            return Err(field(
                "mode",
                format!("{other:?} is not a mode; allowed: replicated, global"),
            ))
        }
    };
    let ports = doc
        .ports
        .iter()
        .map(|p| {
            let protocol = match p.protocol.as_deref() {
                None | Some("tcp") => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some(other) => {
                    return Err(field(
                        "ports",
                        format!("protocol {other:?} is not allowed; allowed: tcp, udp"),
                    ))
                }
            };
            let mut port = PortSpec::ingress(p.published, p.target, protocol);
            port.mode = match p.mode.as_deref() {
                None | Some("ingress") => PublishMode::Ingress,
                Some("host") => PublishMode::Host,
                Some(other) => {
                    return Err(field(
                        "ports",
                        format!("mode {other:?} is not allowed; allowed: ingress, host"),
                    ))
                }
            };
            port.policy = match p.policy.as_deref() {
                None | Some("least-conn") => BalancePolicy::LeastConnections,
                Some("round-robin") => BalancePolicy::RoundRobin,
                Some("local-first") => BalancePolicy::LocalFirst,
                Some(other) => {
                    return Err(field(
                        "ports",
                        format!("policy {other:?} is not allowed; allowed: least-conn, round-robin, local-first"),
                    ))
                }
            };
            port.proxy_protocol = match p.proxy_protocol.as_deref() {
                None => false,
                Some("v2") => true,
                Some(other) => {
                    return Err(field(
                        "ports",
                        format!("proxy protocol {other:?} is not allowed; allowed: v2"),
                    ))
                }
            };
            Ok(port)
        })
        .collect::<Result<Vec<_>, OpError>>()?;
    let cpus = |name: &str, v: Option<f64>| -> Result<u64, OpError> {
        v.map(units::nano_cpus)
            .transpose()
            .map(|n| n.unwrap_or(0))
            .map_err(|e| field(name, e))
    };
    let memory = |name: &str, v: &Option<String>| -> Result<u64, OpError> {
        v.as_deref()
            .map(units::parse_memory)
            .transpose()
            .map(|n| n.unwrap_or(0))
            .map_err(|e| field(name, e))
    };
    let resources = ResourceSpec {
        limit_nano_cpus: cpus("cpus", doc.cpus)?,
        limit_memory_bytes: memory("memory", &doc.memory)?,
        reserve_nano_cpus: cpus("reserve_cpus", doc.reserve_cpus)?,
        reserve_memory_bytes: memory("reserve_memory", &doc.reserve_memory)?,
    };
    let constraints = doc
        .constraints
        .iter()
        .map(|c| Constraint::from_str(c).map_err(|e| field("constraints", e)))
        .collect::<Result<Vec<_>, OpError>>()?;
    let condition = match doc.restart_condition.as_deref() {
        None => defaults.restart.condition,
        Some("any") => RestartCondition::Any,
        Some("on-failure") => RestartCondition::OnFailure,
        Some("none") => RestartCondition::None,
        Some(other) => {
            return Err(field(
                "restart_condition",
                format!("{other:?} is not allowed; allowed: any, on-failure, none"),
            ))
        }
    };
    let restart = RestartPolicy {
        condition,
        delay_ms: millis(
            "restart_delay",
            &doc.restart_delay,
            defaults.restart.delay_ms,
        )?,
        max_attempts: doc
            .restart_max_attempts
            .unwrap_or(defaults.restart.max_attempts),
        window_ms: millis(
            "restart_window",
            &doc.restart_window,
            defaults.restart.window_ms,
        )?,
    };
    let pull = match doc.pull.as_deref() {
        None => defaults.pull,
        Some("missing") => PullPolicy::Missing,
        Some("always") => PullPolicy::Always,
        Some("never") => PullPolicy::Never,
        Some(other) => {
            return Err(field(
                "pull",
                format!("{other:?} is not allowed; allowed: missing, always, never"),
            ))
        }
    };
    let settings = doc.update_settings();
    let spec = ServiceSpec {
        name: doc.name.clone(),
        image: doc.image.clone(),
        command: doc.command.clone(),
        args: doc.args.clone(),
        env: doc.env.clone(),
        labels: doc.labels.clone(),
        mode,
        ports,
        resources,
        constraints,
        max_per_node: doc.max_per_node.unwrap_or(0),
        restart,
        stop_grace_period_ms: millis(
            "stop_grace_period",
            &doc.stop_grace_period,
            defaults.stop_grace_period_ms,
        )?,
        stop_signal: doc.stop_signal.clone(),
        pull,
        healthcheck: healthcheck_from_doc(doc)?,
        update: update_from_doc(&settings[0], defaults.update)?,
        rollback: update_from_doc(&settings[1], defaults.rollback)?,
        force_update: doc.force_update.unwrap_or(0),
        stack: None,
    };
    spec.validate()
        .map_err(|e| OpError::bad_request(e.to_string()))?;
    Ok(spec)
}

/// The health check a document asks for; `None` keeps the image's own.
/// [`ServiceSpecDoc::validate`] has checked the combinations.
fn healthcheck_from_doc(doc: &ServiceSpecDoc) -> Result<Option<HealthCheck>, OpError> {
    let test = if doc.no_healthcheck {
        vec!["NONE".to_owned()]
    } else if let Some(cmd) = &doc.health_cmd {
        vec!["CMD-SHELL".to_owned(), cmd.clone()]
    } else if let Some(test) = &doc.health_test {
        test.clone()
    } else {
        return Ok(None);
    };
    Ok(Some(HealthCheck {
        test,
        interval_ms: millis("health_interval", &doc.health_interval, 0)?,
        timeout_ms: millis("health_timeout", &doc.health_timeout, 0)?,
        retries: doc.health_retries.unwrap_or(0),
        start_period_ms: millis("health_start_period", &doc.health_start_period, 0)?,
    }))
}

/// The update or rollback settings of a document; absent fields keep `defaults`.
fn update_from_doc(
    doc: &UpdateSettingsDoc<'_>,
    defaults: UpdateConfig,
) -> Result<UpdateConfig, OpError> {
    let name = |field: &str| format!("{}_{field}", doc.prefix);
    let order = match doc.order {
        None => defaults.order,
        Some("stop-first") => UpdateOrder::StopFirst,
        Some("start-first") => UpdateOrder::StartFirst,
        Some(other) => {
            return Err(field(
                &name("order"),
                format!(
                    "{other:?} is not allowed; allowed: {}",
                    api::UPDATE_ORDERS.join(", ")
                ),
            ))
        }
    };
    let failure_action = match doc.failure_action {
        None => defaults.failure_action,
        Some("pause") => FailureAction::Pause,
        Some("continue") => FailureAction::Continue,
        Some("rollback") if doc.prefix == "update" => FailureAction::Rollback,
        Some(other) => {
            return Err(field(
                &name("failure_action"),
                format!(
                    "{other:?} is not allowed; allowed: {}",
                    doc.failure_actions().join(", ")
                ),
            ))
        }
    };
    let max_failure_ratio_ppm = match doc.max_failure_ratio {
        None => defaults.max_failure_ratio_ppm,
        Some(ratio) => {
            api::check_ratio(ratio).map_err(|e| field(&name("max_failure_ratio"), e))?;
            api::ratio_ppm(ratio)
        }
    };
    Ok(UpdateConfig {
        parallelism: doc.parallelism.unwrap_or(defaults.parallelism),
        delay_ms: millis(
            &name("delay"),
            &doc.delay.map(str::to_owned),
            defaults.delay_ms,
        )?,
        order,
        monitor_ms: millis(
            &name("monitor"),
            &doc.monitor.map(str::to_owned),
            defaults.monitor_ms,
        )?,
        failure_action,
        max_failure_ratio_ppm,
    })
}

/// The document for a stored spec, with every default written out.
pub fn doc_from_spec(spec: &ServiceSpec) -> ServiceSpecDoc {
    let duration = |ms: u64| Some(units::format_duration(std::time::Duration::from_millis(ms)));
    let cpus = |nano: u64| (nano > 0).then(|| nano as f64 / 1e9);
    let memory = |bytes: u64| (bytes > 0).then(|| bytes.to_string());
    let mut doc = ServiceSpecDoc {
        name: spec.name.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        labels: spec.labels.clone(),
        mode: Some(mode_str(spec).to_string()),
        replicas: spec.replicas(),
        ports: spec
            .ports
            .iter()
            .map(|p| PortDoc {
                published: p.published,
                target: p.target,
                protocol: Some(p.protocol.as_str().to_string()),
                mode: Some(p.mode.as_str().to_string()),
                policy: (!p.is_host()).then(|| p.policy.as_str().to_string()),
                proxy_protocol: p.proxy_protocol.then(|| "v2".to_string()),
            })
            .collect(),
        cpus: cpus(spec.resources.limit_nano_cpus),
        memory: memory(spec.resources.limit_memory_bytes),
        reserve_cpus: cpus(spec.resources.reserve_nano_cpus),
        reserve_memory: memory(spec.resources.reserve_memory_bytes),
        constraints: spec.constraints.iter().map(|c| c.to_string()).collect(),
        max_per_node: Some(spec.max_per_node),
        restart_condition: Some(
            match spec.restart.condition {
                RestartCondition::Any => "any",
                RestartCondition::OnFailure => "on-failure",
                RestartCondition::None => "none",
            }
            .to_string(),
        ),
        restart_delay: duration(spec.restart.delay_ms),
        restart_max_attempts: Some(spec.restart.max_attempts),
        restart_window: duration(spec.restart.window_ms),
        stop_grace_period: duration(spec.stop_grace_period_ms),
        stop_signal: spec.stop_signal.clone(),
        pull: Some(
            match spec.pull {
                PullPolicy::Missing => "missing",
                PullPolicy::Always => "always",
                PullPolicy::Never => "never",
            }
            .to_string(),
        ),
        force_update: Some(spec.force_update),
        ..ServiceSpecDoc::default()
    };
    health_to_doc(spec.healthcheck.as_ref(), &mut doc);
    let [update, rollback] = [&spec.update, &spec.rollback].map(|c| UpdateDoc {
        parallelism: c.parallelism,
        delay: units::format_duration(std::time::Duration::from_millis(c.delay_ms)),
        order: c.order.as_str().to_owned(),
        monitor: units::format_duration(std::time::Duration::from_millis(c.monitor_ms)),
        failure_action: c.failure_action.as_str().to_owned(),
        max_failure_ratio: f64::from(c.max_failure_ratio_ppm) / 1e6,
    });
    doc.update_parallelism = Some(update.parallelism);
    doc.update_delay = Some(update.delay);
    doc.update_order = Some(update.order);
    doc.update_monitor = Some(update.monitor);
    doc.update_failure_action = Some(update.failure_action);
    doc.update_max_failure_ratio = Some(update.max_failure_ratio);
    doc.rollback_parallelism = Some(rollback.parallelism);
    doc.rollback_delay = Some(rollback.delay);
    doc.rollback_order = Some(rollback.order);
    doc.rollback_monitor = Some(rollback.monitor);
    doc.rollback_failure_action = Some(rollback.failure_action);
    doc.rollback_max_failure_ratio = Some(rollback.max_failure_ratio);
    doc
}

/// Owned update settings on their way into a document.
struct UpdateDoc {
    parallelism: u64,
    delay: String,
    order: String,
    monitor: String,
    failure_action: String,
    max_failure_ratio: f64,
}

/// Writes a stored health check into a document the way a user would: a
/// disabled check as `no_healthcheck`, a shell check as `health_cmd`, others
/// in Docker's list form; zero timings (Docker's defaults) are left out.
fn health_to_doc(check: Option<&HealthCheck>, doc: &mut ServiceSpecDoc) {
    let Some(check) = check else {
        return;
    };
    let timed = check.interval_ms != 0
        || check.timeout_ms != 0
        || check.start_period_ms != 0
        || check.retries != 0;
    if check.is_disabled() && check.test.len() == 1 && !timed {
        doc.no_healthcheck = true;
        return;
    }
    match check.test.as_slice() {
        [kind, cmd] if kind == "CMD-SHELL" => doc.health_cmd = Some(cmd.clone()),
        test => doc.health_test = Some(test.to_vec()),
    }
    let duration =
        |ms: u64| (ms != 0).then(|| units::format_duration(std::time::Duration::from_millis(ms)));
    doc.health_interval = duration(check.interval_ms);
    doc.health_timeout = duration(check.timeout_ms);
    doc.health_start_period = duration(check.start_period_ms);
    doc.health_retries = (check.retries != 0).then_some(check.retries);
}

/// Where the service's last update run stands, with its progress counts.
pub fn update_status_view(
    state: &ClusterState,
    service: &Service,
    now_ms: u64,
) -> Option<UpdateStatusView> {
    let run = service.update.as_ref()?;
    let progress =
        shoal_raft::updater::progress(state, &service.spec.name, now_ms).unwrap_or_default();
    Some(UpdateStatusView {
        state: run.state.as_str().to_owned(),
        version: run.version,
        message: run.message.clone(),
        started_at_ms: run.started_at_ms,
        completed_at_ms: (!run.state.is_running()).then_some(run.completed_at_ms),
        total: progress.total,
        done: progress.done,
        in_flight: progress.in_flight,
        failed: progress.failed,
    })
}

fn mode_str(spec: &ServiceSpec) -> &'static str {
    if spec.is_global() {
        "global"
    } else {
        "replicated"
    }
}

pub fn running_count(state: &ClusterState, name: &str) -> u64 {
    state
        .tasks_of(name)
        .filter(|t| t.state == TaskState::Running && t.desired_state == DesiredState::Running)
        .count() as u64
}

/// Running tasks of every service that has any, in one walk of the tasks.
pub fn running_counts(state: &ClusterState) -> std::collections::HashMap<&str, u64> {
    let mut counts = std::collections::HashMap::new();
    for t in state.tasks.values() {
        if t.state == TaskState::Running && t.desired_state == DesiredState::Running {
            *counts.entry(t.service.as_str()).or_insert(0) += 1;
        }
    }
    counts
}

pub fn service_view(state: &ClusterState, service: &Service) -> ServiceView {
    service_view_counted(state, service, running_count(state, &service.spec.name))
}

/// [`service_view`] with the running count known (see [`running_counts`]):
/// a list of every service then walks the tasks once, not once per service.
pub fn service_view_counted(state: &ClusterState, service: &Service, running: u64) -> ServiceView {
    let spec = &service.spec;
    ServiceView {
        name: spec.name.clone(),
        mode: mode_str(spec).to_string(),
        replicas_desired: state.desired_task_count(service),
        replicas_running: running,
        image: spec.image.clone(),
        ports: spec
            .ports
            .iter()
            .map(|p| format!("{}:{}/{}", p.published, p.target, p.protocol.as_str()))
            .collect(),
        version: service.version,
        updated_at_ms: service.updated_at_ms,
    }
}

pub fn task_view(state: &ClusterState, task: &Task) -> TaskView {
    TaskView {
        id: task.id.clone(),
        service: task.service.clone(),
        slot: task.slot,
        node_id: task.node_id,
        node_name: task
            .node_id
            .and_then(|n| state.nodes.get(&n))
            .map(|n| n.name.clone()),
        desired_state: task.desired_state.as_str().to_string(),
        state: task.state.as_str().to_string(),
        message: task.message.clone(),
        error: task.error.clone(),
        exit_code: task.exit_code,
        container_id: task.container_id.clone(),
        restart_count: task.restart_count,
        spec_version: task.spec_version,
        created_at_ms: task.created_at_ms,
        updated_at_ms: task.updated_at_ms,
        state_changed_at_ms: task.state_changed_at_ms,
        health: task.health.map(|h| h.as_str().to_owned()),
    }
}

/// Tasks of a service, by slot (global: by node), newest first within one.
pub fn task_views(state: &ClusterState, name: &str) -> Vec<TaskView> {
    let mut tasks: Vec<&Task> = state.tasks_of(name).collect();
    tasks.sort_by(|a, b| {
        (a.slot, a.node_id)
            .cmp(&(b.slot, b.node_id))
            .then(b.created_at_ms.cmp(&a.created_at_ms))
            .then(b.id.cmp(&a.id))
    });
    tasks.into_iter().map(|t| task_view(state, t)).collect()
}

/// Checks that a service's reservations fit at least one node, so a deploy
/// that can never be placed is refused up front rather than left pending.
pub fn check_fits_somewhere(state: &ClusterState, spec: &ServiceSpec) -> Result<(), OpError> {
    let r = &spec.resources;
    if r.reserve_nano_cpus == 0 && r.reserve_memory_bytes == 0 {
        return Ok(());
    }
    let fits = state.nodes.values().any(|n| {
        n.resources.nano_cpus >= r.reserve_nano_cpus
            && n.resources.memory_bytes >= r.reserve_memory_bytes
    });
    if fits {
        Ok(())
    } else {
        Err(OpError::bad_request(format!(
            "reserve_cpus/reserve_memory: no node has {} CPUs and {} of memory; the largest node has {} CPUs and {}",
            shoal_raft::service::format_cpus(r.reserve_nano_cpus),
            shoal_raft::service::format_bytes(r.reserve_memory_bytes),
            shoal_raft::service::format_cpus(
                state.nodes.values().map(|n| n.resources.nano_cpus).max().unwrap_or(0)
            ),
            shoal_raft::service::format_bytes(
                state.nodes.values().map(|n| n.resources.memory_bytes).max().unwrap_or(0)
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, image: &str) -> ServiceSpecDoc {
        ServiceSpecDoc {
            name: name.into(),
            image: image.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_doc_gets_swarm_defaults_and_round_trips() {
        let spec = spec_from_doc(&doc("web", "nginx:1.27")).unwrap();
        assert_eq!(spec.replicas(), Some(1));
        assert_eq!(spec.stop_grace_period_ms, 10_000);
        assert_eq!(spec.restart.delay_ms, 5_000);
        let back = spec_from_doc(&doc_from_spec(&spec)).unwrap();
        assert_eq!(back, spec);
    }

    fn full_spec(healthcheck: Option<HealthCheck>) -> ServiceSpec {
        ServiceSpec {
            healthcheck,
            update: UpdateConfig {
                parallelism: 2,
                delay_ms: 5_000,
                order: UpdateOrder::StartFirst,
                monitor_ms: 1_500,
                failure_action: FailureAction::Rollback,
                max_failure_ratio_ppm: 250_000,
            },
            rollback: UpdateConfig {
                parallelism: 0,
                delay_ms: 60_000,
                order: UpdateOrder::StopFirst,
                monitor_ms: 0,
                failure_action: FailureAction::Continue,
                max_failure_ratio_ppm: 1_000_000,
            },
            force_update: 7,
            ..ServiceSpec::default_for("web", "app:2")
        }
    }

    #[test]
    fn every_new_field_round_trips() {
        let shell = HealthCheck {
            test: vec![
                "CMD-SHELL".into(),
                "curl -f http://localhost/ || exit 1".into(),
            ],
            interval_ms: 2_000,
            timeout_ms: 500,
            retries: 4,
            start_period_ms: 60_000,
        };
        let checks = [
            None,
            Some(shell.clone()),
            Some(HealthCheck {
                test: vec!["CMD".into(), "/bin/check".into(), "--fast".into()],
                ..shell.clone()
            }),
            Some(HealthCheck::default()),
            // A disabled check with timings only comes from the list form.
            Some(HealthCheck {
                test: vec!["NONE".into()],
                ..shell
            }),
        ];
        for check in checks {
            let spec = full_spec(check);
            let doc = doc_from_spec(&spec);
            assert_eq!(spec_from_doc(&doc).unwrap(), spec, "{doc:?}");
            // The JSON form (the API and spec files) round-trips too.
            let json = serde_json::to_string(&doc).unwrap();
            let back: ServiceSpecDoc = serde_json::from_str(&json).unwrap();
            assert_eq!(spec_from_doc(&back).unwrap(), spec, "{json}");
        }
        let doc = doc_from_spec(&full_spec(Some(HealthCheck::default())));
        assert!(doc.no_healthcheck && doc.health_test.is_none());
        let doc = doc_from_spec(&full_spec(None));
        assert_eq!(doc.update_order.as_deref(), Some("start-first"));
        assert_eq!(doc.update_failure_action.as_deref(), Some("rollback"));
        assert_eq!(doc.update_max_failure_ratio, Some(0.25));
        assert_eq!(doc.update_delay.as_deref(), Some("5s"));
        assert_eq!(doc.update_monitor.as_deref(), Some("1500ms"));
        assert_eq!(doc.rollback_parallelism, Some(0));
        assert_eq!(doc.rollback_delay.as_deref(), Some("1m"));
        assert_eq!(doc.force_update, Some(7));
    }

    #[test]
    fn health_and_update_fields_convert() {
        let spec = spec_from_doc(&ServiceSpecDoc {
            health_cmd: Some("true".into()),
            health_interval: Some("2s".into()),
            update_parallelism: Some(0),
            update_failure_action: Some("continue".into()),
            update_max_failure_ratio: Some(0.1),
            rollback_order: Some("start-first".into()),
            ..doc("web", "img")
        })
        .unwrap();
        let check = spec.healthcheck.unwrap();
        assert_eq!(check.test, ["CMD-SHELL", "true"]);
        assert_eq!((check.interval_ms, check.retries), (2_000, 0));
        assert_eq!(spec.update.parallelism, 0);
        assert_eq!(spec.update.failure_action, FailureAction::Continue);
        assert_eq!(spec.update.max_failure_ratio_ppm, 100_000);
        assert_eq!(spec.update.monitor_ms, 5_000, "unset fields keep defaults");
        assert_eq!(spec.rollback.order, UpdateOrder::StartFirst);
        let disabled = spec_from_doc(&ServiceSpecDoc {
            no_healthcheck: true,
            ..doc("web", "img")
        })
        .unwrap();
        assert!(disabled.healthcheck.unwrap().is_disabled());
        assert_eq!(spec_from_doc(&doc("web", "img")).unwrap().healthcheck, None);
    }

    #[test]
    fn every_field_error_names_its_field() {
        let cases: Vec<(ServiceSpecDoc, &str)> = vec![
            (
                ServiceSpecDoc {
                    mode: Some("daemon".into()),
                    ..doc("web", "img")
                },
                "mode",
            ),
            (
                ServiceSpecDoc {
                    mode: Some("global".into()),
                    replicas: Some(2),
                    ..doc("web", "img")
                },
                "replicas",
            ),
            (
                ServiceSpecDoc {
                    memory: Some("12q".into()),
                    ..doc("web", "img")
                },
                "memory",
            ),
            (
                ServiceSpecDoc {
                    cpus: Some(-1.0),
                    ..doc("web", "img")
                },
                "cpus",
            ),
            (
                ServiceSpecDoc {
                    constraints: vec!["node.foo==x".into()],
                    ..doc("web", "img")
                },
                "constraint",
            ),
            (
                ServiceSpecDoc {
                    restart_delay: Some("soon".into()),
                    ..doc("web", "img")
                },
                "restart_delay",
            ),
            (
                ServiceSpecDoc {
                    pull: Some("sometimes".into()),
                    ..doc("web", "img")
                },
                "pull",
            ),
            (doc("", "img"), "name"),
            (doc("web", ""), "image"),
            (
                ServiceSpecDoc {
                    update_order: Some("random".into()),
                    ..doc("web", "img")
                },
                "invalid update_order: \"random\" is not allowed; use stop-first, start-first",
            ),
            (
                ServiceSpecDoc {
                    rollback_failure_action: Some("rollback".into()),
                    ..doc("web", "img")
                },
                "invalid rollback_failure_action: \"rollback\" is not allowed; use pause, continue",
            ),
            (
                ServiceSpecDoc {
                    update_failure_action: Some("panic".into()),
                    ..doc("web", "img")
                },
                "use pause, continue, rollback",
            ),
            (
                ServiceSpecDoc {
                    update_max_failure_ratio: Some(1.5),
                    ..doc("web", "img")
                },
                "invalid update_max_failure_ratio: 1.5 is not allowed; allowed a number from 0 to 1",
            ),
            (
                ServiceSpecDoc {
                    rollback_delay: Some("2d".into()),
                    ..doc("web", "img")
                },
                "invalid rollback_delay",
            ),
            (
                ServiceSpecDoc {
                    update_monitor: Some("48h".into()),
                    ..doc("web", "img")
                },
                "invalid update_monitor: 48h is too long",
            ),
            (
                ServiceSpecDoc {
                    update_parallelism: Some(200_000),
                    ..doc("web", "img")
                },
                "invalid update_parallelism",
            ),
            (
                ServiceSpecDoc {
                    health_cmd: Some("true".into()),
                    health_test: Some(vec!["NONE".into()]),
                    ..doc("web", "img")
                },
                "invalid health_cmd: cannot be combined with health_test",
            ),
            (
                ServiceSpecDoc {
                    health_cmd: Some("  ".into()),
                    ..doc("web", "img")
                },
                "invalid health_cmd: the command is empty",
            ),
            (
                ServiceSpecDoc {
                    health_test: Some(vec!["SHELL".into(), "true".into()]),
                    ..doc("web", "img")
                },
                "invalid health_test: [\"SHELL\", \"true\"] is not a health check; allowed:",
            ),
            (
                ServiceSpecDoc {
                    no_healthcheck: true,
                    health_interval: Some("1s".into()),
                    ..doc("web", "img")
                },
                "invalid no_healthcheck: cannot be combined with health_interval",
            ),
            (
                ServiceSpecDoc {
                    health_timeout: Some("1s".into()),
                    ..doc("web", "img")
                },
                "invalid health_timeout: needs health_cmd or health_test",
            ),
            (
                ServiceSpecDoc {
                    health_cmd: Some("true".into()),
                    health_retries: Some(101),
                    ..doc("web", "img")
                },
                "invalid health_retries: 101 is too many",
            ),
            (
                ServiceSpecDoc {
                    health_cmd: Some("true".into()),
                    health_start_period: Some("soon".into()),
                    ..doc("web", "img")
                },
                "invalid health_start_period",
            ),
        ];
        for (d, fragment) in cases {
            let err = spec_from_doc(&d).unwrap_err();
            assert!(
                err.message.contains(fragment),
                "{fragment}: {}",
                err.message
            );
        }
    }
}
