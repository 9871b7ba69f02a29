//! Sends one batch to one target: the executor of the batcher's decisions. Watch events
//! are only hints; for every place in the batch the sender lists the source, asks the
//! target for the same place (a digest first, the listing only when they differ), plans
//! with [`crate::engine::plan`] and sends what differs: renames first, then creations and
//! updates in tree order (small files inline, large ones streamed, as a delta when the
//! target has an older version; [`crate::engine::transfer`] decides), deletions last. A
//! source root that is missing or suddenly empty halts the batch instead of emptying
//! the targets ([`crate::engine::halt`] decides).

use crate::engine::batcher::Outcome;
use crate::engine::halt::{self, Halt};
use crate::engine::pending::{DirScope, Pending};
use crate::engine::plan::{plan_dir, plan_entry, DirPlan, PlanOptions, Step};
use crate::engine::transfer::{self, Method};
use crate::entry::{listing_digest, Entry, Kind};
use crate::path::{Excludes, RelPath};
use crate::protocol::{
    CompareItem, CompareResult, DeltaBasis, FileOp, OpResult, Request, Response, BODY_BUDGET,
    COMPARE_BATCH, SYNC_PROTOCOL,
};
use crate::scan::{list_local, open_local, stat_local};
use crate::transport::{CallError, Transport};
use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use uphold_config::owners::Ownership;
use uphold_config::sync::SyncConfig;
use uphold_delta::{DeltaEncoder, Signature, DEFAULT_MAX_BLOCKS};

/// What the sender needs to know about a set.
#[derive(Debug, Clone)]
pub struct SenderSet {
    pub name: String,
    pub source: PathBuf,
    pub excludes: Excludes,
    pub delete: bool,
    /// Send setuid and setgid bits and every owner (the set's
    /// `preserve_privileged`); otherwise the source is compared and sent as if
    /// they were clear and its owners were those `ownership` keeps, as the
    /// receivers write it.
    pub preserve_privileged: bool,
    pub ownership: Ownership,
}

impl SenderSet {
    /// What the sender needs of `set`, sending from `source`.
    pub fn new(set: &SyncConfig, source: PathBuf, excludes: Excludes) -> SenderSet {
        SenderSet {
            name: set.name.as_str().to_string(),
            source,
            excludes,
            delete: set.delete,
            preserve_privileged: set.preserve_privileged,
            ownership: set.ownership.clone(),
        }
    }

    /// A source entry as this set sends it.
    fn as_sent(&self, mut entry: Entry) -> Entry {
        if !self.preserve_privileged {
            entry.mode = crate::entry::without_privileged_bits(entry.mode);
        }
        (entry.uid, entry.gid) = crate::entry::kept_owner(
            &self.ownership,
            self.preserve_privileged,
            entry.uid,
            entry.gid,
        );
        entry
    }
}

/// Running totals of one target, for status, metrics and progress bars.
#[derive(Debug, Default)]
pub struct SenderCounters {
    pub batches: AtomicU64,
    pub dirs_compared: AtomicU64,
    pub files_sent: AtomicU64,
    pub file_bytes: AtomicU64,
    pub delta_files: AtomicU64,
    pub deletes: AtomicU64,
    pub renames: AtomicU64,
    pub errors: AtomicU64,
}

/// Asks the receiver whether it takes the set; returns whether it preserves ownership.
pub async fn hello(t: &dyn Transport, set: &str) -> Result<bool, CallError> {
    match t
        .call(Request::Hello {
            set: set.to_string(),
            protocol: SYNC_PROTOCOL,
        })
        .await?
    {
        Response::Hello { preserves_owner } => Ok(preserves_owner),
        other => Err(CallError::Refused(format!(
            "unexpected answer to hello: {other:?}"
        ))),
    }
}

enum Stop {
    Unreachable(String),
    Halted(Halt),
}

impl From<Halt> for Stop {
    fn from(halt: Halt) -> Self {
        Stop::Halted(halt)
    }
}

impl From<CallError> for Stop {
    fn from(e: CallError) -> Self {
        Stop::Unreachable(e.to_string())
    }
}

struct Job {
    dir: RelPath,
    names: Option<BTreeSet<Vec<u8>>>,
    recursive: bool,
}

struct Run<'a> {
    set: &'a SenderSet,
    t: &'a dyn Transport,
    opts: PlanOptions,
    counters: &'a SenderCounters,
    retry: Pending,
    errors: Vec<String>,
    ops: Vec<FileOp>,
    weight: usize,
    deletes: Vec<RelPath>,
}

