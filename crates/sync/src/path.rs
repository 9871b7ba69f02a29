//! Paths inside a replicated tree as they travel between members: relative, `/`-separated
//! bytes (file names need not be UTF-8), checked on arrival so that no request can name
//! anything outside the tree. Also the exclude rules and the receiver's temporary names.

use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest path accepted from the network (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest file name (Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Prefix of the receiver's in-progress files; such names are hidden from listings and
/// never replicated.
pub const TEMP_PREFIX: &[u8] = b".uphold-tmp.";

/// A path relative to the root of a tree; empty means the root itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

/// Checked on arrival: a path from the network that could leave the tree does not even
/// decode.
impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        RelPath::new(bytes.into_vec()).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {shown}: {reason}")]
pub struct PathError {
    pub shown: String,
    pub reason: &'static str,
}

/// Checks one file name: what may appear between two slashes.
pub fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == b"." || name == b".." {
        return Err("`.` and `..` are not allowed");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("name longer than 255 bytes");
    }
    if name.contains(&b'/') {
        return Err("name contains `/`");
    }
    if name.contains(&0) {
        return Err("name contains a NUL byte");
    }
    Ok(())
}

impl RelPath {
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Validates bytes received from the network or built locally.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PathError> {
        let err = |reason| PathError {
            shown: String::from_utf8_lossy(&bytes).into_owned(),
            reason,
        };
        if bytes.len() > MAX_PATH_BYTES {
            return Err(err("longer than 4096 bytes"));
        }
        if bytes.is_empty() {
            return Ok(RelPath(bytes));
        }
        if bytes[0] == b'/' {
            return Err(err("absolute"));
        }
        for comp in bytes.split(|b| *b == b'/') {
            check_name(comp).map_err(err)?;
        }
        Ok(RelPath(bytes))
    }

    /// A path relative to `root` from a local path below it.
    pub fn from_local(root: &Path, path: &Path) -> Option<Self> {
        let rel = path.strip_prefix(root).ok()?;
        RelPath::new(rel.as_os_str().as_bytes().to_vec()).ok()
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// `root` joined with this path.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.is_root() {
            root.to_path_buf()
        } else {
            root.join(self.as_path())
        }
    }

    /// The child `name` of this directory. `name` must be a valid name.
    pub fn join(&self, name: &[u8]) -> RelPath {
        debug_assert!(check_name(name).is_ok());
        if self.0.is_empty() {
            RelPath(name.to_vec())
        } else {
            let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
            v.extend_from_slice(&self.0);
            v.push(b'/');
            v.extend_from_slice(name);
            RelPath(v)
        }
    }

    /// Parent directory and last name; `None` for the root.
    pub fn split(&self) -> Option<(RelPath, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => Some((RelPath(self.0[..i].to_vec()), &self.0[i + 1..])),
            None => Some((RelPath::root(), &self.0[..])),
        }
    }

    pub fn parent(&self) -> Option<RelPath> {
        self.split().map(|(p, _)| p)
    }

    /// True when `self` is `other` or lies below it.
    pub fn is_within(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || (self.0.starts_with(&other.0)
                && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/'))
    }

    /// Number of components (the root has 0).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|b| **b == b'/').count() + 1
        }
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&String::from_utf8_lossy(&self.0))
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Whether a name is one of the receiver's own temporary files.
pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The exclude patterns of a set, compiled. Rules (gitignore-like): a pattern without `/`
/// matches a name at any depth (`*.tmp`); a pattern with a leading or inner `/` is
/// anchored at the root (`/cache`, `logs/old`); a trailing `/` matches directories only.
/// An excluded directory is excluded with everything below it. Excluded entries are never
/// sent, and never deleted on the targets.
#[derive(Clone, Debug)]
pub struct Excludes {
    any: globset::GlobSet,
    dirs_only: globset::GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut any = globset::GlobSetBuilder::new();
        let mut dirs_only = globset::GlobSetBuilder::new();
        for pattern in patterns {
            let (body, dir_only) = match pattern.strip_suffix('/') {
                Some(body) => (body, true),
                None => (pattern.as_str(), false),
            };
            let glob_text = if let Some(anchored) = body.strip_prefix('/') {
                anchored.to_string()
            } else if body.contains('/') {
                body.to_string()
            } else {
                format!("**/{body}")
            };
            let glob = globset::GlobBuilder::new(&glob_text)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("exclude pattern {pattern:?}: {e}"))?;
            if dir_only {
                dirs_only.add(glob);
            } else {
                any.add(glob);
            }
        }
        let build = |b: globset::GlobSetBuilder| b.build().map_err(|e| e.to_string());
        Ok(Excludes {
            any: build(any)?,
            dirs_only: build(dirs_only)?,
        })
    }

    pub fn none() -> Self {
        Excludes::new(&[]).expect("an empty set of patterns compiles")
    }

    /// Whether the entry at `path` is excluded (its ancestors are not consulted: callers
    /// never descend into an excluded directory).
    pub fn is_excluded(&self, path: &RelPath, is_dir: bool) -> bool {
        if path.is_root() {
            return false;
        }
        let p = path.as_path();
        self.any.is_match(p) || (is_dir && self.dirs_only.is_match(p))
    }

    /// Whether `path` or any of its ancestors is excluded (for paths from watch hints).
    pub fn covers(&self, path: &RelPath, is_dir: bool) -> bool {
        let mut current = Some(path.clone());
        let mut dir = is_dir;
        while let Some(p) = current {
            if self.is_excluded(&p, dir) {
                return true;
            }
            current = p.parent();
            dir = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\0b",
            ".",
        ] {
            assert!(
                RelPath::new(bad.as_bytes().to_vec()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(RelPath::new(vec![b'a'; 5000]).is_err());
        assert!(RelPath::new(vec![b'a'; 256]).is_err());
        assert!(RelPath::new(b"caf\xe9/ok".to_vec()).is_ok());
    }

    #[test]
    fn a_hostile_path_does_not_decode() {
        let bytes = postcard::to_allocvec(&serde_bytes::Bytes::new(b"a/../../etc")).unwrap();
        assert!(postcard::from_bytes::<RelPath>(&bytes).is_err());
        let good = postcard::to_allocvec(&rp("a/b")).unwrap();
        assert_eq!(postcard::from_bytes::<RelPath>(&good).unwrap(), rp("a/b"));
    }

    #[test]
    fn split_join_and_within() {
        let p = rp("a/b/c");
        let (parent, name) = p.split().unwrap();
        assert_eq!(parent, rp("a/b"));
        assert_eq!(name, b"c");
        assert_eq!(parent.join(name), p);
        assert_eq!(rp("a").split().unwrap().0, RelPath::root());
        assert!(p.is_within(&rp("a")));
        assert!(p.is_within(&RelPath::root()));
        assert!(!rp("ab/c").is_within(&rp("a")));
        assert_eq!(p.depth(), 3);
    }

    #[test]
    fn exclude_rules_follow_gitignore_habits() {
        let ex = Excludes::new(&[
            "*.tmp".to_string(),
            "/cache".to_string(),
            "logs/".to_string(),
            "a/b".to_string(),
        ])
        .unwrap();
        assert!(ex.is_excluded(&rp("x.tmp"), false));
        assert!(ex.is_excluded(&rp("deep/er/x.tmp"), false));
        assert!(ex.is_excluded(&rp("cache"), true));
        assert!(!ex.is_excluded(&rp("sub/cache"), true));
        assert!(ex.is_excluded(&rp("sub/logs"), true));
        assert!(!ex.is_excluded(&rp("sub/logs"), false));
        assert!(ex.is_excluded(&rp("a/b"), false));
        assert!(!ex.is_excluded(&rp("z/a/b"), false));
        assert!(ex.covers(&rp("cache/x/y"), false));
        assert!(!ex.covers(&rp("keep/y"), false));
    }
}
