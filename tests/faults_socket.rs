//! The control socket is the daemon's whole authority: it must be 0600 and
//! refuse every user but its owner. Run as root, the test starts a client as
//! `nobody` (uid 65534) against a data dir opened to everyone, so only the
//! socket's own mode stands in the way.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{Cluster, BIN};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
fn control_socket_is_0600_and_refuses_other_users() {
    let mut cluster = Cluster::new();
    let i = cluster.init("a", "127.0.0.1");
    let daemon = &cluster.nodes[i];
    let socket = daemon.dir.join("shoal.sock");
    let meta = std::fs::metadata(&socket).expect("the socket exists");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket mode is {:o}",
        meta.permissions().mode() & 0o777
    );

    if !is_root() {
        eprintln!("skipping the other-user half: not root, cannot run a client as nobody");
        return;
    }
    // Open every directory on the way (the temp dirs are 0700), so only the
    // socket's mode can refuse `nobody`.
    let mut dir = Some(daemon.dir.as_path());
    while let Some(d) = dir {
        if d == std::path::Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        if mode & 0o005 != 0o005 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
        }
        dir = d.parent();
    }
    // The binary itself must be runnable by nobody.
    let mut bin = Some(std::path::Path::new(BIN));
    while let Some(p) = bin {
        if p == std::path::Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        if mode & 0o005 != 0o005 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
        }
        bin = p.parent();
    }

    let host = format!("unix://{}", socket.display());
    let as_nobody = Command::new(BIN)
        .args(["-H", &host, "node", "ls"])
        .uid(NOBODY)
        .gid(NOBODY)
        .env_remove("SHOAL_DATA_DIR")
        .output()
        .expect("run the client as nobody");
    let stderr = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(
        !as_nobody.status.success(),
        "nobody could use the control socket: {}",
        String::from_utf8_lossy(&as_nobody.stdout)
    );
    assert!(
        stderr.to_lowercase().contains("permission denied"),
        "the refusal should say permission denied: {stderr}"
    );

    // The owner still gets in over the same path.
    let as_root = Command::new(BIN)
        .args(["-H", &host, "node", "ls"])
        .output()
        .unwrap();
    assert!(
        as_root.status.success(),
        "{}",
        String::from_utf8_lossy(&as_root.stderr)
    );
}