/// Runs one batch to its end.
pub async fn run_batch(
    set: &SenderSet,
    t: &dyn Transport,
    with_owner: bool,
    batch: Pending,
    counters: &SenderCounters,
) -> Outcome {
    counters.batches.fetch_add(1, Ordering::Relaxed);
    let mut run = Run {
        set,
        t,
        opts: PlanOptions {
            with_owner,
            delete: set.delete,
        },
        counters,
        retry: Pending::default(),
        errors: Vec::new(),
        ops: Vec::new(),
        weight: 0,
        deletes: Vec::new(),
    };
    match run.run(&batch).await {
        Ok(()) => {
            if !run.errors.is_empty() {
                counters
                    .errors
                    .fetch_add(run.errors.len() as u64, Ordering::Relaxed);
            }
            let error = match run.errors.len() {
                0 => None,
                1 => Some(run.errors[0].clone()),
                n => Some(format!("{} (and {} more)", run.errors[0], n - 1)),
            };
            Outcome::Done {
                retry: run.retry,
                error,
            }
        }
        Err(Stop::Unreachable(error)) => Outcome::Unreachable { batch, error },
        Err(Stop::Halted(reason)) => Outcome::Halted { batch, reason },
    }
}

impl Run<'_> {
    async fn run(&mut self, batch: &Pending) -> Result<(), Stop> {
        let root = &self.set.source;
        let root_is_dir = std::fs::metadata(root).is_ok_and(|md| md.is_dir());
        halt::at_start(root, root_is_dir)?;
        let mut work = Pending {
            dirs: batch.dirs.clone(),
            subtrees: batch.subtrees.clone(),
            renames: Vec::new(),
        };
        self.renames(batch, &mut work).await?;

        let mut initial: Vec<Job> = work
            .subtrees
            .iter()
            .map(|dir| Job {
                dir: dir.clone(),
                names: None,
                recursive: true,
            })
            .chain(work.dirs.iter().map(|(dir, scope)| Job {
                dir: dir.clone(),
                names: match scope {
                    DirScope::All => None,
                    DirScope::Names(n) => Some(n.clone()),
                },
                recursive: false,
            }))
            // Hints name excluded places too (a new excluded directory is scanned by the
            // watcher like any other): what is in them is neither sent nor deleted.
            .filter(|job| !self.set.excludes.covers(&job.dir, true))
            .collect();
        initial.sort_by_key(|j| j.dir.depth());
        let mut queue: VecDeque<Job> = initial.into();
        while !queue.is_empty() {
            let n = queue.len().min(COMPARE_BATCH);
            let chunk: Vec<Job> = queue.drain(..n).collect();
            self.compare_and_send(chunk, &mut queue).await?;
        }
        self.flush().await?;
        self.send_deletes().await
    }

    async fn renames(&mut self, batch: &Pending, work: &mut Pending) -> Result<(), Stop> {
        for r in &batch.renames {
            if let Ok(Some(entry)) = stat_local(&self.set.source, &r.to) {
                if (entry.kind == Kind::Dir) == r.is_dir
                    && !self.set.excludes.covers(&r.to, r.is_dir)
                    && !self.set.excludes.covers(&r.from, r.is_dir)
                {
                    self.push(FileOp::Rename {
                        from: r.from.clone(),
                        to: r.to.clone(),
                        expect: entry,
                    })
                    .await?;
                }
            }
            // Whether or not the target could rename, both places are compared after.
            work.add_changed(&r.from);
            if r.is_dir {
                work.add_subtree(&r.to);
            } else {
                work.add_changed(&r.to);
            }
        }
        self.flush().await
    }

    async fn compare_and_send(
        &mut self,
        chunk: Vec<Job>,
        queue: &mut VecDeque<Job>,
    ) -> Result<(), Stop> {
        let root = self.set.source.clone();
        let mut items = Vec::with_capacity(chunk.len());
        // Per job: the source listing (whole dir) or the source entries (names).
        let mut local: Vec<Option<Vec<Option<Entry>>>> = Vec::with_capacity(chunk.len());
        let mut listings: Vec<Option<Vec<Entry>>> = Vec::with_capacity(chunk.len());
        for job in &chunk {
            match &job.names {
                None => {
                    let listing = list_local(&root, &job.dir, &self.set.excludes)
                        .map_err(|e| Stop::Unreachable(format!("reading source {}: {e}", job.dir)))?
                        .map(|entries| {
                            entries
                                .into_iter()
                                .map(|e| self.set.as_sent(e))
                                .collect::<Vec<_>>()
                        });
                    if job.dir.is_root() {
                        // The target's side is checked once it answered.
                        halt::at_root_listing(&root, listing.as_deref(), None, false)?;
                    }
                    items.push(CompareItem::Dir {
                        dir: job.dir.clone(),
                        digest: listing_digest(
                            listing.as_deref().unwrap_or(&[]),
                            self.opts.with_owner,
                        ),
                    });
                    listings.push(listing);
                    local.push(None);
                }
                Some(names) => {
                    let mut entries = Vec::with_capacity(names.len());
                    for name in names {
                        let path = job.dir.join(name);
                        let entry = stat_local(&root, &path)
                            .map_err(|e| Stop::Unreachable(format!("reading source {path}: {e}")))?
                            .filter(|e| !self.set.excludes.covers(&path, e.kind == Kind::Dir))
                            .map(|e| self.set.as_sent(e));
                        entries.push(entry);
                    }
                    items.push(CompareItem::Names {
                        dir: job.dir.clone(),
                        names: names
                            .iter()
                            .cloned()
                            .map(serde_bytes::ByteBuf::from)
                            .collect(),
                    });
                    listings.push(None);
                    local.push(Some(entries));
                }
            }
        }
        self.counters
            .dirs_compared
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let results = match self
            .t
            .call(Request::Compare {
                set: self.set.name.clone(),
                with_owner: self.opts.with_owner,
                items,
            })
            .await?
        {
            Response::Compare(results) if results.len() == chunk.len() => results,
            other => {
                return Err(Stop::Unreachable(format!(
                    "unexpected answer to compare: {other:?}"
                )))
            }
        };
        for (((job, result), listing), entries) in
            chunk.into_iter().zip(results).zip(listings).zip(local)
        {
            let plan = match (entries, result) {
                (None, result) => {
                    let Some(source) = listing else {
                        // Gone from the source since it was queued; its parent deletes it.
                        continue;
                    };
                    let plan = match &result {
                        CompareResult::Same => DirPlan::default(),
                        CompareResult::Missing => {
                            self.ensure_dirs(&job.dir).await?;
                            plan_dir(&job.dir, &source, None, self.opts)
                        }
                        CompareResult::Listing(target) => {
                            if job.dir.is_root() {
                                halt::at_root_listing(
                                    &root,
                                    Some(&source),
                                    Some(target),
                                    self.opts.delete,
                                )?;
                            }
                            plan_dir(&job.dir, &source, Some(target), self.opts)
                        }
                        CompareResult::Entries(_) => {
                            return Err(Stop::Unreachable(
                                "target answered entries for a directory".into(),
                            ))
                        }
                    };
                    if job.recursive {
                        for e in source.iter().filter(|e| e.kind == Kind::Dir) {
                            queue.push_back(Job {
                                dir: job.dir.join(&e.name),
                                names: None,
                                recursive: true,
                            });
                        }
                    }
                    plan
                }
                (Some(entries), result) => {
                    let names: Vec<Vec<u8>> =
                        job.names.clone().unwrap_or_default().into_iter().collect();
                    let targets: Vec<Option<Entry>> = match result {
                        CompareResult::Missing => {
                            if entries.iter().any(Option::is_some) {
                                self.ensure_dirs(&job.dir).await?;
                            }
                            vec![None; names.len()]
                        }
                        CompareResult::Entries(t) if t.len() == names.len() => t,
                        other => {
                            return Err(Stop::Unreachable(format!(
                                "unexpected compare result {other:?}"
                            )))
                        }
                    };
                    let mut plan = DirPlan::default();
                    for ((name, source), target) in names.iter().zip(&entries).zip(&targets) {
                        plan_entry(
                            job.dir.join(name),
                            source.as_ref(),
                            target.as_ref(),
                            self.opts,
                            &mut plan,
                        );
                    }
                    plan
                }
            };
            if !job.recursive {
                for dir in &plan.new_dirs {
                    queue.push_back(Job {
                        dir: dir.clone(),
                        names: None,
                        recursive: true,
                    });
                }
            }
            for step in plan.steps {
                match step {
                    Step::Op(op) => self.push(op).await?,
                    Step::Transfer { path, entry, basis } => {
                        self.transfer(path, entry, basis).await?
                    }
                }
            }
            self.deletes.extend(plan.deletes);
        }
        Ok(())
    }

    /// The target lacks directory `dir` although no creation of it is planned (its
    /// creation event was lost, or it came with a rename): create it and any missing
    /// ancestor, with the source's attributes, before anything is put into it.
    async fn ensure_dirs(&mut self, dir: &RelPath) -> Result<(), Stop> {
        let mut chain = Vec::new();
        let mut current = Some(dir.clone());
        while let Some(d) = current {
            if d.is_root() {
                break;
            }
            current = d.parent();
            chain.push(d);
        }
        for d in chain.into_iter().rev() {
            match stat_local(&self.set.source, &d).map(|e| e.map(|e| self.set.as_sent(e))) {
                Ok(Some(e)) if e.kind == Kind::Dir => {
                    self.push(FileOp::Mkdir {
                        path: d,
                        meta: e.meta(),
                    })
                    .await?
                }
                // Gone from the source meanwhile: its parent's comparison deletes it.
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    async fn push(&mut self, op: FileOp) -> Result<(), Stop> {
        let w = op.weight();
        if self.weight + w > BODY_BUDGET && !self.ops.is_empty() {
            self.flush().await?;
        }
        self.weight += w;
        self.ops.push(op);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        self.weight = 0;
        let results = match self
            .t
            .call(Request::Apply {
                set: self.set.name.clone(),
                ops: ops.clone(),
            })
            .await?
        {
            Response::Apply(results) if results.len() == ops.len() => results,
            other => {
                return Err(Stop::Unreachable(format!(
                    "unexpected answer to apply: {other:?}"
                )))
            }
        };
        for (op, result) in ops.into_iter().zip(results) {
            match result {
                OpResult::Done => match &op {
                    FileOp::Put { data, .. } => {
                        self.counters.files_sent.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .file_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    FileOp::Delete { .. } => {
                        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
                    }
                    FileOp::Rename { .. } => {
                        self.counters.renames.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                },
                OpResult::Skipped => {}
                OpResult::Failed(e) => {
                    self.errors.push(e);
                    if let Some(path) = op_path(&op) {
                        self.retry.add_changed(path);
                    }
                }
            }
        }
        Ok(())
    }

    async fn transfer(
        &mut self,
        path: RelPath,
        entry: Entry,
        basis: Option<u64>,
    ) -> Result<(), Stop> {
        let method = transfer::method(entry.size, basis);
        if method == Method::Inline {
            match read_stable(open_local(&self.set.source, &path), &entry) {
                Some(data) => {
                    self.push(FileOp::Put {
                        path,
                        meta: entry.meta(),
                        data,
                    })
                    .await
                }
                None => {
                    // Changing right now (or gone); its next event or the retry sends it.
                    self.retry.add_changed(&path);
                    Ok(())
                }
            }
        } else {
            // Operations before it (the directory it goes into) must be applied first.
            self.flush().await?;
            self.stream(path, entry, method == Method::Delta).await
        }
    }

    async fn stream(&mut self, path: RelPath, entry: Entry, as_delta: bool) -> Result<(), Stop> {
        let set = self.set.name.clone();
        let signature = if as_delta {
            match self
                .t
                .call(Request::Signature {
                    set: set.clone(),
                    path: path.clone(),
                })
                .await?
            {
                Response::Signature(Some(bytes)) => {
                    Signature::from_bytes(&bytes, DEFAULT_MAX_BLOCKS).ok()
                }
                _ => None,
            }
        } else {
            None
        };
        let begun = self
            .t
            .call(Request::Begin {
                set: set.clone(),
                path: path.clone(),
                meta: entry.meta(),
                size: entry.size,
                delta: signature.as_ref().map(|s| DeltaBasis {
                    block_size: s.block_size(),
                    basis_len: s.basis_len(),
                }),
            })
            .await;
        let id = match begun {
            Ok(Response::Begun { id }) => id,
            Ok(other) => {
                return Err(Stop::Unreachable(format!(
                    "unexpected answer to begin: {other:?}"
                )))
            }
            Err(CallError::Refused(e)) => {
                self.errors.push(e);
                self.retry.add_changed(&path);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if signature.is_some() {
            self.counters.delta_files.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let (root, rel) = (self.set.source.clone(), path.clone());
        let expected = entry.clone();
        let producer = tokio::task::spawn_blocking(move || {
            produce(open_local(&root, &rel), &expected, signature, tx)
        });
        let mut failure: Option<Stop> = None;
        while let Some(data) = rx.recv().await {
            if let Err(e) = self.t.call(Request::Chunk { id, data }).await {
                failure = Some(e.into());
                break;
            }
        }
        drop(rx);
        let produced = producer
            .await
            .unwrap_or_else(|e| Err(format!("reading the source failed: {e}")));
        match (failure, produced) {
            (Some(stop), _) => {
                let _ = self.t.call(Request::Abort { id }).await;
                Err(stop)
            }
            (None, Err(reason)) => {
                let _ = self.t.call(Request::Abort { id }).await;
                tracing::debug!(%path, "not sent this time: {reason}");
                self.retry.add_changed(&path);
                Ok(())
            }
            (None, Ok(hash)) => match self.t.call(Request::Commit { id, hash }).await {
                Ok(_) => {
                    self.counters.files_sent.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .file_bytes
                        .fetch_add(entry.size, Ordering::Relaxed);
                    Ok(())
                }
                Err(CallError::Refused(e)) => {
                    self.errors.push(e);
                    self.retry.add_changed(&path);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn send_deletes(&mut self) -> Result<(), Stop> {
        if self.deletes.is_empty() {
            return Ok(());
        }
        let root_level = self.deletes.iter().any(|d| d.depth() == 1);
        if root_level {
            let listing = list_local(&self.set.source, &RelPath::root(), &self.set.excludes)
                .map_err(|e| Stop::Unreachable(format!("reading source root: {e}")))?;
            halt::before_root_deletes(&self.set.source, listing.as_deref())?;
        }
        for path in std::mem::take(&mut self.deletes) {
            self.push(FileOp::Delete { path }).await?;
        }
        self.flush().await
    }
}

fn op_path(op: &FileOp) -> Option<&RelPath> {
    match op {
        FileOp::Mkdir { path, .. }
        | FileOp::Put { path, .. }
        | FileOp::Symlink { path, .. }
        | FileOp::SetMeta { path, .. }
        | FileOp::Delete { path } => Some(path),
        FileOp::Rename { to, .. } => Some(to),
    }
}

fn unchanged(md: &std::fs::Metadata, entry: &Entry) -> bool {
    md.is_file()
        && md.size() == entry.size
        && md.mtime() == entry.mtime_s
        && md.mtime_nsec() == i64::from(entry.mtime_ns)
}

/// The whole content of a small file, if it is still the version listed.
fn read_stable(opened: std::io::Result<std::fs::File>, entry: &Entry) -> Option<Vec<u8>> {
    let mut f = opened.ok()?;
    if !unchanged(&f.metadata().ok()?, entry) {
        return None;
    }
    let mut data = Vec::with_capacity(entry.size as usize);
    (&mut f).take(entry.size + 1).read_to_end(&mut data).ok()?;
    (data.len() as u64 == entry.size && unchanged(&f.metadata().ok()?, entry)).then_some(data)
}

/// Reads a large source file once, as delta records or plain chunks, into `tx`; returns
/// its blake3 hash if the file stayed the version listed.
fn produce(
    opened: std::io::Result<std::fs::File>,
    entry: &Entry,
    signature: Option<Signature>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<[u8; 32], String> {
    let f = opened.map_err(|e| e.to_string())?;
    let check = |f: &std::fs::File| match f.metadata() {
        Ok(md) if unchanged(&md, entry) => Ok(()),
        _ => Err("changed while being read".to_string()),
    };
    check(&f)?;
    let reader = std::io::BufReader::with_capacity(256 * 1024, &f);
    let hash = match signature {
        Some(sig) => {
            let encoder = DeltaEncoder::new(&sig);
            let mut buf: Vec<u8> = Vec::with_capacity(BODY_BUDGET + 70 * 1024);
            let summary = encoder
                .encode(reader, |op| {
                    uphold_delta::wire::write_op(&mut buf, &op)?;
                    if buf.len() >= BODY_BUDGET {
                        let full = std::mem::replace(
                            &mut buf,
                            Vec::with_capacity(BODY_BUDGET + 70 * 1024),
                        );
                        tx.blocking_send(full)
                            .map_err(|_| std::io::Error::other("transfer cancelled"))?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            if !buf.is_empty() {
                tx.blocking_send(buf)
                    .map_err(|_| "transfer cancelled".to_string())?;
            }
            if summary.source_len != entry.size {
                return Err("changed while being read".into());
            }
            summary.source_hash
        }
        None => {
            let mut reader = reader;
            let mut hasher = blake3::Hasher::new();
            let mut total = 0u64;
            loop {
                let mut chunk = vec![0u8; BODY_BUDGET];
                let mut filled = 0;
                while filled < chunk.len() {
                    match reader.read(&mut chunk[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                if filled == 0 {
                    break;
                }
                chunk.truncate(filled);
                total += filled as u64;
                if total > entry.size {
                    return Err("grew while being read".into());
                }
                hasher.update(&chunk);
                tx.blocking_send(chunk)
                    .map_err(|_| "transfer cancelled".to_string())?;
            }
            if total != entry.size {
                return Err("changed while being read".into());
            }
            *hasher.finalize().as_bytes()
        }
    };
    check(&f)?;
    Ok(hash)
}
