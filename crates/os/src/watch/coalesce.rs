//! Shrinking one batch of hints before it is sent: a burst of writes to one file
//! yields dozens of identical `Changed`, which cost the consumer a lookup each.
//!
//! A `Renamed` is a barrier: merging a `Changed(a)` from before `Renamed{a -> b}`
//! with one after it would move the first change to after the rename, and the
//! consumer would then rename stale content to `b`. So duplicates are dropped only
//! between barriers, keeping the first of each. Within such a run a `Rescan("")`
//! covers everything else in it.

use super::Hint;
use std::collections::HashSet;
use std::path::Path;

pub(crate) fn coalesce(hints: &mut Vec<Hint>) {
    if hints.len() < 2 {
        return;
    }
    let input = std::mem::take(hints);
    let mut run: Vec<Hint> = Vec::new();
    for hint in input {
        if matches!(hint, Hint::Renamed { .. }) {
            flush(&mut run, hints);
            hints.push(hint);
        } else {
            run.push(hint);
        }
    }
    flush(&mut run, hints);
}

fn flush(run: &mut Vec<Hint>, out: &mut Vec<Hint>) {
    let root = Hint::Rescan(Path::new("").to_path_buf());
    if run.contains(&root) {
        out.push(root);
        if run.contains(&Hint::RootGone) {
            out.push(Hint::RootGone);
        }
        run.clear();
        return;
    }
    let mut seen: HashSet<Hint> = HashSet::with_capacity(run.len());
    for hint in run.drain(..) {
        if !seen.contains(&hint) {
            seen.insert(hint.clone());
            out.push(hint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn changed(p: &str) -> Hint {
        Hint::Changed(PathBuf::from(p))
    }

    fn renamed(a: &str, b: &str) -> Hint {
        Hint::Renamed {
            from: a.into(),
            to: b.into(),
            is_dir: false,
        }
    }

    #[test]
    fn duplicates_between_renames_collapse_to_the_first() {
        let mut h = vec![changed("a"), changed("b"), changed("a"), changed("a")];
        coalesce(&mut h);
        assert_eq!(h, vec![changed("a"), changed("b")]);
    }

    #[test]
    fn a_rename_keeps_changes_on_both_sides() {
        let mut h = vec![changed("a"), renamed("a", "b"), changed("a"), changed("a")];
        coalesce(&mut h);
        assert_eq!(h, vec![changed("a"), renamed("a", "b"), changed("a")]);
    }

    #[test]
    fn a_root_rescan_covers_its_run_only() {
        let mut h = vec![
            changed("x"),
            Hint::Rescan(PathBuf::new()),
            changed("y"),
            renamed("p", "q"),
            changed("z"),
            Hint::RootGone,
        ];
        coalesce(&mut h);
        assert_eq!(
            h,
            vec![
                Hint::Rescan(PathBuf::new()),
                renamed("p", "q"),
                changed("z"),
                Hint::RootGone
            ]
        );
    }
}
