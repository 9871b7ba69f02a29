//! In which order the operations of one Apply request are carried out, decided
//! without a file system: consecutive file writes go to temporary names together
//! (several threads may write them), and what they wrote is renamed into place
//! only once it is as durable as the set's fsync policy asks. Under the batch
//! policy one `syncfs` covers every staged file, and it runs before any later
//! operation that could make a staged file matter (a rename, a delete, a
//! symlink) and at the end; creating a directory or changing attributes does
//! not wait for it. The receiver (`apply.rs`) carries the plan out.

// Decides only: no clock, disk, socket or thread (clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::protocol::FileOp;
use std::ops::Range;
use uphold_config::sync::FsyncPolicy;

/// What the plan needs to know of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    /// A whole small file to write.
    Put,
    /// An operation that never depends on a staged file being in place.
    Independent,
    /// A rename, delete or symlink: staged files are published first.
    Ordered,
}

impl OpKind {
    pub(super) fn of(op: &FileOp) -> OpKind {
        match op {
            FileOp::Put { .. } => OpKind::Put,
            FileOp::Mkdir { .. } | FileOp::SetMeta { .. } => OpKind::Independent,
            FileOp::Symlink { .. } | FileOp::Rename { .. } | FileOp::Delete { .. } => {
                OpKind::Ordered
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Write the puts `ops[range]` under temporary names; they are staged.
    Write(Range<usize>),
    /// Make every staged file durable at once (`syncfs`).
    Flush,
    /// Rename every staged file into place (each fsynced first under the file
    /// policy).
    Publish,
    /// Carry out `ops[i]`, which is not a put.
    Apply(usize),
}

pub(super) fn plan(kinds: &[OpKind], policy: FsyncPolicy) -> Vec<Step> {
    let batch = policy == FsyncPolicy::Batch;
    let mut steps = Vec::new();
    let mut run_start: Option<usize> = None;
    let mut staged = false;
    for (i, kind) in kinds.iter().enumerate() {
        if *kind == OpKind::Put {
            run_start.get_or_insert(i);
            continue;
        }
        staged |= end_run(&mut steps, run_start.take(), i, batch);
        if *kind == OpKind::Ordered && std::mem::take(&mut staged) {
            steps.extend([Step::Flush, Step::Publish]);
        }
        steps.push(Step::Apply(i));
    }
    staged |= end_run(&mut steps, run_start.take(), kinds.len(), batch);
    if staged {
        steps.extend([Step::Flush, Step::Publish]);
    }
    steps
}

/// Writes the run of puts from `start` to `end`, if any; publishes it at once
/// unless the policy batches. Returns whether it left files staged.
fn end_run(steps: &mut Vec<Step>, start: Option<usize>, end: usize, batch: bool) -> bool {
    let Some(start) = start else {
        return false;
    };
    steps.push(Step::Write(start..end));
    if !batch {
        steps.push(Step::Publish);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::OpKind::{Independent, Ordered, Put};
    use super::Step::{Apply, Flush, Publish, Write};
    use super::*;

    #[test]
    fn batch_writes_runs_together_and_flushes_once_before_anything_ordered() {
        let kinds = [Put, Put, Independent, Put, Ordered, Put, Independent];
        assert_eq!(
            plan(&kinds, FsyncPolicy::Batch),
            vec![
                Write(0..2),
                Apply(2),
                Write(3..4),
                Flush,
                Publish,
                Apply(4),
                Write(5..6),
                Apply(6),
                Flush,
                Publish,
            ]
        );
    }

    #[test]
    fn without_batching_every_run_is_published_as_soon_as_it_is_written() {
        let kinds = [Put, Put, Ordered, Put, Independent];
        let want = vec![
            Write(0..2),
            Publish,
            Apply(2),
            Write(3..4),
            Publish,
            Apply(4),
        ];
        assert_eq!(plan(&kinds, FsyncPolicy::File), want);
        assert_eq!(plan(&kinds, FsyncPolicy::Off), want);
    }

    #[test]
    fn nothing_staged_means_no_flush() {
        assert_eq!(
            plan(&[Ordered, Independent], FsyncPolicy::Batch),
            vec![Apply(0), Apply(1)]
        );
        assert_eq!(plan(&[], FsyncPolicy::Batch), Vec::<Step>::new());
        assert_eq!(
            plan(&[Put], FsyncPolicy::Batch),
            vec![Write(0..1), Flush, Publish]
        );
    }
}
