//! Safe file paths for torrent data.
//!
//! A `.torrent` (or metadata fetched from a stranger over BEP 9) names the files we will
//! create. Those names are hostile input: `../../.bashrc`, `/etc/passwd`, `C:\x`. Two layers:
//! - [`sanitize_component`] turns a raw name from a torrent into one that can exist on this
//!   OS, the way libtorrent does: invalid UTF-8 and control characters become `_`,
//!   direction-override characters are dropped, over-long names are cut keeping their
//!   extension, and on Windows device names (`aux.c`, `CON`) get a `_` prefix. Renaming
//!   never fails a torrent; only what would climb out (`..`, a separator or an absolute
//!   path inside one component) is refused.
//! - [`check_component`] is the invariant of [`SafePath`]: it refuses only what is unsafe or
//!   cannot be a file name here. On Linux and macOS `aux.c`, `con.h` and `nul.txt` are
//!   ordinary names (the Linux kernel tree has `drivers/.../i2c/aux.c`).
//!
//! [`join_under`] turns a [`SafePath`] into a filesystem path that cannot leave the output
//! directory, and [`check_no_symlinks`] refuses symlinks on the way.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Longest component we accept, in bytes (the common `NAME_MAX` of Linux filesystems).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Deepest path we accept (components), so a hostile torrent cannot make us build absurd trees.
pub const MAX_DEPTH: usize = 64;

/// A renamed component is cut to at most this many bytes before its extension is put back
/// (libtorrent's figure), leaving room under [`MAX_COMPONENT_LEN`].
const TRUNCATE_AT: usize = 240;

/// Longest extension (with its dot) kept when an over-long name is cut.
const MAX_EXTENSION: usize = 15;

/// Names Windows reserves for devices, whatever the extension: they cannot be files there.
const WINDOWS_RESERVED: [&str; 27] = [
    "CON", "PRN", "AUX", "NUL", "CLOCK$", "CONIN$", "CONOUT$", "COM0", "COM1", "COM2", "COM3",
    "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5",
    "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Characters Windows refuses in file names (besides control characters and separators).
const WINDOWS_INVALID: [char; 7] = ['<', '>', ':', '"', '|', '?', '*'];

/// Unicode controls that reverse the writing direction: `evil\u{202e}gpj.exe` displays as
/// `evilexe.jpg`. Dropped from names we are given.
const BIDI_CONTROLS: [char; 7] = [
    '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{200e}', '\u{200f}',
];

/// Which file-name rules apply: those of the OS we run on, or (in tests) another one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRules {
    /// Linux, macOS and other Unix: any byte but `/` and NUL.
    Unix,
    /// Windows: no device names, no `<>:"|?*\`, no trailing dot or space.
    Windows,
}

impl NameRules {
    /// The rules of the OS this binary was built for.
    pub const fn native() -> NameRules {
        if cfg!(windows) {
            NameRules::Windows
        } else {
            NameRules::Unix
        }
    }
}

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
    /// A component contains a path separator (`/`, and `\` on Windows).
    #[error("path component {0:?} contains a path separator")]
    Separator(String),
    /// A component contains a NUL byte.
    #[error("path component {0:?} contains a NUL byte")]
    Nul(String),
    /// A component contains a character this OS does not allow in names (Windows: control
    /// characters, `<>:"|?*`, a trailing dot or space).
    #[error("path component {0:?} contains a character this system does not allow in names")]
    Control(String),
    /// A component is a Windows device name such as `CON` or `nul.txt` (on Windows only).
    #[error("path component {0:?} is a reserved device name on this system")]
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

/// Whether `c` is a Windows device name (`aux`, `NUL.txt`, `com1.tar.gz`, `con `): Windows
/// ignores the extension and trailing dots and spaces.
fn is_windows_device(c: &str) -> bool {
    let stem = c
        .split('.')
        .next()
        .unwrap_or(c)
        .trim_end_matches([' ', '.']);
    WINDOWS_RESERVED
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem))
}

/// Checks one path component (a file or directory name) under this OS's rules.
pub fn check_component(c: &str) -> Result<(), PathError> {
    check_component_for(c, NameRules::native())
}

/// Checks one path component under `rules`: refuses what is unsafe (`..`, separators) and
/// what cannot be a name there; everything else is an ordinary name.
pub fn check_component_for(c: &str, rules: NameRules) -> Result<(), PathError> {
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
    if c.contains('/') || (rules == NameRules::Windows && c.contains('\\')) {
        return Err(PathError::Separator(c.to_string()));
    }
    if rules == NameRules::Windows {
        if c.chars()
            .any(|ch| ch.is_control() || WINDOWS_INVALID.contains(&ch))
            || c.ends_with(['.', ' '])
        {
            return Err(PathError::Control(c.to_string()));
        }
        if is_windows_device(c) {
            return Err(PathError::Reserved(c.to_string()));
        }
    }
    Ok(())
}

