//! Safe file paths for torrent data.
//!
//! A `.torrent` (or metadata fetched from a stranger over BEP 9) names the files we will
//! create. Those names are hostile input: `../../.bashrc`, `/etc/passwd`, `C:\x`, `NUL`.
//! [`SafePath`] can only be built from components that passed [`check_component`], and
//! [`join_under`] turns one into a filesystem path that cannot leave the output directory.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Longest component we accept, in bytes (the common `NAME_MAX` of Linux filesystems).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Deepest path we accept (components), so a hostile torrent cannot make us build absurd trees.
pub const MAX_DEPTH: usize = 64;

/// Names Windows reserves for devices; refused everywhere so a torrent is portable and a
/// file we create can be opened on every system.
const WINDOWS_RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Why a path (or one of its components) is unsafe; each case names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path has no components at all.
    #[error("empty path")]
    EmptyPath,
    /// A component is the empty string (e.g. `a//b`).
    #[error("empty path component")]
    EmptyComponent,
    /// A component is `.`.
    #[error("path component \".\" is not allowed")]
    CurrentDir,
    /// A component is `..`, which would climb out of the output directory.
    #[error("path component \"..\" is not allowed (path traversal)")]
    ParentDir,
    /// The path is absolute (starts with `/`, or a Windows drive/UNC prefix).
    #[error("absolute path {0:?} is not allowed")]
    Absolute(String),
    /// A component contains a path separator (`/` or `\`).
    #[error("path component {0:?} contains a path separator")]
    Separator(String),
    /// A component contains a NUL byte.
    #[error("path component {0:?} contains a NUL byte")]
    Nul(String),
    /// A component contains another control character (newlines etc.).
    #[error("path component {0:?} contains a control character")]
    Control(String),
    /// A component is a Windows device name such as `CON` or `nul.txt`.
    #[error("path component {0:?} is a reserved device name")]
    Reserved(String),
    /// A component is longer than [`MAX_COMPONENT_LEN`] bytes.
    #[error("path component of {0} bytes is too long (max {MAX_COMPONENT_LEN})")]
    TooLong(usize),
    /// The path has more than [`MAX_DEPTH`] components.
    #[error("path has {0} components (max {MAX_DEPTH})")]
    TooDeep(usize),
    /// A directory on the way to the file is a symbolic link, which could lead outside.
    #[error("{0:?} is a symbolic link; refusing to follow it out of the output directory")]
    Symlink(PathBuf),
    /// Joining would produce a path outside the output directory (defence in depth).
    #[error("path {0:?} would leave the output directory")]
    Escapes(PathBuf),
}

/// Checks one path component (a file or directory name) and says why it is unsafe, if it is.
pub fn check_component(c: &str) -> Result<(), PathError> {
    if c.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if c == "." {
        return Err(PathError::CurrentDir);
    }
    if c == ".." {
        return Err(PathError::ParentDir);
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err(PathError::TooLong(c.len()));
    }
    if c.contains('\0') {
        return Err(PathError::Nul(c.to_string()));
    }
    if c.contains('/') || c.contains('\\') {
        return Err(PathError::Separator(c.to_string()));
    }
    if c.chars().any(char::is_control) {
        return Err(PathError::Control(c.to_string()));
    }
    // Windows ignores extensions and trailing spaces/dots: "nul.txt", "CON ", "aux." are devices.
    let stem = c
        .split('.')
        .next()
        .unwrap_or(c)
        .trim_end_matches([' ', '.']);
    if WINDOWS_RESERVED
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem))
    {
        return Err(PathError::Reserved(c.to_string()));
    }
    Ok(())
}

/// A relative path whose every component passed [`check_component`].
///
/// The only way to get one is through [`SafePath::new`] / [`SafePath::parse`], so code that
/// holds a `SafePath` never needs to re-check it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafePath(Vec<String>);

impl SafePath {
    /// Validates a list of components (e.g. a metainfo `path` list).
    pub fn new<I, S>(components: I) -> Result<SafePath, PathError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut v = Vec::new();
        for c in components {
            let c = c.into();
            check_component(&c)?;
            v.push(c);
            if v.len() > MAX_DEPTH {
                return Err(PathError::TooDeep(v.len()));
            }
        }
        if v.is_empty() {
            return Err(PathError::EmptyPath);
        }
        Ok(SafePath(v))
    }

    /// Parses a `/`-separated relative path such as `dir/file.txt` (a leading `/` is refused,
    /// as is any `\`, `..`, `.` or empty component).
    pub fn parse(s: &str) -> Result<SafePath, PathError> {
        if s.starts_with('/') || s.starts_with('\\') || has_drive_prefix(s) {
            return Err(PathError::Absolute(s.to_string()));
        }
        if s.is_empty() {
            return Err(PathError::EmptyPath);
        }
        SafePath::new(s.split('/'))
    }

    /// A new path with `self` as the parent directory of `rest`.
    pub fn join(&self, rest: &SafePath) -> SafePath {
        let mut v = self.0.clone();
        v.extend(rest.0.iter().cloned());
        SafePath(v)
    }

    /// The validated components, outermost first.
    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// The relative path as a `PathBuf` (for display or for joining via [`join_under`]).
    pub fn to_path_buf(&self) -> PathBuf {
        self.0.iter().collect()
    }
}

