//! The service API's edge: the user's spec document becomes the replicated
//! `ServiceSpec` (every field checked, errors naming the field), and the
//! replicated services and tasks become the API's views.

use std::str::FromStr;

use shoal_cli::api::{PortDoc, ServiceSpecDoc, ServiceView, TaskView};
use shoal_cli::units;
use shoal_raft::{
    BalancePolicy, ClusterState, Constraint, DesiredState, PortSpec, Protocol, PublishMode,
    PullPolicy, ResourceSpec, RestartCondition, RestartPolicy, Service, ServiceMode, ServiceSpec,
    Task, TaskState,
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
        healthcheck: None,
        update: defaults.update,
        rollback: defaults.rollback,
        force_update: 0,
    };
    spec.validate()
        .map_err(|e| OpError::bad_request(e.to_string()))?;
    Ok(spec)
}

/// The document for a stored spec, with every default written out.
pub fn doc_from_spec(spec: &ServiceSpec) -> ServiceSpecDoc {
    let duration = |ms: u64| Some(units::format_duration(std::time::Duration::from_millis(ms)));
    let cpus = |nano: u64| (nano > 0).then(|| nano as f64 / 1e9);
    let memory = |bytes: u64| (bytes > 0).then(|| bytes.to_string());
    ServiceSpecDoc {
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
    }
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

pub fn service_view(state: &ClusterState, service: &Service) -> ServiceView {
    let spec = &service.spec;
    ServiceView {
        name: spec.name.clone(),
        mode: mode_str(spec).to_string(),
        replicas_desired: state.desired_task_count(service),
        replicas_running: running_count(state, &spec.name),
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
