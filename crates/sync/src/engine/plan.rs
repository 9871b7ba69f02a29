//! What to do about one directory, given what the source and the target hold: a pure
//! function from two listings to operations. Creations and updates come out in name
//! order; deletions are returned separately so the sender can run them after every
//! creation of the batch (a file moved between directories is never missing on the
//! target in between). An entry whose kind changed is removed first, as it must be.

use crate::entry::{Entry, Kind};
use crate::path::RelPath;
use crate::protocol::FileOp;

#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Owner and group are compared (the receiver runs as root).
    pub with_owner: bool,
    /// Entries missing on the source are deleted on the target.
    pub delete: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A change without file data.
    Op(FileOp),
    /// A file whose data must be sent; `basis` is the size of the target's current
    /// version when there is one to delta against.
    Transfer {
        path: RelPath,
        entry: Entry,
        basis: Option<u64>,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirPlan {
    pub steps: Vec<Step>,
    pub deletes: Vec<RelPath>,
    /// Directories created on the target by this plan; everything below them is new too.
    pub new_dirs: Vec<RelPath>,
}

impl DirPlan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.deletes.is_empty()
    }
}

/// Plans one entry of `dir`.
pub fn plan_entry(
    path: RelPath,
    source: Option<&Entry>,
    target: Option<&Entry>,
    opts: PlanOptions,
    out: &mut DirPlan,
) {
    match (source, target) {
        (None, None) => {}
        (None, Some(_)) => {
            if opts.delete {
                out.deletes.push(path);
            }
        }
        (Some(s), None) => create(path, s, out),
        (Some(s), Some(t)) if s.kind != t.kind => {
            out.steps
                .push(Step::Op(FileOp::Delete { path: path.clone() }));
            create(path, s, out);
        }
        (Some(s), Some(t)) => match s.kind {
            Kind::File if !s.same_content(t) => out.steps.push(Step::Transfer {
                path,
                entry: s.clone(),
                basis: Some(t.size),
            }),
            Kind::Symlink if !s.same_content(t) => out.steps.push(Step::Op(FileOp::Symlink {
                path,
                target: s.link.clone().unwrap_or_default(),
                meta: s.meta(),
            })),
            _ if !s.same_meta(t, opts.with_owner) => out.steps.push(Step::Op(FileOp::SetMeta {
                path,
                kind: s.kind,
                meta: s.meta(),
            })),
            _ => {}
        },
    }
}

fn create(path: RelPath, s: &Entry, out: &mut DirPlan) {
    match s.kind {
        Kind::Dir => {
            out.steps.push(Step::Op(FileOp::Mkdir {
                path: path.clone(),
                meta: s.meta(),
            }));
            out.new_dirs.push(path);
        }
        Kind::File => out.steps.push(Step::Transfer {
            path,
            entry: s.clone(),
            basis: None,
        }),
        Kind::Symlink => out.steps.push(Step::Op(FileOp::Symlink {
            path,
            target: s.link.clone().unwrap_or_default(),
            meta: s.meta(),
        })),
    }
}

/// Plans a whole directory from two listings sorted by name (`target` is `None` when
/// the directory does not exist there).
pub fn plan_dir(
    dir: &RelPath,
    source: &[Entry],
    target: Option<&[Entry]>,
    opts: PlanOptions,
) -> DirPlan {
    let mut out = DirPlan::default();
    let target = target.unwrap_or(&[]);
    let (mut i, mut j) = (0, 0);
    while i < source.len() || j < target.len() {
        let order = match (source.get(i), target.get(j)) {
            (Some(s), Some(t)) => s.name.cmp(&t.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                plan_entry(
                    dir.join(&source[i].name),
                    Some(&source[i]),
                    None,
                    opts,
                    &mut out,
                );
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                plan_entry(
                    dir.join(&target[j].name),
                    None,
                    Some(&target[j]),
                    opts,
                    &mut out,
                );
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                plan_entry(
                    dir.join(&source[i].name),
                    Some(&source[i]),
                    Some(&target[j]),
                    opts,
                    &mut out,
                );
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, mtime: i64) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: Kind::File,
            size,
            mtime_s: mtime,
            mtime_ns: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            link: None,
        }
    }

    fn dir(name: &str) -> Entry {
        Entry {
            kind: Kind::Dir,
            size: 0,
            mode: 0o755,
            ..file(name, 0, 0)
        }
    }

    const OPTS: PlanOptions = PlanOptions {
        with_owner: false,
        delete: true,
    };

    #[test]
    fn identical_listings_need_nothing() {
        let l = vec![dir("a"), file("b", 3, 1)];
        assert!(plan_dir(&RelPath::root(), &l, Some(&l), OPTS).is_empty());
    }

    #[test]
    fn creates_updates_meta_and_deletes_are_told_apart() {
        let src = vec![
            file("changed", 4, 2),
            file("chmod", 1, 1),
            dir("new"),
            file("same", 1, 1),
        ];
        let mut chmod = file("chmod", 1, 1);
        chmod.mode = 0o600;
        let tgt = vec![
            file("changed", 4, 1),
            chmod,
            file("gone", 1, 1),
            file("same", 1, 1),
        ];
        let plan = plan_dir(&RelPath::root(), &src, Some(&tgt), OPTS);
        assert_eq!(plan.deletes, vec![RelPath::new(b"gone".to_vec()).unwrap()]);
        assert_eq!(plan.new_dirs.len(), 1);
        assert!(matches!(
            &plan.steps[0],
            Step::Transfer { basis: Some(4), .. }
        ));
        assert!(plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Op(FileOp::SetMeta { .. }))));
        assert!(plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Op(FileOp::Mkdir { .. }))));
        assert_eq!(plan.steps.len(), 3);
        let keep = plan_dir(
            &RelPath::root(),
            &src,
            Some(&tgt),
            PlanOptions {
                delete: false,
                ..OPTS
            },
        );
        assert!(keep.deletes.is_empty());
    }

    #[test]
    fn a_kind_change_deletes_before_creating() {
        let src = vec![file("x", 1, 1)];
        let tgt = vec![dir("x")];
        let plan = plan_dir(&RelPath::root(), &src, Some(&tgt), OPTS);
        assert!(matches!(&plan.steps[0], Step::Op(FileOp::Delete { .. })));
        assert!(matches!(&plan.steps[1], Step::Transfer { basis: None, .. }));
    }
}
