//! The safety halt: when a source looks unmounted, nothing is changed on the
//! target. lsyncd and rsync `--delete` empty a mirror when the source disk is
//! missing; these rules stop the batch instead, keeping every change for later.

use crate::entry::Entry;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a batch was halted: the source root, and what was seen of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Halt {
    pub source: PathBuf,
    pub kind: HaltKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaltKind {
    /// The root is missing or not a directory when the batch begins.
    Missing,
    /// The root disappeared while the batch was listing it.
    Disappeared,
    /// The root is empty while the target holds `target_entries`, and the set
    /// deletes: sending would empty the mirror.
    EmptyWhileTargetFull { target_entries: usize },
    /// The root became empty just before the batch's deletions at the top level.
    BecameEmpty,
}

impl fmt::Display for Halt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self.source.display();
        match self.kind {
            HaltKind::Missing => write!(
                f,
                "source {source} is missing or not a directory (not mounted?); nothing is changed on the target until it is back"
            ),
            HaltKind::Disappeared => write!(
                f,
                "source {source} disappeared; nothing is changed on the target until it is back"
            ),
            HaltKind::EmptyWhileTargetFull { target_entries } => write!(
                f,
                "source {source} is empty but the target holds {target_entries} entries (an unmounted disk?); nothing is deleted until the source has content again"
            ),
            HaltKind::BecameEmpty => write!(
                f,
                "source {source} became empty; refusing to delete everything on the target (an unmounted disk?)"
            ),
        }
    }
}

/// What is known of the source root when a batch starts.
pub fn at_start(source: &Path, root_is_dir: bool) -> Result<(), Halt> {
    if root_is_dir {
        Ok(())
    } else {
        Err(Halt {
            source: source.to_path_buf(),
            kind: HaltKind::Missing,
        })
    }
}

/// The root's listing (None: it is gone) against the target's, before anything
/// of the root is planned.
pub fn at_root_listing(
    source: &Path,
    listing: Option<&[Entry]>,
    target: Option<&[Entry]>,
    deletes: bool,
) -> Result<(), Halt> {
    let kind = match (listing, target) {
        (None, _) => HaltKind::Disappeared,
        (Some([]), Some(target)) if deletes && !target.is_empty() => {
            HaltKind::EmptyWhileTargetFull {
                target_entries: target.len(),
            }
        }
        _ => return Ok(()),
    };
    Err(Halt {
        source: source.to_path_buf(),
        kind,
    })
}

/// Deletions at the top level are sent only while the root still has content.
pub fn before_root_deletes(source: &Path, listing: Option<&[Entry]>) -> Result<(), Halt> {
    match listing {
        Some(entries) if !entries.is_empty() => Ok(()),
        _ => Err(Halt {
            source: source.to_path_buf(),
            kind: HaltKind::BecameEmpty,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Kind;

    fn file(name: &str) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: Kind::File,
            size: 1,
            mtime_s: 0,
            mtime_ns: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            link: None,
        }
    }

    fn root() -> PathBuf {
        PathBuf::from("/srv/www")
    }

    #[test]
    fn a_missing_root_halts_before_anything_is_compared() {
        assert_eq!(at_start(&root(), true), Ok(()));
        assert_eq!(
            at_start(&root(), false),
            Err(Halt {
                source: root(),
                kind: HaltKind::Missing
            })
        );
    }

    #[test]
    fn an_empty_root_halts_only_when_it_would_empty_a_full_mirror() {
        let target = vec![file("a"), file("b")];
        assert_eq!(
            at_root_listing(&root(), Some(&[]), Some(&target), true),
            Err(Halt {
                source: root(),
                kind: HaltKind::EmptyWhileTargetFull { target_entries: 2 }
            })
        );
        // Without deletion nothing on the target is at risk.
        assert_eq!(
            at_root_listing(&root(), Some(&[]), Some(&target), false),
            Ok(())
        );
        // An empty mirror of an empty source, or a digest that matched.
        assert_eq!(at_root_listing(&root(), Some(&[]), Some(&[]), true), Ok(()));
        assert_eq!(at_root_listing(&root(), Some(&[]), None, true), Ok(()));
        assert_eq!(
            at_root_listing(&root(), None, None, true),
            Err(Halt {
                source: root(),
                kind: HaltKind::Disappeared
            })
        );
    }

    #[test]
    fn root_deletes_wait_for_a_root_with_content() {
        assert_eq!(before_root_deletes(&root(), Some(&[file("a")])), Ok(()));
        for gone in [None, Some(&[][..])] {
            assert_eq!(
                before_root_deletes(&root(), gone),
                Err(Halt {
                    source: root(),
                    kind: HaltKind::BecameEmpty
                })
            );
        }
    }
}