impl fmt::Display for SafePath {
    /// Components joined with `/`, the way torrents and users write paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

fn has_drive_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b, [l, b':', ..] if l.is_ascii_alphabetic())
}

/// Joins a [`SafePath`] under `root`, checking (lexically) that every added component is a
/// normal name, so the result is always strictly inside `root`.
pub fn join_under(root: &Path, rel: &SafePath) -> Result<PathBuf, PathError> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        // Re-check: the invariant of SafePath makes this unreachable, but it is cheap.
        check_component(c)?;
        let p = Path::new(c);
        let mut comps = p.components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(_)), None) => out.push(c),
            _ => return Err(PathError::Escapes(out.join(c))),
        }
    }
    if !out.starts_with(root) || out == root {
        return Err(PathError::Escapes(out));
    }
    Ok(out)
}

/// Checks on disk that no existing directory between `root` and the file `rel` names is a
/// symbolic link (which could redirect our writes outside `root`), nor the file itself.
///
/// Missing components are fine (they will be created as real directories).
pub fn check_no_symlinks(root: &Path, rel: &SafePath) -> Result<(), PathError> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(PathError::Symlink(p)),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        let p = SafePath::parse("dir/sub/file.txt").unwrap();
        assert_eq!(p.components(), ["dir", "sub", "file.txt"]);
        assert_eq!(p.to_string(), "dir/sub/file.txt");
        assert!(SafePath::new(["..hidden", "a..b", ".x", "CONSOLE", "com10", "é 漢字"]).is_ok());
    }

    #[test]
    fn refuses_hostile_components() {
        assert_eq!(SafePath::parse("a/../b"), Err(PathError::ParentDir));
        assert_eq!(SafePath::parse(".."), Err(PathError::ParentDir));
        assert_eq!(SafePath::parse("./a"), Err(PathError::CurrentDir));
        assert_eq!(SafePath::parse("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(SafePath::parse("a/"), Err(PathError::EmptyComponent));
        assert_eq!(SafePath::parse(""), Err(PathError::EmptyPath));
        assert!(matches!(
            SafePath::parse("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            SafePath::parse("C:/x"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            SafePath::parse("\\\\server\\x"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            SafePath::new(["a/b"]),
            Err(PathError::Separator(_))
        ));
        assert!(matches!(
            SafePath::new(["..\\..\\x"]),
            Err(PathError::Separator(_))
        ));
        assert!(matches!(SafePath::new(["a\0b"]), Err(PathError::Nul(_))));
        assert!(matches!(
            SafePath::new(["a\nb"]),
            Err(PathError::Control(_))
        ));
        for r in [
            "CON",
            "nul",
            "Nul.txt",
            "com1",
            "LPT9.tar.gz",
            "aux ",
            "prn.",
        ] {
            assert!(
                matches!(SafePath::new([r]), Err(PathError::Reserved(_))),
                "{r}"
            );
        }
        assert_eq!(
            SafePath::new(["x".repeat(256)]),
            Err(PathError::TooLong(256))
        );
        assert!(SafePath::new(["x".repeat(255)]).is_ok());
        assert_eq!(
            SafePath::new(vec!["a"; MAX_DEPTH + 1]),
            Err(PathError::TooDeep(MAX_DEPTH + 1))
        );
        assert_eq!(
            SafePath::new(Vec::<String>::new()),
            Err(PathError::EmptyPath)
        );
    }

    #[test]
    fn join_stays_inside() {
        let root = Path::new("/data/out");
        let p = join_under(root, &SafePath::parse("a/b.txt").unwrap()).unwrap();
        assert_eq!(p, Path::new("/data/out/a/b.txt"));
        assert!(p.starts_with(root));
        let joined = SafePath::parse("x")
            .unwrap()
            .join(&SafePath::parse("y/z").unwrap());
        assert_eq!(joined.to_string(), "x/y/z");
    }

    #[test]
    fn symlinked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let rel = SafePath::parse("evil/file").unwrap();
        assert!(matches!(
            check_no_symlinks(dir.path(), &rel),
            Err(PathError::Symlink(_))
        ));
        let ok = SafePath::parse("fine/file").unwrap();
        assert_eq!(check_no_symlinks(dir.path(), &ok), Ok(()));
    }
}
