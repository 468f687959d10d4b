//! The on-disk layout of a node's data directory, and the lock that keeps a
//! second daemon away from it.
//!
//! ```text
//! <data-dir>/lock          advisory lock held by the running daemon
//! <data-dir>/node.json     this node's identity facts (NodeMeta)
//! <data-dir>/identity/     node.crt, node.key, ca.crt
//! <data-dir>/raft.redb     Raft vote, log, snapshots
//! <data-dir>/shoal.sock    control API (HTTP/JSON), mode 0600
//! ```

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_raft::NodeId;

/// Bumped when the layout changes incompatibly.
const META_FORMAT: u32 = 1;

/// What a node must remember about itself across restarts; everything else
/// comes from the Raft store or from the leader.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeMeta {
    pub format: u32,
    pub cluster_id: String,
    pub node_id: NodeId,
    pub name: String,
    pub listen: String,
    pub advertise: String,
    /// Last known managers (id, address): where a restarted node looks for the leader.
    pub managers: Vec<(NodeId, String)>,
}

impl NodeMeta {
    pub fn new(
        cluster_id: String,
        node_id: NodeId,
        name: String,
        listen: String,
        advertise: String,
        managers: Vec<(NodeId, String)>,
    ) -> Self {
        NodeMeta {
            format: META_FORMAT,
            cluster_id,
            node_id,
            name,
            listen,
            advertise,
            managers,
        }
    }
}

/// An opened data directory, locked for this process as long as it lives.
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock.
    pub fn open(root: &Path) -> Result<DataDir> {
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create data dir {}", root.display()))?;
        // It holds the node's private key (and on managers the cluster CA key
        // and the control socket): the owner's alone, before anything is in it.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700)).with_context(|| {
                format!(
                    "cannot make data dir {} private (mode 0700)",
                    root.display()
                )
            })?;
        }
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!(
                "data dir {} is locked: another shoal daemon is using it",
                root.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn identity_dir(&self) -> PathBuf {
        self.root.join("identity")
    }
    pub fn raft_path(&self) -> PathBuf {
        self.root.join("raft.redb")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.root.join("shoal.sock")
    }
    fn meta_path(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn is_initialised(&self) -> bool {
        self.meta_path().exists()
    }

    /// Refuses a directory that already holds a node: `init` and `join` must
    /// start from nothing, so a node never silently changes identity.
    pub fn ensure_fresh(&self) -> Result<()> {
        if let Ok(meta) = self.load_meta() {
            bail!(
                "data dir {} already holds node {} ({}) of cluster {}: start it with `shoal run --data-dir {}`, or use an empty directory",
                self.root.display(),
                meta.node_id,
                meta.name,
                meta.cluster_id,
                self.root.display()
            );
        }
        if self.is_initialised() || self.raft_path().exists() {
            bail!(
                "data dir {} is not empty (it holds shoal files from an unfinished start): use an empty directory",
                self.root.display()
            );
        }
        Ok(())
    }

    pub fn load_meta(&self) -> Result<NodeMeta> {
        let path = self.meta_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} is not a shoal data dir (no node.json): create a cluster with `shoal init` or join one with `shoal join`",
                self.root.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let meta: NodeMeta = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        if meta.format != META_FORMAT {
            bail!(
                "{} has format {}, this shoal understands format {}",
                path.display(),
                meta.format,
                META_FORMAT
            );
        }
        Ok(meta)
    }

    /// Writes node.json atomically (temp file, fsync, rename).
    pub fn save_meta(&self, meta: &NodeMeta) -> Result<()> {
        let path = self.meta_path();
        let tmp = self.root.join("node.json.tmp");
        let text = serde_json::to_string_pretty(meta)?;
        {
            use std::io::Write;
            let mut f =
                File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let _dir = DataDir::open(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn second_open_is_refused_while_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(err.to_string().contains("locked"), "{err}");
        drop(first);
        DataDir::open(dir.path()).expect("lock is released on drop");
    }

    #[test]
    fn meta_round_trips_and_fresh_check_refuses_a_used_dir() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::open(dir.path()).unwrap();
        dd.ensure_fresh().unwrap();
        let err = dd.load_meta().unwrap_err().to_string();
        assert!(err.contains("not a shoal data dir"), "{err}");
        let meta = NodeMeta::new(
            "c1".into(),
            3,
            "n3".into(),
            "127.0.0.1:4500".into(),
            "127.0.0.1:4500".into(),
            vec![(1, "127.0.0.1:4500".into())],
        );
        dd.save_meta(&meta).unwrap();
        assert_eq!(dd.load_meta().unwrap(), meta);
        let err = dd.ensure_fresh().unwrap_err().to_string();
        assert!(err.contains("already holds node 3"), "{err}");
    }
}
