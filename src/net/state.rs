//! The node's durable state: its id and the routing table's contacts, so a restarted node keeps
//! its place in the keyspace and rejoins through nodes it already knew.
//!
//! Stored as a small bencoded dictionary (`id`, `nodes` in compact node form, and for a
//! dual-stack node `nodes6`, the IPv6 table in BEP 32's 38-byte form; a file without it,
//! from an IPv4-only node or an older version, loads with an empty IPv6 table). Written
//! atomically — temp file, fsync, rename, fsync of the directory — so a crash or `kill -9` at
//! any moment leaves either the old file or the new one, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::id::Id;
use std::net::SocketAddrV6;

use crate::krpc::{decode_node_list, decode_nodes, encode_node_list, encode_nodes, NodeInfo};

/// File name inside the state directory.
pub const STATE_FILE: &str = "dht-state.benc";

/// What survives a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// Our node id.
    pub id: Id,
    /// Contacts from the routing table.
    pub nodes: Vec<NodeInfo>,
    /// Contacts from the IPv6 routing table of a dual-stack node (BEP 32).
    pub nodes6: Vec<NodeInfo<SocketAddrV6>>,
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
    #[serde(default, skip_serializing_if = "no_bytes")]
    nodes6: ByteBuf,
}

/// An empty list is not written (an IPv4-only node's file stays as it was).
fn no_bytes(b: &ByteBuf) -> bool {
    b.is_empty()
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
        nodes6: decode_node_list(&raw.nodes6),
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
        nodes6: ByteBuf::from(encode_node_list(&state.nodes6)),
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
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

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
            nodes6: Vec::new(),
        };
        save(dir.path(), &st).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(st));
        fs::write(state_path(dir.path()), b"garbage").unwrap();
        assert!(matches!(load(dir.path()), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn the_ipv6_table_survives_and_an_ipv4_only_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let st = SavedState {
            id: Id([7; 20]),
            nodes: vec![NodeInfo {
                id: Id([1; 20]),
                addr: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 5), 7000),
            }],
            nodes6: (1..=3u16)
                .map(|i| NodeInfo {
                    id: Id([i as u8 + 1; 20]),
                    addr: SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i), 6881, 0, 0),
                })
                .collect(),
        };
        save(dir.path(), &st).unwrap();
        let raw = fs::read(state_path(dir.path())).unwrap();
        assert!(
            raw.windows(8).any(|w| w == b"6:nodes6"),
            "the IPv6 table is written"
        );
        assert_eq!(load(dir.path()).unwrap(), Some(st.clone()));
        // What an IPv4-only node (or the version before BEP 32) wrote: no `nodes6` key.
        let v4_only = SavedState {
            nodes6: Vec::new(),
            ..st
        };
        save(dir.path(), &v4_only).unwrap();
        let raw = fs::read(state_path(dir.path())).unwrap();
        assert!(
            !raw.windows(6).any(|w| w == b"nodes6"),
            "no empty key written"
        );
        assert_eq!(load(dir.path()).unwrap(), Some(v4_only));
    }
}
