//! Dry runs: what a deploy would change and where its new tasks would go, without
//! changing anything. [`plan`] compares the specs with the services in the state,
//! then applies the deploy to a copy of the state and runs the orchestrator and
//! the scheduler over the copy, so the placement shown is the one the leader
//! would make now (including what cannot be placed, and why).
//!
//! Pure: the state is only read; `now_ms` is an input.

use std::collections::BTreeMap;

use crate::orchestrator::reconcile;
use crate::scheduler::schedule;
use crate::service::{ServiceMode, ServiceSpec, TaskState};
use crate::state::{apply, ClusterState, Command};
use crate::types::NodeId;

/// Rounds of orchestrator and scheduler run over the copy: creates, then
/// placements, then what those make possible.
const PLAN_ROUNDS: usize = 3;

/// What a deploy does to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    /// The task template changes: a rolling update.
    Update {
        from_image: String,
        to_image: String,
        parallelism: u64,
    },
    /// Only the replica count changes: no task restarts.
    Scale {
        from: u64,
        to: u64,
    },
    /// Only settings that restart nothing (update or rollback settings).
    Settings,
    Unchanged,
    Remove,
    /// In the stack but not in the file: removed only with `--prune`.
    WouldRemove,
}

/// One service's line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub name: String,
    pub change: Change,
    /// The image the service runs after the deploy (empty when removed).
    pub image: String,
    /// Replicas after the deploy; `None` for a global service.
    pub replicas: Option<u64>,
    /// New tasks the deploy would place now, per node.
    pub placed: BTreeMap<NodeId, u64>,
    /// New tasks no node would take now, with the scheduler's reason.
    pub unplaced: BTreeMap<String, u64>,
}

