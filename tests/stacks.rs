//! Stacks end to end: a Compose file deployed on three real daemons with the
//! local test image; redeploys that change nothing restart nothing, a changed
//! service alone is updated, `--prune` and `stack rm` remove containers, and
//! a spec printed by `service inspect --format yaml` deploys back unchanged.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::services::{docker_running, three_nodes, wait_running, IMAGE};
use common::{wait_for, Cluster};

fn compose(api_command: &str, with_worker: bool) -> String {
    let worker = if with_worker {
        format!(
            "  worker:\n    image: {IMAGE}\n    command: sleep 100000\n    stop_grace_period: 1s\n"
        )
    } else {
        String::new()
    };
    format!(
        "services:
  web:
    image: {IMAGE}
    command: [\"sleep\", \"100000\"]
    stop_grace_period: 1s
    environment:
      MODE: ${{MODE:-prod}}
    deploy:
      replicas: 3
      restart_policy:
        delay: 0s
  api:
    image: {IMAGE}
    command: {api_command}
    stop_grace_period: 1s
    deploy:
      replicas: 2
      update_config:
        parallelism: 2
        monitor: 1s
{worker}"
    )
}

fn stack_deploy(c: &Cluster, file: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["stack", "deploy", "-c", file.to_str().unwrap(), "shop"];
    args.extend_from_slice(extra);
    c.nodes[0].ok(&args)
}

/// Running container ids per service of the stack.
fn containers(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    ["shop_web", "shop_api", "shop_worker"]
        .iter()
        .map(|s| (s.to_string(), docker_running(c, s)))
        .collect()
}

#[test]
fn a_stack_deploys_redeploys_without_restarts_updates_one_service_and_is_removed() {
    let c = three_nodes();
    let file = c.root.path().join("compose.yml");
    std::fs::write(&file, compose("sleep 100000", true)).unwrap();

    // A dry run shows the plan and changes nothing.
    let plan = stack_deploy(&c, &file, &["--dry-run"]);
    assert!(plan.contains("+ service shop_web"), "{plan}");
    assert!(
        plan.contains("image shoal-test:latest  replicas 3  (new)"),
        "{plan}"
    );
    assert!(
        plan.contains("placement: shop_web 3 tasks -> node-a 1, node-b 1, node-c 1"),
        "{plan}"
    );
    assert!(plan.contains("(dry run: nothing was changed)"), "{plan}");
    let ls = c.nodes[0].json(&["stack", "ls"]).unwrap();
    assert_eq!(ls, serde_json::json!([]), "a dry run created nothing");

    // Deploy: waits until everything runs.
    let out = stack_deploy(&c, &file, &[]);
    assert!(out.contains("+ service shop_api"), "{out}");
    wait_running(&c, "shop_web", 3, Duration::from_secs(60));
    wait_running(&c, "shop_api", 2, Duration::from_secs(60));
    wait_running(&c, "shop_worker", 1, Duration::from_secs(60));
    let ls = c.nodes[1].json(&["stack", "ls"]).unwrap();
    assert_eq!(ls, serde_json::json!([{"name": "shop", "services": 3}]));
    let services = c.nodes[0].json(&["stack", "services", "shop"]).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 3);
    let tasks = c.nodes[0].json(&["stack", "ps", "shop"]).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 6);
    let inspect = c.nodes[0]
        .json(&["service", "inspect", "shop_web"])
        .unwrap();
    assert_eq!(
        inspect["spec"]["env"]["MODE"], "prod",
        "interpolated default"
    );
    let web = &docker_running(&c, "shop_web")[0];
    let label = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"shoal.stack\"}}",
            web,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "shop");

    // A dry run of one service: its plan, including what cannot be placed.
    let plan = c.nodes[0].ok(&[
        "deploy",
        "solo",
        "--image",
        IMAGE,
        "--replicas",
        "2",
        "--constraint",
        "node.labels.zone==eu",
        "--dry-run",
    ]);
    assert!(
        plan.contains("+ service solo  image shoal-test:latest  replicas 2  (new)"),
        "{plan}"
    );
    assert!(
        plan.contains(
            "placement: solo 2 tasks cannot be placed: no node satisfies node.labels.zone==eu"
        ),
        "{plan}"
    );
    let out = c.nodes[0].cli(&["service", "inspect", "solo"]);
    assert!(!out.status.success(), "a dry run creates nothing");

    // Unchanged: nothing restarts.
    let before = containers(&c);
    let out = stack_deploy(&c, &file, &[]);
    assert_eq!(out.matches("(unchanged)").count(), 3, "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        containers(&c),
        before,
        "an unchanged redeploy restarts nothing"
    );

    // One service changes: only it is updated.
    std::fs::write(&file, compose("sleep 200000", true)).unwrap();
    let out = stack_deploy(&c, &file, &[]);
    assert!(out.contains("~ service shop_api"), "{out}");
    assert!(out.contains("(rolling update, parallelism 2)"), "{out}");
    let after = containers(&c);
    assert_eq!(after["shop_web"], before["shop_web"]);
    assert_eq!(after["shop_worker"], before["shop_worker"]);
    assert_eq!(after["shop_api"].len(), 2);
    assert!(after["shop_api"]
        .iter()
        .all(|id| !before["shop_api"].contains(id)));

    // The round trip: inspect --format yaml, then deploy -f, changes nothing.
    let yaml = c.nodes[0].ok(&["service", "inspect", "shop_web", "--format", "yaml"]);
    let spec_file = c.root.path().join("web.yaml");
    std::fs::write(&spec_file, &yaml).unwrap();
    let out = c.nodes[0].ok(&["deploy", "-f", spec_file.to_str().unwrap(), "--detach"]);
    assert!(out.contains("unchanged: service shop_web"), "{out}\n{yaml}");

    // Without the worker, and without --prune: it stays, and the plan says so.
    std::fs::write(&file, compose("sleep 200000", false)).unwrap();
    let out = stack_deploy(&c, &file, &[]);
    assert!(
        out.contains("- service shop_worker  (would be removed with --prune)"),
        "{out}"
    );
    assert_eq!(docker_running(&c, "shop_worker").len(), 1);
    let out = stack_deploy(&c, &file, &["--prune"]);
    assert!(out.contains("- service shop_worker  (removed)"), "{out}");
    wait_for(Duration::from_secs(30), || {
        docker_running(&c, "shop_worker").is_empty().then_some(())
    })
    .expect("the pruned service's container is gone");

    // stack rm removes every container.
    let out = c.nodes[0].ok(&["stack", "rm", "shop"]);
    assert!(out.contains("verify: containers removed"), "{out}");
    assert!(containers(&c).values().all(Vec::is_empty));
    let out = c.nodes[0].cli(&["stack", "ps", "shop"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stack named \"shop\""));
}

#[test]
fn a_bad_compose_file_is_refused_with_its_position_and_changes_nothing() {
    let c = three_nodes();
    let file = c.root.path().join("compose.yml");
    std::fs::write(
        &file,
        format!("services:\n  web:\n    image: {IMAGE}\n    deploy:\n      replicas: three\n"),
    )
    .unwrap();
    let out = c.nodes[0].cli(&["stack", "deploy", "-c", file.to_str().unwrap(), "shop"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "compose.yml:5:17: services.web.deploy.replicas: expected a non-negative integer, \
             found \"three\""
        ),
        "{stderr}"
    );
    // Unsupported keys are warned about, and the rest deploys.
    std::fs::write(
        &file,
        format!(
            "services:\n  web:\n    image: {IMAGE}\n    command: sleep 100000\n    build: .\n    \
             stop_grace_period: 1s\n"
        ),
    )
    .unwrap();
    let out = c.nodes[0].cli(&["stack", "deploy", "-c", file.to_str().unwrap(), "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: services.web.build: not supported by shoal; ignored"),
        "{stderr}"
    );
    wait_running(&c, "shop_web", 1, Duration::from_secs(60));
}
