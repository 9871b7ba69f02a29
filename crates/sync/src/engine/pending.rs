//! The set of places that may differ between source and a target, built from watch hints.
//! Memory stays bounded however many events arrive: past a number of names in one
//! directory the whole directory is compared instead, and past a total the whole tree
//! (the escalation Syncthing's watch aggregator uses). Comparing more than changed is
//! always correct; it only costs time.

use crate::path::RelPath;
use std::collections::{BTreeMap, BTreeSet};

/// Names of one directory tracked one by one before the whole directory is compared.
pub const MAX_NAMES_PER_DIR: usize = 64;
/// Directories and subtrees tracked before the whole tree is compared.
pub const MAX_PLACES: usize = 20_000;
/// Renames kept as renames; beyond this they are compared like any change.
pub const MAX_RENAMES: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirScope {
    /// Compare the whole listing.
    All,
    /// Only these names.
    Names(BTreeSet<Vec<u8>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rename {
    pub from: RelPath,
    pub to: RelPath,
    pub is_dir: bool,
}

/// What a batch must look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Directories compared without descending.
    pub dirs: BTreeMap<RelPath, DirScope>,
    /// Directories compared with everything below them.
    pub subtrees: BTreeSet<RelPath>,
    /// Renames seen on the source, tried on the target before comparing.
    pub renames: Vec<Rename>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.subtrees.is_empty() && self.renames.is_empty()
    }

    /// Places tracked (for status: "queued").
    pub fn len(&self) -> usize {
        self.dirs
            .values()
            .map(|s| match s {
                DirScope::All => 1,
                DirScope::Names(n) => n.len(),
            })
            .sum::<usize>()
            + self.subtrees.len()
            + self.renames.len()
    }

    /// Whole tree, as at start-up.
    pub fn everything() -> Pending {
        let mut p = Pending::default();
        p.subtrees.insert(RelPath::root());
        p
    }

    fn in_subtree(&self, path: &RelPath) -> bool {
        let mut current = Some(path.clone());
        while let Some(p) = current {
            if self.subtrees.contains(&p) {
                return true;
            }
            current = p.parent();
        }
        false
    }

    /// The entry at `path` (file or directory) may have changed or disappeared.
    pub fn add_changed(&mut self, path: &RelPath) {
        let Some((dir, name)) = path.split() else {
            // The root itself: its attributes are not replicated; its entries are.
            self.add_dir(&RelPath::root());
            return;
        };
        if self.in_subtree(path) {
            return;
        }
        let scope = self
            .dirs
            .entry(dir)
            .or_insert_with(|| DirScope::Names(BTreeSet::new()));
        if let DirScope::Names(names) = scope {
            names.insert(name.to_vec());
            if names.len() > MAX_NAMES_PER_DIR {
                *scope = DirScope::All;
            }
        }
        self.bound();
    }

    /// The whole listing of `dir` must be compared (not below it).
    pub fn add_dir(&mut self, dir: &RelPath) {
        if self.in_subtree(dir) {
            return;
        }
        self.dirs.insert(dir.clone(), DirScope::All);
        self.bound();
    }

    /// Anything at or below `dir` may have changed.
    pub fn add_subtree(&mut self, dir: &RelPath) {
        if self.in_subtree(dir) {
            return;
        }
        self.subtrees.retain(|s| !s.is_within(dir));
        self.dirs.retain(|d, _| !d.is_within(dir));
        // The entry for `dir` itself lives in its parent's listing.
        if let Some(parent) = dir.parent() {
            if let Some((_, name)) = dir.split() {
                let name = name.to_vec();
                if !self.in_subtree(&parent) {
                    let scope = self
                        .dirs
                        .entry(parent)
                        .or_insert_with(|| DirScope::Names(BTreeSet::new()));
                    if let DirScope::Names(names) = scope {
                        names.insert(name);
                        if names.len() > MAX_NAMES_PER_DIR {
                            *scope = DirScope::All;
                        }
                    }
                }
            }
        }
        self.subtrees.insert(dir.clone());
        self.bound();
    }

    pub fn add_rename(&mut self, from: &RelPath, to: &RelPath, is_dir: bool) {
        if self.renames.len() >= MAX_RENAMES {
            self.add_changed(from);
            if is_dir {
                self.add_subtree(to);
            } else {
                self.add_changed(to);
            }
            return;
        }
        self.renames.push(Rename {
            from: from.clone(),
            to: to.clone(),
            is_dir,
        });
    }

    /// Adds everything of `other` (a failed batch coming back, or retries).
    pub fn merge(&mut self, other: Pending) {
        for s in &other.subtrees {
            self.add_subtree(s);
        }
        for (dir, scope) in other.dirs {
            match scope {
                DirScope::All => self.add_dir(&dir),
                DirScope::Names(names) => {
                    for n in names {
                        self.add_changed(&dir.join(&n));
                    }
                }
            }
        }
        for r in other.renames {
            self.add_rename(&r.from, &r.to, r.is_dir);
        }
    }

    fn bound(&mut self) {
        if self.dirs.len() + self.subtrees.len() > MAX_PLACES {
            self.dirs.clear();
            self.subtrees.clear();
            self.subtrees.insert(RelPath::root());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn names_escalate_to_the_directory_and_subtrees_absorb_everything_below() {
        let mut p = Pending::default();
        for i in 0..=MAX_NAMES_PER_DIR {
            p.add_changed(&rp(&format!("d/f{i}")));
        }
        assert_eq!(p.dirs.get(&rp("d")), Some(&DirScope::All));
        p.add_changed(&rp("d/sub/x"));
        p.add_subtree(&rp("d"));
        assert!(p.dirs.keys().all(|d| !d.is_within(&rp("d"))));
        assert!(p.subtrees.contains(&rp("d")));
        // Its own entry is looked at in the parent.
        assert!(
            matches!(p.dirs.get(&RelPath::root()), Some(DirScope::Names(n)) if n.contains(&b"d".to_vec()))
        );
        p.add_changed(&rp("d/deeper/y"));
        assert!(!p.dirs.contains_key(&rp("d/deeper")));
    }

    #[test]
    fn too_many_places_become_the_whole_tree() {
        let mut p = Pending::default();
        for i in 0..=MAX_PLACES {
            p.add_changed(&rp(&format!("d{i}/f")));
        }
        assert_eq!(p, Pending::everything());
    }

    #[test]
    fn merge_keeps_everything() {
        let mut a = Pending::default();
        a.add_changed(&rp("x/1"));
        let mut b = Pending::default();
        b.add_changed(&rp("x/2"));
        b.add_subtree(&rp("y"));
        b.add_rename(&rp("p"), &rp("q"), false);
        a.merge(b);
        assert!(matches!(a.dirs.get(&rp("x")), Some(DirScope::Names(n)) if n.len() == 2));
        assert!(a.subtrees.contains(&rp("y")));
        assert_eq!(a.renames.len(), 1);
    }
}