/// What [`sanitize_component`] made of a raw name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sanitized {
    /// Use this name.
    Name {
        /// The name to create.
        name: String,
        /// Whether it differs from what the torrent said (worth a log line).
        renamed: bool,
    },
    /// The component is `.`: it names the directory it is in, so it is left out.
    Skip,
}

/// Turns a raw path component from a torrent into a name that can exist under `rules`, the
/// way libtorrent does, so that odd names never fail a whole torrent; only `..` and a path
/// smuggled into one component are refused.
/// Linear in the length of `raw`.
pub fn sanitize_component(raw: &[u8], rules: NameRules) -> Result<Sanitized, PathError> {
    // A separator inside one component smuggles in a path (`/etc/passwd`, `..\\x`): that is
    // an attack, not an odd name.
    let windows = rules == NameRules::Windows;
    if raw.contains(&b'/') || (windows && raw.contains(&b'\\')) {
        let shown = String::from_utf8_lossy(raw).into_owned();
        return Err(if raw.first() == Some(&b'/') {
            PathError::Absolute(shown)
        } else {
            PathError::Separator(shown)
        });
    }
    let mut name = String::with_capacity(raw.len().min(MAX_COMPONENT_LEN + 4));
    for chunk in raw.utf8_chunks() {
        for ch in chunk.valid().chars() {
            let windows_bad = windows && WINDOWS_INVALID.contains(&ch);
            if BIDI_CONTROLS.contains(&ch) {
                continue;
            } else if ch.is_control() || windows_bad {
                name.push('_');
            } else {
                name.push(ch);
            }
        }
        if !chunk.invalid().is_empty() {
            name.push('_');
        }
    }
    if name == "." {
        return Ok(Sanitized::Skip);
    }
    if name == ".." {
        return Err(PathError::ParentDir);
    }
    if rules == NameRules::Windows {
        let kept = name.trim_end_matches(['.', ' ']).len();
        name.truncate(kept);
        if is_windows_device(&name) {
            name.insert(0, '_');
        }
    }
    if name.is_empty() || name == "." || name == ".." {
        // Nothing left (all separators or invisible characters), or dots that a Windows
        // trim produced: a placeholder keeps the file.
        name = "_".to_string();
    }
    if name.len() > MAX_COMPONENT_LEN {
        name = shorten(&name);
    }
    let renamed = name.as_bytes() != raw;
    Ok(Sanitized::Name { name, renamed })
}

/// Cuts an over-long name to [`TRUNCATE_AT`] bytes (on a character boundary) and puts its
/// extension back, so `very…long.mkv` stays an `.mkv`.
fn shorten(name: &str) -> String {
    let ext = name
        .rfind('.')
        .filter(|&i| i > 0 && name.len() - i <= MAX_EXTENSION)
        .map(|i| &name[i..]);
    let mut cut = TRUNCATE_AT;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = name[..cut].to_string();
    if let Some(e) = ext {
        out.push_str(e);
    }
    out
}

/// A relative path whose every component passed [`check_component`].
///
/// The only way to get one is through [`SafePath::new`] / [`SafePath::parse`], so code that
/// holds a `SafePath` never needs to re-check it. Stored as one `/`-joined string (no
/// component contains `/`): one allocation per path, so a torrent of 100,000 deep paths costs
/// what its names weigh, not a `String` per component.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafePath {
    joined: String,
    depth: usize,
}

impl SafePath {
    /// Validates a list of components (e.g. a metainfo `path` list).
    pub fn new<I, S>(components: I) -> Result<SafePath, PathError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut joined = String::new();
        let mut depth = 0;
        for c in components {
            let c = c.as_ref();
            check_component(c)?;
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(PathError::TooDeep(depth));
            }
            if depth > 1 {
                joined.push('/');
            }
            joined.push_str(c);
        }
        if depth == 0 {
            return Err(PathError::EmptyPath);
        }
        Ok(SafePath { joined, depth })
    }

    /// Parses a `/`-separated relative path such as `dir/file.txt` (a leading `/` is refused,
    /// as is any `..`, `.` or empty component).
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
    pub fn join(&self, rest: &SafePath) -> Result<SafePath, PathError> {
        let depth = self.depth + rest.depth;
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep(depth));
        }
        Ok(SafePath {
            joined: format!("{}/{}", self.joined, rest.joined),
            depth,
        })
    }

    /// The validated components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> + Clone {
        self.joined.split('/')
    }

    /// The components joined with `/`, as torrents and users write paths.
    pub fn as_str(&self) -> &str {
        &self.joined
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The relative path as a `PathBuf` (for display or for joining via [`join_under`]).
    pub fn to_path_buf(&self) -> PathBuf {
        self.components().collect()
    }
}

impl PartialOrd for SafePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SafePath {
    /// Component by component (so `a/b` sorts before `a-b`, as the directory tree would).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // No component holds `/` or NUL, so ranking `/` below every other byte compares the
        // joined strings exactly as the component lists would compare.
        let key = |b: &u8| if *b == b'/' { 0 } else { *b };
        self.joined
            .as_bytes()
            .iter()
            .map(key)
            .cmp(other.joined.as_bytes().iter().map(key))
    }
}

