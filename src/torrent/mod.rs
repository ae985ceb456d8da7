//! Torrents without trackers: magnet links, `.torrent` metainfo (parse, build, info-hash),
//! the piece/file layout, safe paths, on-disk storage and a crash-safe resume record.
//!
//! Everything here is synchronous, pure std code: no tokio, no sockets. The engine calls it
//! (from blocking tasks where it touches the disk).

pub mod magnet;

pub use magnet::{parse_infohash_arg, Magnet, MagnetError};