/// The change `specs` would make to `state`, as the deploy `command` (a
/// `CreateService`, `UpdateService` or `DeployStack`). `Err` carries the
/// refusal the deploy itself would get.
pub fn plan(
    state: &ClusterState,
    command: &Command,
    now_ms: u64,
) -> Result<Vec<ServicePlan>, String> {
    let (specs, stack, prune): (Vec<&ServiceSpec>, Option<&str>, bool) = match command {
        Command::CreateService { spec, .. } | Command::UpdateService { spec, .. } => {
            (vec![spec], None, false)
        }
        Command::DeployStack {
            stack,
            specs,
            prune,
            ..
        } => (specs.iter().collect(), Some(stack.as_str()), *prune),
        _ => return Err("only deploys can be planned".to_owned()),
    };
    let mut copy = state.clone();
    let response = apply(&mut copy, command);
    if let crate::state::Response::Rejected { reason } = response {
        return Err(reason);
    }
    let before: std::collections::BTreeSet<&String> = state.tasks.keys().collect();
    for round in 0..PLAN_ROUNDS {
        let now = now_ms + round as u64;
        let changes = reconcile(&copy, now);
        apply(
            &mut copy,
            &Command::ApplyTaskChanges {
                changes,
                now_ms: now,
            },
        );
        let placements = schedule(&copy);
        apply(
            &mut copy,
            &Command::ApplyTaskChanges {
                changes: placements,
                now_ms: now,
            },
        );
    }
    let mut plans = Vec::new();
    for spec in &specs {
        let change = match state.services.get(&spec.name) {
            None => Change::Create,
            Some(existing) if *existing.spec == **spec => Change::Unchanged,
            Some(existing) if !existing.spec.same_template(spec) => Change::Update {
                from_image: existing.spec.image.clone(),
                to_image: spec.image.clone(),
                parallelism: spec.update.parallelism,
            },
            Some(existing) => match (existing.spec.mode, spec.mode) {
                (
                    ServiceMode::Replicated { replicas: from },
                    ServiceMode::Replicated { replicas: to },
                ) if from != to => Change::Scale { from, to },
                _ => Change::Settings,
            },
        };
        let mut placed = BTreeMap::new();
        let mut unplaced = BTreeMap::new();
        for task in copy.tasks_of(&spec.name) {
            if before.contains(&task.id) || !task.is_live() {
                continue;
            }
            match (task.state, task.node_id) {
                (TaskState::Pending, _) => {
                    *unplaced.entry(task.message.clone()).or_insert(0) += 1;
                }
                (_, Some(node)) => *placed.entry(node).or_insert(0) += 1,
                (_, None) => {}
            }
        }
        plans.push(ServicePlan {
            name: spec.name.clone(),
            change,
            image: spec.image.clone(),
            replicas: spec.replicas(),
            placed,
            unplaced,
        });
    }
    if let Some(stack) = stack {
        let named: std::collections::BTreeSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        for service in state.services.values() {
            if service.spec.stack.as_deref() == Some(stack)
                && !named.contains(service.spec.name.as_str())
            {
                plans.push(ServicePlan {
                    name: service.spec.name.clone(),
                    change: if prune {
                        Change::Remove
                    } else {
                        Change::WouldRemove
                    },
                    image: service.spec.image.clone(),
                    replicas: service.spec.replicas(),
                    placed: BTreeMap::new(),
                    unplaced: BTreeMap::new(),
                });
            }
        }
    }
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Constraint, UpdateConfig};
    use crate::testing::{add_service, cluster, running};

    fn spec(name: &str, image: &str, replicas: u64) -> ServiceSpec {
        ServiceSpec {
            mode: ServiceMode::Replicated { replicas },
            stack: Some("shop".to_owned()),
            ..ServiceSpec::default_for(&format!("shop_{name}"), image)
        }
    }

    fn deploy(specs: Vec<ServiceSpec>, prune: bool) -> Command {
        Command::DeployStack {
            stack: "shop".to_owned(),
            specs,
            prune,
            now_ms: 10,
        }
    }

    #[test]
    fn a_plan_shows_each_change_and_where_new_tasks_go() {
        let mut state = cluster(3);
        add_service(&mut state, spec("api", "api:1", 2));
        add_service(&mut state, spec("db", "db:1", 1));
        add_service(&mut state, spec("old", "old:1", 1));
        add_service(&mut state, spec("cache", "cache:1", 1));
        running(&mut state, "shop_api", 1, 1);
        running(&mut state, "shop_api", 2, 2);
        running(&mut state, "shop_db", 1, 3);
        running(&mut state, "shop_cache", 1, 1);
        let before = state.clone();
        let mut eu = spec("eu", "eu:1", 2);
        eu.constraints = vec!["node.labels.zone==eu".parse::<Constraint>().unwrap()];
        let command = deploy(
            vec![
                spec("web", "app:2", 3),
                spec("api", "api:2", 2),
                spec("db", "db:1", 3),
                ServiceSpec {
                    update: UpdateConfig {
                        parallelism: 4,
                        ..UpdateConfig::default()
                    },
                    ..spec("cache", "cache:1", 1)
                },
                eu,
            ],
            false,
        );
        let plans = plan(&state, &command, 100).unwrap();
        assert_eq!(state, before, "a plan changes nothing");
        let by_name: BTreeMap<&str, &ServicePlan> =
            plans.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(by_name["shop_web"].change, Change::Create);
        assert_eq!(
            by_name["shop_web"].placed,
            BTreeMap::from([(1, 1), (2, 1), (3, 1)])
        );
        assert_eq!(
            by_name["shop_api"].change,
            Change::Update {
                from_image: "api:1".to_owned(),
                to_image: "api:2".to_owned(),
                parallelism: 1
            }
        );
        // Stop-first: the first batch's old task stops before a new one exists.
        assert_eq!(by_name["shop_api"].placed.values().sum::<u64>(), 0);
        assert_eq!(by_name["shop_db"].change, Change::Scale { from: 1, to: 3 });
        assert_eq!(by_name["shop_db"].placed.values().sum::<u64>(), 2);
        assert_eq!(by_name["shop_cache"].change, Change::Settings);
        assert_eq!(by_name["shop_old"].change, Change::WouldRemove);
        assert_eq!(by_name["shop_eu"].placed, BTreeMap::new());
        assert_eq!(
            by_name["shop_eu"].unplaced,
            BTreeMap::from([(
                "no node satisfies node.labels.zone==eu: 0 of 3 nodes".to_owned(),
                2
            )])
        );
        let pruned = plan(&state, &deploy(vec![spec("api", "api:1", 2)], true), 100).unwrap();
        let names: Vec<(&str, &Change)> = pruned
            .iter()
            .map(|p| (p.name.as_str(), &p.change))
            .collect();
        assert_eq!(
            names,
            [
                ("shop_api", &Change::Unchanged),
                ("shop_cache", &Change::Remove),
                ("shop_db", &Change::Remove),
                ("shop_old", &Change::Remove)
            ]
        );
    }

    #[test]
    fn a_plan_of_a_refused_deploy_gives_the_refusal() {
        let state = cluster(1);
        let error = plan(&state, &deploy(vec![spec("web", "", 1)], false), 1).unwrap_err();
        assert!(error.contains("invalid image"), "{error}");
    }
}
