//! The watcher's picture of the directory tree: one node per known directory
//! (never per file), each with its watch descriptor, linked to its parent by name.
//! A directory rename is one relink, so every watch below it reports the new path
//! without touching the kernel. Paths are built on demand by walking up to the root.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::PathBuf;

/// Index of an entry (a watched directory or file) in the tree; stable while
/// the entry lives.
pub(crate) type EntryId = u32;

/// The root always has this id.
pub(crate) const ROOT: EntryId = 0;

#[derive(Debug)]
struct Node {
    parent: Option<EntryId>,
    name: Box<OsStr>,
    /// None: this directory is not watched (watch limit, error or duplicate inode);
    /// its subtree is not explored and is reported for periodic rescans instead.
    wd: Option<i32>,
    children: HashMap<Box<OsStr>, EntryId>,
}

#[derive(Debug)]
pub(crate) struct DirTree {
    nodes: Vec<Option<Node>>,
    free: Vec<EntryId>,
    by_wd: HashMap<i32, EntryId>,
    unwatched: HashSet<EntryId>,
    /// Nodes whose path was found not to lead to their directory any more (a
    /// rename not yet processed): their new children wait for the relink.
    stale: HashSet<EntryId>,
}

impl DirTree {
    /// A tree holding only the root, not yet watched.
    pub(crate) fn new() -> DirTree {
        let root = Node {
            parent: None,
            name: OsStr::new("").into(),
            wd: None,
            children: HashMap::new(),
        };
        let mut unwatched = HashSet::new();
        unwatched.insert(ROOT);
        DirTree {
            nodes: vec![Some(root)],
            free: Vec::new(),
            by_wd: HashMap::new(),
            unwatched,
            stale: HashSet::new(),
        }
    }

    fn node(&self, id: EntryId) -> Option<&Node> {
        self.nodes.get(id as usize).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, id: EntryId) -> Option<&mut Node> {
        self.nodes.get_mut(id as usize).and_then(Option::as_mut)
    }

    pub(crate) fn contains(&self, id: EntryId) -> bool {
        self.node(id).is_some()
    }

    pub(crate) fn by_wd(&self, wd: i32) -> Option<EntryId> {
        self.by_wd.get(&wd).copied()
    }

    pub(crate) fn wd(&self, id: EntryId) -> Option<i32> {
        self.node(id).and_then(|n| n.wd)
    }

    pub(crate) fn parent(&self, id: EntryId) -> Option<EntryId> {
        self.node(id).and_then(|n| n.parent)
    }

    pub(crate) fn name(&self, id: EntryId) -> Option<&OsStr> {
        self.node(id).map(|n| &*n.name)
    }

    /// Every watch descriptor held.
    pub(crate) fn wds(&self) -> impl Iterator<Item = i32> + '_ {
        self.by_wd.keys().copied()
    }

    pub(crate) fn child(&self, parent: EntryId, name: &OsStr) -> Option<EntryId> {
        self.node(parent)
            .and_then(|n| n.children.get(name).copied())
    }

    pub(crate) fn watched_count(&self) -> usize {
        self.by_wd.len()
    }

    pub(crate) fn unwatched(&self) -> impl Iterator<Item = EntryId> + '_ {
        self.unwatched.iter().copied()
    }

    pub(crate) fn unwatched_count(&self) -> usize {
        self.unwatched.len()
    }

    pub(crate) fn mark_stale(&mut self, id: EntryId) {
        if self.contains(id) {
            self.stale.insert(id);
        }
    }

    pub(crate) fn clear_stale(&mut self, id: EntryId) {
        self.stale.remove(&id);
    }

    /// Stale nodes at or below `id`.
    pub(crate) fn stale_under(&self, id: EntryId) -> Vec<EntryId> {
        self.stale
            .iter()
            .copied()
            .filter(|&s| self.is_ancestor_or_self(id, s))
            .collect()
    }

    /// Path relative to the root ("" for the root).
    pub(crate) fn path(&self, id: EntryId) -> PathBuf {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        while let Some(node) = self.node(cur) {
            match node.parent {
                Some(p) => {
                    names.push(&node.name);
                    cur = p;
                }
                None => break,
            }
        }
        let mut path = PathBuf::new();
        for name in names.iter().rev() {
            path.push(name);
        }
        path
    }

    /// Whether `ancestor` is `id` or above it.
    pub(crate) fn is_ancestor_or_self(&self, ancestor: EntryId, id: EntryId) -> bool {
        let mut cur = Some(id);
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = self.node(c).and_then(|n| n.parent);
        }
        false
    }

    /// Adds `name` below `parent` (which must exist and have no such child).
    pub(crate) fn insert(&mut self, parent: EntryId, name: &OsStr, wd: Option<i32>) -> EntryId {
        let node = Node {
            parent: Some(parent),
            name: name.into(),
            wd,
            children: HashMap::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                (self.nodes.len() - 1) as EntryId
            }
        };
        if let Some(p) = self.node_mut(parent) {
            p.children.insert(name.into(), id);
        }
        self.index(id, wd);
        id
    }

    fn index(&mut self, id: EntryId, wd: Option<i32>) {
        match wd {
            Some(wd) => {
                self.by_wd.insert(wd, id);
                self.unwatched.remove(&id);
            }
            None => {
                self.unwatched.insert(id);
            }
        }
    }

    /// Gives an unwatched node its watch (or takes a node's watch away).
    pub(crate) fn set_wd(&mut self, id: EntryId, wd: Option<i32>) {
        let Some(node) = self.node_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut node.wd, wd);
        if let Some(old) = old {
            if self.by_wd.get(&old) == Some(&id) {
                self.by_wd.remove(&old);
            }
        }
        self.index(id, wd);
    }

    /// Removes `id` and everything below it; returns the watch descriptors that
    /// were held there (for the caller to release in the kernel).
    /// The root is never removed, only emptied.
    pub(crate) fn remove_subtree(&mut self, id: EntryId) -> Vec<i32> {
        let mut wds = Vec::new();
        if !self.contains(id) {
            return wds;
        }
        if let Some(node) = self.node(id) {
            if let Some(parent) = node.parent {
                let name = node.name.clone();
                if let Some(p) = self.node_mut(parent) {
                    if p.children.get(&name) == Some(&id) {
                        p.children.remove(&name);
                    }
                }
            }
        }
        let mut stack = vec![id];
        while let Some(cur) = stack.pop() {
            let node = if cur == ROOT {
                let Some(root) = self.node_mut(ROOT) else {
                    continue;
                };
                Node {
                    parent: None,
                    name: root.name.clone(),
                    wd: root.wd.take(),
                    children: std::mem::take(&mut root.children),
                }
            } else {
                let Some(node) = self.nodes.get_mut(cur as usize).and_then(Option::take) else {
                    continue;
                };
                self.free.push(cur);
                node
            };
            if let Some(wd) = node.wd {
                if self.by_wd.get(&wd) == Some(&cur) {
                    self.by_wd.remove(&wd);
                }
                wds.push(wd);
            }
            self.stale.remove(&cur);
            if cur == ROOT {
                self.unwatched.insert(ROOT);
            } else {
                self.unwatched.remove(&cur);
            }
            stack.extend(node.children.values().copied());
        }
        wds
    }

    /// Moves `id` (with its subtree) to `name` below `new_parent`. Whatever was at
    /// the destination is removed first; its watch descriptors are returned.
    /// Refuses (returns None) to move a node below itself or to move the root.
    pub(crate) fn relink(
        &mut self,
        id: EntryId,
        new_parent: EntryId,
        name: &OsStr,
    ) -> Option<Vec<i32>> {
        if id == ROOT || self.is_ancestor_or_self(id, new_parent) || !self.contains(new_parent) {
            return None;
        }
        let mut replaced = Vec::new();
        if let Some(existing) = self.child(new_parent, name) {
            if existing != id {
                replaced = self.remove_subtree(existing);
            }
        }
        let node = self.node(id)?;
        let old_parent = node.parent?;
        let old_name = node.name.clone();
        if let Some(p) = self.node_mut(old_parent) {
            if p.children.get(&old_name) == Some(&id) {
                p.children.remove(&old_name);
            }
        }
        if let Some(node) = self.node_mut(id) {
            node.parent = Some(new_parent);
            node.name = name.into();
        }
        if let Some(p) = self.node_mut(new_parent) {
            p.children.insert(name.into(), id);
        }
        Some(replaced)
    }
}