impl fmt::Display for SafePath {
    /// Components joined with `/`, the way torrents and users write paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined)
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
        assert_eq!(
            p.components().collect::<Vec<_>>(),
            ["dir", "sub", "file.txt"]
        );
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
        assert!(matches!(SafePath::new(["a\0b"]), Err(PathError::Nul(_))));
    }

    /// Names that real trees have (the Linux kernel's `aux.c`) are ordinary on Unix and only
    /// Windows refuses them; a backslash or newline is a legal Unix name character.
    #[test]
    fn device_names_are_ordinary_except_on_windows() {
        for r in [
            "CON",
            "nul",
            "Nul.txt",
            "aux.c",
            "con.h",
            "com1",
            "LPT9.tar.gz",
            "aux ",
            "prn.",
        ] {
            assert_eq!(check_component_for(r, NameRules::Unix), Ok(()), "{r}");
            assert!(
                check_component_for(r, NameRules::Windows).is_err(),
                "{r} must be refused on Windows"
            );
        }
        assert_eq!(check_component_for("a\\b", NameRules::Unix), Ok(()));
        assert_eq!(check_component_for("a\nb", NameRules::Unix), Ok(()));
        assert!(matches!(
            check_component_for("..\\..\\x", NameRules::Windows),
            Err(PathError::Separator(_))
        ));
        assert!(matches!(
            check_component_for("a:b", NameRules::Windows),
            Err(PathError::Control(_))
        ));
        assert!(SafePath::new(["drivers", "i2c", "aux.c"]).is_ok());
    }

    fn name(raw: &[u8], rules: NameRules) -> (String, bool) {
        match sanitize_component(raw, rules) {
            Ok(Sanitized::Name { name, renamed }) => (name, renamed),
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn sanitizing_renames_instead_of_failing() {
        let unix = NameRules::Unix;
        let win = NameRules::Windows;
        assert_eq!(name(b"aux.c", unix), ("aux.c".into(), false));
        assert_eq!(name(b"aux.c", win), ("_aux.c".into(), true));
        assert_eq!(name(b"CON", win), ("_CON".into(), true));
        assert_eq!(name(b"a\nb", unix), ("a_b".into(), true));
        assert_eq!(name(b"bad\xff\xfeutf8", unix), ("bad__utf8".into(), true));
        assert_eq!(name(b"a\\c", unix), ("a\\c".into(), false));
        assert!(matches!(
            sanitize_component(b"a/b", unix),
            Err(PathError::Separator(_))
        ));
        assert!(matches!(
            sanitize_component(b"/etc/x", unix),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            sanitize_component(b"..\\x", win),
            Err(PathError::Separator(_))
        ));
        assert_eq!(
            name("evil\u{202e}gpj.exe".as_bytes(), unix),
            ("evilgpj.exe".into(), true)
        );
        assert_eq!(name(b"what?.txt", win), ("what_.txt".into(), true));
        assert_eq!(name(b"trailing. ", win), ("trailing".into(), true));
        assert_eq!(name(b"", unix), ("_".into(), true));
        assert_eq!(name("\u{202e}".as_bytes(), unix), ("_".into(), true));
        assert_eq!(
            name("é 漢字 x.txt".as_bytes(), unix),
            ("é 漢字 x.txt".into(), false)
        );
        assert_eq!(sanitize_component(b".", unix), Ok(Sanitized::Skip));
        assert_eq!(sanitize_component(b"..", unix), Err(PathError::ParentDir));
        assert_eq!(sanitize_component(b"..", win), Err(PathError::ParentDir));
        // Over-long: cut on a character boundary, extension kept.
        let long = format!("{}.mkv", "é".repeat(200));
        let (n, renamed) = name(long.as_bytes(), unix);
        assert!(
            renamed && n.len() <= MAX_COMPONENT_LEN && n.ends_with(".mkv"),
            "{n}"
        );
        // Whatever the input, the result passes the SafePath check of the same rules.
        for raw in [&b"x\x00y"[..], b"...", b" . ", b"\x7f", b"nul.", b"a:b:c"] {
            for rules in [unix, win] {
                let (n, _) = name(raw, rules);
                assert_eq!(check_component_for(&n, rules), Ok(()), "{raw:?} -> {n:?}");
            }
        }
    }

    #[test]
    fn limits_still_apply() {
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
            .join(&SafePath::parse("y/z").unwrap())
            .unwrap();
        assert_eq!(joined.to_string(), "x/y/z");
        assert_eq!(joined.depth(), 3);
        assert!(
            joined < SafePath::parse("x/y-z").unwrap(),
            "component order"
        );
        let deep = SafePath::new(vec!["a"; MAX_DEPTH]).unwrap();
        assert_eq!(deep.join(&joined), Err(PathError::TooDeep(MAX_DEPTH + 3)));
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
