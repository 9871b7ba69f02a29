//! Tests of the log store's writer thread: appends are readable before their
//! fsync and acknowledged after it, queued writes share one transaction and keep
//! their order, a failed commit fails everything after it, and dropping the last
//! clone closes the file so it can be opened again.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::poll;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::{AppendObserver, Flushed, LogStore, WriterHooks, LOG_FILE};
use crate::engine::state::Command;
use crate::raft::types::{Entry, LogId, Vote};

/// How long a test waits for something that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

const ME: u64 = 7;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, ME), index)
}

fn command(index: u64) -> Command {
    Command::Join {
        node: ME,
        incarnation: index,
    }
}

fn entries(term: u64, indexes: RangeInclusive<u64>) -> Vec<Entry> {
    indexes
        .map(|i| Entry {
            log_id: log_id(term, i),
            payload: EntryPayload::Normal(command(i)),
        })
        .collect()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

/// An observer that forwards every command it is given.
fn observer() -> (AppendObserver, mpsc::UnboundedReceiver<Command>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let observer: AppendObserver = Arc::new(move |c: &Command| {
        let _ = tx.send(c.clone());
    });
    (observer, rx)
}

fn quiet() -> AppendObserver {
    Arc::new(|_: &Command| {})
}

/// A durability report a test can wait for.
fn flushed() -> (Flushed, oneshot::Receiver<Result<(), String>>) {
    let (tx, rx) = oneshot::channel();
    let done: Flushed = Box::new(move |result| {
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    (done, rx)
}

async fn wait_flushed(rx: oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
    timeout(WAIT, rx)
        .await
        .expect("the append was never reported")
        .expect("the report was dropped")
}

async fn next_observed(rx: &mut mpsc::UnboundedReceiver<Command>) -> Command {
    timeout(WAIT, rx.recv())
        .await
        .expect("the observer was not called")
        .expect("the observer was dropped")
}

/// Everything the observer was given, once the store that called it is gone.
fn observed_after_close(mut rx: mpsc::UnboundedReceiver<Command>) -> Vec<Command> {
    let mut seen = Vec::new();
    while let Ok(c) = rx.try_recv() {
        seen.push(c);
    }
    seen
}

struct Held {
    _dir: TempDir,
    path: PathBuf,
    hooks: Arc<WriterHooks>,
    log: LogStore,
    seen: mpsc::UnboundedReceiver<Command>,
}

fn open_held() -> Held {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let hooks = Arc::new(WriterHooks::default());
    let (observer, seen) = observer();
    let log = LogStore::open_with_hooks(&path, ME, observer, hooks.clone()).unwrap();
    Held {
        _dir: dir,
        path,
        hooks,
        log,
        seen,
    }
}

fn reopen(path: &Path) -> LogStore {
    LogStore::open(path, ME, quiet()).expect("reopening right after the last clone is dropped")
}

#[tokio::test]
async fn append_is_readable_at_once_and_reported_only_after_its_commit() {
    let Held {
        _dir,
        hooks,
        mut log,
        mut seen,
        ..
    } = open_held();
    hooks.hold();

    let (done, mut report) = flushed();
    timeout(WAIT, log.append_with(entries(1, 1..=3), done))
        .await
        .expect("append waited for the disk")
        .unwrap();
    hooks.wait_until_writer_held();

    // Readable through a reader, as openraft's replication tasks read.
    let mut reader = log.get_log_reader().await;
    let read = reader.try_get_log_entries(1..=3).await.unwrap();
    assert_eq!(indexes(&read), [1, 2, 3]);
    assert_eq!(read[2].payload, EntryPayload::Normal(command(3)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    // Not durable yet: neither openraft nor the observer has heard of it.
    assert!(matches!(
        report.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert!(seen.try_recv().is_err());
    assert_eq!(hooks.commits(), 0);

    // Through openraft's own entry point: `append` is done (the entry is
    // readable) while the wait for its callback is still pending.
    {
        let mut appending = pin!(log.blocking_append(entries(1, 4..=4)));
        assert!(poll!(appending.as_mut()).is_pending());
        let read = reader.try_get_log_entries(4..).await.unwrap();
        assert_eq!(indexes(&read), [4]);

        hooks.release();
        timeout(WAIT, appending)
            .await
            .expect("blocking_append never finished")
            .unwrap();
    }
    assert_eq!(wait_flushed(report).await, Ok(()));
    for i in 1..=4 {
        assert_eq!(next_observed(&mut seen).await, command(i));
    }
}

#[tokio::test]
async fn writes_queued_behind_a_stalled_commit_share_one_transaction_in_order() {
    let Held {
        _dir,
        path,
        hooks,
        mut log,
        seen,
    } = open_held();
    hooks.hold();

    let (done, first) = flushed();
    log.append_with(entries(1, 1..=3), done).await.unwrap();
    hooks.wait_until_writer_held();

    // All of this queues behind the held batch, and none of it waits for it.
    let mut reports = vec![first];
    for i in 4..=9 {
        let (done, report) = flushed();
        log.append_with(entries(1, i..=i), done).await.unwrap();
        reports.push(report);
    }
    log.save_committed(Some(log_id(1, 5))).await.unwrap();
    log.truncate(log_id(1, 8)).await.unwrap();
    log.purge(log_id(1, 2)).await.unwrap();
    let vote = Vote::new(2, ME);
    let mut voter = log.clone();
    {
        let mut voting = pin!(voter.save_vote(&vote));
        assert!(
            poll!(voting.as_mut()).is_pending(),
            "save_vote returned before its commit"
        );

        // Reads already follow every change, in call order.
        let mut reader = log.get_log_reader().await;
        let read = reader.try_get_log_entries(..).await.unwrap();
        assert_eq!(indexes(&read), [3, 4, 5, 6, 7]);
        assert!(reader.try_get_log_entries(8..).await.unwrap().is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 7)));
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 5)));
        assert_eq!(hooks.commits(), 0);

        hooks.release();
        timeout(WAIT, voting)
            .await
            .expect("save_vote never finished")
            .unwrap();
    }
    for report in reports {
        assert_eq!(wait_flushed(report).await, Ok(()));
    }
    assert_eq!(hooks.commits(), 1, "queued writes need one commit");

    drop(voter);
    drop(log);
    // Entries 8 and 9 were truncated in the transaction that wrote them, so they
    // were never durable and the observer is not told of them.
    assert_eq!(
        observed_after_close(seen),
        (1..=7).map(command).collect::<Vec<_>>()
    );

    let mut log = reopen(&path);
    let mut reader = log.get_log_reader().await;
    let read = reader.try_get_log_entries(..).await.unwrap();
    assert_eq!(indexes(&read), [3, 4, 5, 6, 7]);
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 5)));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
}

