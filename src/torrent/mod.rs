//! Torrents without trackers: magnet links, `.torrent` metainfo (parse, build, info-hash),
//! the piece/file layout, safe paths, on-disk storage and a crash-safe resume record.
//!
//! Everything here is synchronous, pure std code: no tokio, no sockets. The engine calls it
//! (from blocking tasks where it touches the disk).

pub mod bencode;
pub mod build;
pub mod check;
pub mod layout;
pub mod magnet;
pub mod metainfo;
pub mod path;
pub mod resume;
pub mod select;
pub mod storage;

pub use build::{build_torrent, choose_piece_length, BuildError, BuildOptions, Built};
pub use check::{plan as plan_check, CheckPlan};
pub use layout::{Layout, LayoutError, Segment, BLOCK_SIZE};
pub use magnet::{parse_infohash_arg, Magnet, MagnetError};
pub use metainfo::{info_hash_of, FileEntry, Info, Metainfo, MetainfoError};
pub use path::{PathError, SafePath};
pub use resume::{Bitfield, ResumeError, ResumeFile};
pub use select::{listed_files, wanted_pieces, FileSelection, SelectError};
pub use storage::{FileFound, FileStamp, OpenMode, Storage, StorageError, VerifiedPiece};
