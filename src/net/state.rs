//! The node's durable state: its id and the routing table's contacts, so a restarted node keeps
//! its place in the keyspace and rejoins through nodes it already knew.
//!
//! Stored as a small bencoded dictionary (`id`, `nodes` in compact node form). Written
//! atomically — temp file, fsync, rename, fsync of the directory — so a crash or `kill -9` at
//! any moment leaves either the old file or the new one, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::id::Id;
use crate::krpc::{decode_nodes, encode_nodes, NodeInfo};

/// File name inside the state directory.
pub const STATE_FILE: &str = "dht-state.benc";

/// What survives a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// Our node id.
    pub id: Id,
    /// Contacts from the routing table.
    pub nodes: Vec<NodeInfo>,
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// File system trouble.
    #[error("state file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a state file we wrote.
    #[error("state file {0} is corrupt; move it away to start with a fresh id")]
    Corrupt(PathBuf),
}

#[derive(Serialize, Deserialize)]
struct Raw {
    id: ByteBuf,
    nodes: ByteBuf,
}

/// Path of the state file in `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Loads the state from `dir`; `Ok(None)` if there is none yet.
pub fn load(dir: &Path) -> Result<Option<SavedState>, StateError> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let raw: Raw = bt_bencode::from_slice(&bytes).map_err(|_| StateError::Corrupt(path.clone()))?;
    let id = Id::from_slice(&raw.id).ok_or_else(|| StateError::Corrupt(path.clone()))?;
    Ok(Some(SavedState {
        id,
        nodes: decode_nodes(&raw.nodes),
    }))
}

/// Saves the state into `dir` atomically (creating `dir` if needed).
pub fn save(dir: &Path, state: &SavedState) -> Result<(), StateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let raw = Raw {
        id: ByteBuf::from(state.id.0.to_vec()),
        nodes: ByteBuf::from(encode_nodes(&state.nodes)),
    };
    let bytes = bt_bencode::to_vec(&raw).map_err(|_| StateError::Corrupt(dir.to_path_buf()))?;
    let path = state_path(dir);
    let tmp = dir.join(format!("{STATE_FILE}.tmp{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io(&path))?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let st = SavedState {
            id: Id([7; 20]),
            nodes: vec![NodeInfo {
                id: Id([1; 20]),
                addr: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 5), 7000),
            }],
        };
        save(dir.path(), &st).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(st));
        fs::write(state_path(dir.path()), b"garbage").unwrap();
        assert!(matches!(load(dir.path()), Err(StateError::Corrupt(_))));
    }
}