#[tokio::test]
async fn dropping_the_last_clone_writes_what_is_queued_and_closes_the_file() {
    let Held {
        _dir,
        path,
        hooks,
        mut log,
        ..
    } = open_held();
    let liveness = log.liveness();
    let other = log.clone();
    hooks.hold();

    let (done, report) = flushed();
    log.append_with(entries(1, 1..=3), done).await.unwrap();
    hooks.wait_until_writer_held();
    log.save_committed(Some(log_id(1, 3))).await.unwrap();

    drop(log);
    assert!(!liveness.is_closed(), "a clone is still alive");
    hooks.release();
    drop(other);
    assert!(liveness.is_closed());
    assert_eq!(wait_flushed(report).await, Ok(()));

    let mut log = reopen(&path);
    let mut reader = log.get_log_reader().await;
    let read = reader.try_get_log_entries(..).await.unwrap();
    assert_eq!(indexes(&read), [1, 2, 3]);
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 3)));
    drop(reader);
    let liveness = log.liveness();
    drop(log);
    assert!(liveness.is_closed());
    drop(reopen(&path));
}

#[tokio::test]
async fn a_failed_commit_fails_its_whole_batch_and_every_later_write() {
    let Held {
        _dir,
        path,
        hooks,
        mut log,
        seen,
    } = open_held();
    hooks.fail_commits(true);
    hooks.hold();

    let (done, first) = flushed();
    log.append_with(entries(1, 1..=2), done).await.unwrap();
    hooks.wait_until_writer_held();
    let (done, second) = flushed();
    log.append_with(entries(1, 3..=3), done).await.unwrap();
    let vote = Vote::new(1, ME);
    let mut voter = log.clone();
    {
        let mut voting = pin!(voter.save_vote(&vote));
        assert!(poll!(voting.as_mut()).is_pending());
        hooks.release();
        let voted = timeout(WAIT, voting)
            .await
            .expect("save_vote never finished");
        assert!(
            voted.is_err(),
            "a vote in a failed batch was reported saved"
        );
    }
    assert!(wait_flushed(first).await.is_err());
    assert!(wait_flushed(second).await.is_err());

    // Memory may now hold what the file lost, so the store refuses every later
    // write even when the disk works again.
    hooks.fail_commits(false);
    assert!(log.save_vote(&vote).await.is_err());
    let (done, third) = flushed();
    log.append_with(entries(1, 4..=4), done).await.unwrap();
    assert!(wait_flushed(third).await.is_err());
    assert_eq!(hooks.commits(), 0);

    drop(voter);
    drop(log);
    assert!(observed_after_close(seen).is_empty());
    let mut log = reopen(&path);
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
    assert_eq!(log.read_vote().await.unwrap(), None);
}

#[tokio::test]
async fn a_panicking_observer_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (forward, mut seen) = observer();
    let observer: AppendObserver = Arc::new(move |c: &Command| {
        if *c == command(1) {
            panic!("observer bug");
        }
        forward(c);
    });
    let mut log = LogStore::open(&dir.path().join(LOG_FILE), ME, observer).unwrap();
    log.blocking_append(entries(1, 1..=1)).await.unwrap();
    log.blocking_append(entries(1, 2..=2)).await.unwrap();
    assert_eq!(next_observed(&mut seen).await, command(2));
    log.save_vote(&Vote::new(1, ME)).await.unwrap();
}