#[cfg(test)]
impl DirTree {
    /// Every node as (path, watch descriptor), for checks against a model.
    pub(crate) fn snapshot(&self) -> Vec<(PathBuf, Option<i32>)> {
        (0..self.nodes.len() as EntryId)
            .filter(|&id| self.contains(id))
            .map(|id| (self.path(id), self.wd(id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn paths_follow_relinks_of_ancestors() {
        let mut t = DirTree::new();
        t.set_wd(ROOT, Some(1));
        let a = t.insert(ROOT, OsStr::new("a"), Some(2));
        let b = t.insert(a, OsStr::new("b"), Some(3));
        let c = t.insert(b, OsStr::new("c"), None);
        assert_eq!(t.path(c), Path::new("a/b/c"));
        assert_eq!(t.path(ROOT), Path::new(""));
        let x = t.insert(ROOT, OsStr::new("x"), Some(4));
        assert_eq!(t.relink(a, x, OsStr::new("renamed")), Some(vec![]));
        assert_eq!(t.path(c), Path::new("x/renamed/b/c"));
        assert_eq!(t.by_wd(3), Some(b));
        assert_eq!(t.child(ROOT, OsStr::new("a")), None);
        assert_eq!(t.unwatched().collect::<Vec<_>>(), vec![c]);
    }

    #[test]
    fn relink_over_an_existing_dir_removes_it_and_refuses_cycles() {
        let mut t = DirTree::new();
        t.set_wd(ROOT, Some(1));
        let a = t.insert(ROOT, OsStr::new("a"), Some(2));
        let b = t.insert(ROOT, OsStr::new("b"), Some(3));
        let b1 = t.insert(b, OsStr::new("b1"), Some(5));
        assert_eq!(t.relink(a, ROOT, OsStr::new("b")), Some(vec![3, 5]));
        assert!(!t.contains(b1));
        assert_eq!(t.by_wd(5), None);
        assert_eq!(t.child(ROOT, OsStr::new("b")), Some(a));
        let inner = t.insert(a, OsStr::new("in"), Some(6));
        assert_eq!(t.relink(a, inner, OsStr::new("loop")), None);
        assert_eq!(t.relink(ROOT, a, OsStr::new("r")), None);
        assert_eq!(t.watched_count(), 3);
    }

    #[test]
    fn removing_the_root_empties_it_and_reuses_slots() {
        let mut t = DirTree::new();
        t.set_wd(ROOT, Some(1));
        let a = t.insert(ROOT, OsStr::new("a"), Some(2));
        t.insert(a, OsStr::new("u"), None);
        let mut wds = t.remove_subtree(ROOT);
        wds.sort();
        assert_eq!(wds, vec![1, 2]);
        assert!(t.contains(ROOT));
        assert_eq!(t.watched_count(), 0);
        assert_eq!(t.unwatched().collect::<Vec<_>>(), vec![ROOT]);
        let again = t.insert(ROOT, OsStr::new("z"), Some(9));
        assert!(again == 1 || again == 2, "freed slot reused, got {again}");
    }
}
