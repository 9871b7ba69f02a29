//! Faults in the middle of replication, through a real receiver and the real sender with
//! failures injected into the in-process transport: the network cut during a large
//! transfer and at every single call of a batch, the receiver dying mid-transfer and
//! coming back, the sender restarting mid-batch, and a reader on the target that must
//! never see a file other than a version that was written in full. After every fault the
//! trees converge, and no temporary file is ever visible as replicated content.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};
use uphold_core::Millis;
use uphold_sync::engine::batcher::{Batcher, Change, Outcome};
use uphold_sync::engine::pending::Pending;
use uphold_sync::path::Excludes;
use uphold_sync::protocol::{CompareItem, CompareResult, Request, Response};
use uphold_sync::transport::{Fault, Transport};

const DELAY: Millis = 20;
const MIB: usize = 1024 * 1024;

/// Deterministic bytes; `seed` picks the version.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Writes a version of a source file with a modification time of its own (a quick
/// check by size and mtime cannot see a same-size rewrite within one clock tick).
fn write_version(root: &Path, rel: &str, data: &[u8], mtime: u64) {
    let full = root.join(rel);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&full, data).unwrap();
    set_mtime(&full, mtime);
}

fn set_mtime(full: &Path, mtime: u64) {
    let f = std::fs::File::options().write(true).open(full).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(1_600_000_000 + mtime))
        .unwrap();
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A network cut (or a crash) during the `n`th matching call.
fn cut_at(after: u64, chunks_only: bool, delivered: bool) -> Fault {
    Fault {
        after,
        chunks_only,
        delivered,
        latch: true,
    }
}

/// Runs the batcher on a simulated clock until nothing is pending; returns the outcomes
/// as short names ("done", "unreachable", ...). Panics on a batch that ends in errors.
fn drive(pair: &Pair, batcher: &mut Batcher, now: &mut Millis) -> Vec<&'static str> {
    let runtime = rt();
    let mut seen = Vec::new();
    for _ in 0..50 {
        while let Some(batch) = batcher.poll(*now) {
            let outcome = runtime.block_on(pair.send(batch));
            seen.push(match &outcome {
                Outcome::Done { error: None, retry } if retry.is_empty() => "done",
                Outcome::Done { error, retry } => {
                    panic!("batch ended with errors: {error:?}, retry {retry:?}")
                }
                Outcome::Unreachable { .. } => "unreachable",
                Outcome::Halted { reason, .. } => panic!("halted: {reason}"),
            });
            *now += 1;
            batcher.on_outcome(outcome, *now);
        }
        match batcher.next_deadline() {
            Some(at) => *now = (*now).max(at),
            None => return seen,
        }
    }
    panic!("the batcher never drained: {seen:?}");
}

/// The receiver's own listing of `dir`, as the sender gets it.
fn receiver_listing(pair: &Pair, dir: &str) -> Vec<Vec<u8>> {
    let request = Request::Compare {
        set: "www".into(),
        with_owner: pair.with_owner,
        items: vec![CompareItem::Dir {
            dir: rp(dir),
            digest: [0; 16],
        }],
    };
    match rt().block_on(pair.transport.call(request)) {
        Ok(Response::Compare(results)) => match results.as_slice() {
            [CompareResult::Listing(entries)] => entries.iter().map(|e| e.name.clone()).collect(),
            [CompareResult::Same] => Vec::new(),
            other => panic!("unexpected compare result {other:?}"),
        },
        other => panic!("compare failed: {other:?}"),
    }
}

/// Asserts that the trees are equal (temporary files aside), that neither the receiver's
/// listings nor the sender's scan of the target show a temporary file, and that one
/// more full comparison sends nothing.
fn assert_converged(pair: &Pair) {
    assert_same_but_temps(pair);
    for temp in temp_files(&pair.target) {
        let dir = temp.parent().unwrap().strip_prefix(&pair.target).unwrap();
        let dir = dir.to_str().unwrap();
        let names = receiver_listing(pair, dir);
        assert!(
            names.iter().all(|n| !uphold_sync::path::is_temp_name(n)),
            "the receiver lists a temporary file in {dir:?}: {names:?}"
        );
        // After a failover the target becomes the source: its leftovers must not travel.
        let scanned =
            uphold_sync::scan::list_local(&pair.target, &rp(dir), &Excludes::none()).unwrap();
        assert!(scanned
            .unwrap_or_default()
            .iter()
            .all(|e| !uphold_sync::path::is_temp_name(&e.name)));
    }
    let sent = counter(&pair.counters.files_sent);
    let bytes = pair.wire_bytes();
    rt().block_on(pair.sync_all());
    assert_eq!(
        counter(&pair.counters.files_sent),
        sent,
        "converged, yet files were sent again"
    );
    assert!(pair.wire_bytes() - bytes < 20_000);
}

// ---------------------------------------------------------------------------------------
// (a) The network cut in the middle of a large transfer.

/// A new large file (streamed whole) and a changed one (a delta of several chunks): the
/// network is cut after `k` chunks, with the last chunk lost on the way or only its
/// answer lost. The target keeps the old version (never a partial one), the batch comes
/// back, and once the network is back the trees converge. No temporary file remains: the
/// abort removes it when it gets through, the file's next stream when it does not.
#[test]
fn a_cut_in_the_middle_of_a_large_transfer_leaves_the_old_version_and_converges() {
    for k in 0..3u64 {
        for delivered in [false, true] {
            for latch in [true, false] {
                let mut pair = Pair::new();
                let old = content(MIB + MIB / 2, 1);
                write_version(&pair.source, "d/changed", &old, 1);
                write_version(&pair.source, "keep", b"k", 1);
                rt().block_on(pair.sync_all());
                // Over 1 MiB of new bytes, so the delta travels in two chunks.
                let mut new = old.clone();
                new[..MIB + 100_000].copy_from_slice(&content(MIB + 100_000, 2));
                write_version(&pair.source, "d/changed", &new, 2);
                let fresh = content(MIB + 7, 3);
                write_version(&pair.source, "d/fresh", &fresh, 2);

                let mut batcher = Batcher::new(DELAY, 0);
                let mut now = DELAY;
                let first = batcher.poll(now).unwrap();
                pair.transport.arm(Some(Fault {
                    after: k,
                    chunks_only: true,
                    delivered,
                    latch,
                }));
                let outcome = rt().block_on(pair.send(first));
                assert!(
                    matches!(outcome, Outcome::Unreachable { .. }),
                    "k={k}: {outcome:?}"
                );
                assert!(!pair.transport.armed(), "the fault tripped");
                // Old version or nothing, never a partial file. The delta of "changed"
                // takes the first two chunks; at k = 2 it is complete and committed.
                let changed = hash(&std::fs::read(pair.target.join("d/changed")).unwrap());
                assert!(
                    changed == hash(&old) || (k >= 2 && changed == hash(&new)),
                    "k={k}: d/changed is neither the old nor (once committed) the new version"
                );
                let fresh_there = std::fs::read(pair.target.join("d/fresh")).ok();
                assert!(
                    fresh_there.is_none_or(|f| hash(&f) == hash(&fresh)),
                    "k={k}: a partial new file at its final path"
                );
                if !latch {
                    assert_eq!(temp_files(&pair.target), Vec::<PathBuf>::new());
                }
                batcher.on_outcome(outcome, now);
                pair.transport.cut.store(false, Ordering::Relaxed);
                let seen = drive(&pair, &mut batcher, &mut now);
                assert!(seen.iter().all(|s| *s == "done"), "{seen:?}");
                assert_converged(&pair);
                // The stream begun again replaced the lost one, temporary file and all.
                assert_eq!(temp_files(&pair.target), Vec::<PathBuf>::new());
                // Restarting the receiver keeps that true too.
                pair.restart_receiver();
                assert_converged(&pair);
            }
        }
    }
}

/// One batch with every kind of operation (small files, a new large file, a delta, a
/// directory rename, deletes, a symlink, a chmod) is cut at each of its calls in turn,
/// with the request or only the answer lost. Every file on the target is always a
/// version that was written in full, and the trees converge once the network is back.
#[test]
fn a_cut_at_any_call_of_a_batch_never_leaves_a_partial_file_and_converges() {
    struct Setup {
        pair: Pair,
        batch: Pending,
        /// Every version a path may hold on the target, by content hash.
        allowed: HashMap<PathBuf, HashSet<[u8; 32]>>,
    }
    fn setup() -> Setup {
        let pair = Pair::in_memory();
        let s = &pair.source;
        let mut allowed: HashMap<PathBuf, HashSet<[u8; 32]>> = HashMap::new();
        let mut put = |rel: &str, data: &[u8], mtime: u64| {
            write_version(s, rel, data, mtime);
            allowed
                .entry(PathBuf::from(rel))
                .or_default()
                .insert(hash(data));
        };
        for i in 0..20 {
            put(&format!("small/f{i}"), &content(3000 + i * 10, i as u64), 1);
        }
        put("big", &content(400_000, 100), 1);
        for i in 0..5 {
            put(&format!("old/sub/g{i}"), &content(500, 200 + i as u64), 1);
        }
        put("gone", b"to be deleted", 1);
        rt().block_on(pair.sync_all());

        let mut batch = Pending::default();
        for i in 0..20 {
            put(
                &format!("small/f{i}"),
                &content(2000 + i * 10, 50 + i as u64),
                2,
            );
            batch.add_changed(&rp(&format!("small/f{i}")));
        }
        let mut big = std::fs::read(s.join("big")).unwrap();
        big[300_000..340_000].copy_from_slice(&content(40_000, 7));
        put("big", &big, 2);
        batch.add_changed(&rp("big"));
        put("new/large", &content(MIB + 3, 300), 2);
        batch.add_subtree(&rp("new"));
        std::fs::rename(s.join("old"), s.join("moved")).unwrap();
        for i in 0..5 {
            let data = content(500, 200 + i as u64);
            allowed
                .entry(PathBuf::from(format!("moved/sub/g{i}")))
                .or_default()
                .insert(hash(&data));
        }
        batch.add_rename(&rp("old"), &rp("moved"), true);
        std::fs::remove_file(s.join("gone")).unwrap();
        batch.add_changed(&rp("gone"));
        std::os::unix::fs::symlink("big", s.join("link")).unwrap();
        batch.add_changed(&rp("link"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(s.join("small/f3"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        Setup {
            pair,
            batch,
            allowed,
        }
    }
    fn check_files(pair: &Pair, allowed: &HashMap<PathBuf, HashSet<[u8; 32]>>, what: &str) {
        for (rel, snap) in snapshot(&pair.target, &Excludes::none()) {
            if let Snap::File { data, .. } = snap {
                if is_temp(&rel) {
                    continue;
                }
                let ok = allowed.get(&rel).is_some_and(|v| v.contains(&hash(&data)));
                assert!(
                    ok,
                    "{what}: {} holds {} bytes that were never a whole version",
                    rel.display(),
                    data.len()
                );
            }
        }
    }

    // How many calls the batch makes when nothing fails.
    let clean = setup();
    let before = counter(&clean.pair.transport.calls);
    let outcome = rt().block_on(clean.pair.send(clean.batch.clone()));
    assert!(
        matches!(outcome, Outcome::Done { error: None, .. }),
        "{outcome:?}"
    );
    assert_same(&clean.pair);
    let calls = counter(&clean.pair.transport.calls) - before;
    assert!(calls >= 8, "the batch makes only {calls} calls");
    assert!(counter(&clean.pair.counters.delta_files) >= 1);
    assert!(counter(&clean.pair.counters.renames) >= 1);

    let started = Instant::now();
    let mut runs = 0;
    for n in 0..calls {
        for delivered in [false, true] {
            let Setup {
                pair,
                batch,
                allowed,
            } = setup();
            pair.transport.arm(Some(cut_at(n, false, delivered)));
            let what = format!("cut at call {n} of {calls} (delivered: {delivered})");
            let outcome = rt().block_on(pair.send(batch));
            assert!(
                matches!(outcome, Outcome::Unreachable { .. }),
                "{what}: {outcome:?}"
            );
            check_files(&pair, &allowed, &what);
            pair.transport.cut.store(false, Ordering::Relaxed);
            let mut batcher = Batcher::new(DELAY, 0);
            let mut now = 0;
            batcher.poll(DELAY).unwrap();
            batcher.on_outcome(outcome, DELAY);
            let seen = drive(&pair, &mut batcher, &mut now);
            assert!(seen.iter().all(|s| *s == "done"), "{what}: {seen:?}");
            check_files(&pair, &allowed, &what);
            assert_converged(&pair);
            runs += 1;
        }
    }
    println!(
        "{runs} cuts over {calls} calls in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// (b) The receiver dies in the middle of a transfer and comes back.

/// The receiving member crashes after taking some chunks of a large file (its open
/// transfer is gone, the temporary file stays on disk) and restarts on the same target
/// and state directory: the target still holds the old version, the next batches
/// converge, and the leftover is invisible to every comparison and to a reverse sync.
#[test]
fn a_receiver_that_dies_mid_transfer_comes_back_and_the_trees_converge() {
    for (k, delta) in [(0u64, false), (1, false), (0, true), (1, true)] {
        let mut pair = Pair::new();
        let old = content(2 * MIB, 10);
        write_version(&pair.source, "data/db", &old, 1);
        write_version(&pair.source, "data/small", b"v1", 1);
        rt().block_on(pair.sync_all());
        let new = if delta {
            // Over 1 MiB of new bytes (two chunks), the rest copied from the old version.
            let mut new = content(MIB + 100_000, 11);
            new.extend_from_slice(&old[MIB..]);
            new
        } else {
            content(2 * MIB + 77, 12)
        };
        write_version(&pair.source, "data/db", &new, 2);
        write_version(&pair.source, "data/small", b"v2", 2);
        if !delta {
            // No basis: the file is sent whole.
            write_version(&pair.source, "data/other", &content(MIB, 13), 2);
        }

        let mut batcher = Batcher::new(DELAY, 0);
        let mut now = DELAY;
        let batch = batcher.poll(now).unwrap();
        // The chunk reaches the receiver, which dies before it answers.
        pair.transport.arm(Some(cut_at(k, true, true)));
        let outcome = rt().block_on(pair.send(batch));
        assert!(
            matches!(outcome, Outcome::Unreachable { .. }),
            "{outcome:?}"
        );
        batcher.on_outcome(outcome, now);
        let deltas_before = counter(&pair.counters.delta_files);
        pair.restart_receiver();
        assert!(
            hash(&std::fs::read(pair.target.join("data/db")).unwrap()) == hash(&old),
            "k={k}: the target lost the old version"
        );
        let leftovers = temp_files(&pair.target);
        assert_eq!(
            leftovers.len(),
            1,
            "the crash leaves its temporary file: {leftovers:?}"
        );

        let seen = drive(&pair, &mut batcher, &mut now);
        assert!(seen.iter().all(|s| *s == "done"), "{seen:?}");
        assert_converged(&pair);
        assert_eq!(
            temp_files(&pair.target),
            leftovers,
            "the leftover is left alone"
        );
        if delta {
            // The restarted receiver still serves a delta against the old version.
            assert!(counter(&pair.counters.delta_files) > deltas_before);
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) The sender restarts in the middle of a batch.

struct Tree {
    files: usize,
}

fn populate(root: &Path) -> Tree {
    let mut files = 0;
    for d in 0..8 {
        for f in 0..30 {
            write_version(
                root,
                &format!("d{d}/f{f}"),
                &content(4096 + f * 13, (d * 100 + f) as u64),
                (d * 100 + f) as u64,
            );
            files += 1;
        }
    }
    for (i, len) in [300_000usize, MIB + 17, MIB + MIB / 2]
        .into_iter()
        .enumerate()
    {
        write_version(
            root,
            &format!("large/l{i}"),
            &content(len, 1000 + i as u64),
            5,
        );
        files += 1;
    }
    std::os::unix::fs::symlink("large/l0", root.join("link")).unwrap();
    Tree { files }
}

/// Files on the source whose target copy is missing or differs in size or mtime: what a
/// start-up comparison must send, and all it may send.
fn files_to_send(pair: &Pair) -> u64 {
    let src = snapshot(&pair.source, &Excludes::none());
    let dst: BTreeMap<_, _> = snapshot(&pair.target, &Excludes::none())
        .into_iter()
        .filter(|(k, _)| !is_temp(k))
        .collect();
    src.iter()
        .filter(|(k, v)| match (v, dst.get(*k)) {
            (
                Snap::File { data, mtime, .. },
                Some(Snap::File {
                    data: d, mtime: m, ..
                }),
            ) => data.len() != d.len() || mtime != m,
            (Snap::File { .. }, _) => true,
            _ => false,
        })
        .count() as u64
}

/// The sender dies after `n` calls of its start-up batch (the answer to the last one
/// lost, or the request itself); a new sender with a fresh batcher compares the whole
/// tree and sends exactly the files that are not on the target yet.
#[test]
fn a_sender_restarted_mid_batch_sends_only_what_is_still_missing() {
    // How many calls a clean start-up takes.
    let clean = Pair::in_memory();
    let tree = populate(&clean.source);
    rt().block_on(clean.sync_all());
    let calls = counter(&clean.transport.calls);
    assert_eq!(counter(&clean.counters.files_sent), tree.files as u64);
    assert!(calls >= 8, "only {calls} calls");

    let points: Vec<u64> = (1..calls).step_by((calls as usize / 10).max(1)).collect();
    let mut missing_at_restart = 0;
    for &n in &points {
        for delivered in [false, true] {
            let pair = Pair::in_memory();
            populate(&pair.source);
            // Some of it is on the target already, some of that outdated.
            for d in 0..3 {
                let f = format!("d{d}/f1");
                std::fs::create_dir_all(pair.target.join(format!("d{d}"))).unwrap();
                std::fs::copy(pair.source.join(&f), pair.target.join(&f)).unwrap();
            }
            let mut first = Batcher::new(DELAY, 0);
            let batch = first.poll(DELAY).unwrap();
            pair.transport.arm(Some(cut_at(n, false, delivered)));
            let outcome = rt().block_on(pair.send(batch));
            assert!(
                matches!(outcome, Outcome::Unreachable { .. }),
                "cut at {n}: {outcome:?}"
            );
            // The sender process dies here: its batcher and everything pending with it.
            drop(first);
            pair.transport.cut.store(false, Ordering::Relaxed);
            let expected = files_to_send(&pair);
            assert!(expected <= tree.files as u64);
            missing_at_restart += expected;
            let sent = counter(&pair.counters.files_sent);
            let mut restarted = Batcher::new(DELAY, 1_000);
            let mut now = 1_000;
            let seen = drive(&pair, &mut restarted, &mut now);
            assert_eq!(seen, ["done"]);
            assert_eq!(
                counter(&pair.counters.files_sent) - sent,
                expected,
                "cut at call {n} (delivered {delivered}): the restart sent more than the difference"
            );
            assert_converged(&pair);
        }
    }
    assert!(missing_at_restart > 0, "no cut left anything to send");
}

/// A flapping network that breaks streams again and again: transfers the receiver still
/// holds open for the sender (their abort never arrived) must not lock the sender out of
/// sending large files once the network is back.
#[test]
fn repeated_cuts_mid_stream_do_not_lock_the_sender_out() {
    let pair = Pair::in_memory();
    write_version(&pair.source, "keep", b"k", 1);
    write_version(&pair.source, "large", &content(2 * MIB, 1), 1);
    let mut batcher = Batcher::new(DELAY, 0);
    let mut now = DELAY;
    for cut in 0..12 {
        let batch = batcher.poll(now).expect("a batch is due");
        pair.transport.arm(Some(cut_at(0, true, true)));
        let outcome = rt().block_on(pair.send(batch));
        assert!(
            matches!(outcome, Outcome::Unreachable { .. }),
            "cut {cut}: {outcome:?}"
        );
        batcher.on_outcome(outcome, now);
        pair.transport.cut.store(false, Ordering::Relaxed);
        now = batcher.next_deadline().unwrap();
    }
    let seen = drive(&pair, &mut batcher, &mut now);
    assert!(seen.iter().all(|s| *s == "done"), "{seen:?}");
    assert_converged(&pair);
}

// ---------------------------------------------------------------------------------------
// (d) A reader on the target during many rewrites.

const ROUNDS: u64 = 25;

type Versions = Arc<Mutex<HashMap<PathBuf, HashSet<[u8; 32]>>>>;

#[derive(Default, Debug)]
struct ReaderReport {
    reads: u64,
    large_reads: u64,
    violations: Vec<String>,
    /// Distinct versions seen per path.
    seen: HashMap<PathBuf, HashSet<[u8; 32]>>,
}

/// Opens every file under `root` again and again until `stop`, and checks that each is,
/// byte for byte, one of the versions written for its path.
fn reader(root: PathBuf, versions: Versions, stop: Arc<AtomicBool>) -> ReaderReport {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        for e in read.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&path, out),
                Ok(t) if t.is_file() && !is_temp(&path) => out.push(path),
                _ => {}
            }
        }
    }
    let mut report = ReaderReport::default();
    while !stop.load(Ordering::Relaxed) {
        let mut files = Vec::new();
        walk(&root, &mut files);
        for path in files {
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue; // replaced or deleted between listing and opening
            };
            let size = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            let mut data = Vec::new();
            if f.read_to_end(&mut data).is_err() {
                continue;
            }
            report.reads += 1;
            if data.len() > 256 * 1024 {
                report.large_reads += 1;
            }
            let rel = path.strip_prefix(&root).unwrap().to_path_buf();
            let h = hash(&data);
            let known = versions
                .lock()
                .unwrap()
                .get(&rel)
                .is_some_and(|v| v.contains(&h));
            if !known || data.len() as u64 != size {
                report.violations.push(format!(
                    "{}: {} bytes (size {size}) that were never written as a whole",
                    rel.display(),
                    data.len()
                ));
            }
            report.seen.entry(rel).or_default().insert(h);
        }
    }
    report
}

/// Many rewrites of files of all sizes (inline, around the inline limit, streamed,
/// patched in place so they travel as deltas), sent in many batches, some of them cut
/// in the middle and some with the receiver restarting, while another thread reads
/// every file on the target: it must only ever see whole versions.
#[test]
fn a_reader_on_the_target_never_sees_a_torn_file() {
    let seed: u64 = std::env::var("UPHOLD_SYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("UPHOLD_SYNC_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pair = Pair::new();
    let versions: Versions = Arc::default();
    let names: Vec<(String, usize)> = vec![
        ("s0".into(), 10),
        ("s1".into(), 4000),
        ("dir/s2".into(), 100_000),
        ("dir/m0".into(), 256 * 1024),
        ("dir/m1".into(), 300_000),
        ("l0".into(), MIB),
        ("dir/deep/l1".into(), MIB + MIB / 2 + 11),
    ];
    let mut mtime = 0u64;
    let record_and_write = |pair: &Pair, rel: &str, data: &[u8], mtime: &mut u64| {
        versions
            .lock()
            .unwrap()
            .entry(PathBuf::from(rel))
            .or_default()
            .insert(hash(data));
        *mtime += 1;
        write_version(&pair.source, rel, data, *mtime);
    };
    for (i, (rel, len)) in names.iter().enumerate() {
        record_and_write(&pair, rel, &content(*len, i as u64), &mut mtime);
    }
    rt().block_on(pair.sync_all());

    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (root, versions, stop) = (pair.target.clone(), versions.clone(), stop.clone());
        std::thread::spawn(move || reader(root, versions, stop))
    };

    let mut batcher = Batcher::new(DELAY, 0);
    let mut now: Millis = 0;
    let (mut cuts, mut restarts) = (0, 0);
    let started = Instant::now();
    for round in 0..ROUNDS {
        for (i, (rel, len)) in names.iter().enumerate() {
            if !rng.gen_bool(0.5) {
                continue;
            }
            let full = pair.source.join(rel);
            let mut data = std::fs::read(&full).unwrap();
            match rng.gen_range(0..3) {
                // A whole new version, a little longer or shorter.
                0 => data = content(len + rng.gen_range(0..5000), 1000 * round + i as u64),
                // Bytes changed in place (a delta for the large ones).
                1 => {
                    let at = rng.gen_range(0..data.len().max(1));
                    let patch = content(rng.gen_range(1..20_000), round ^ 77);
                    let end = (at + patch.len()).min(data.len());
                    data[at..end].copy_from_slice(&patch[..end - at]);
                }
                _ => data.extend_from_slice(&content(rng.gen_range(1..3000), round + 5)),
            }
            if rng.gen_bool(0.5) {
                record_and_write(&pair, rel, &data, &mut mtime);
            } else {
                // Written in place through the open file, as an application would.
                versions
                    .lock()
                    .unwrap()
                    .entry(PathBuf::from(rel))
                    .or_default()
                    .insert(hash(&data));
                let mut f = std::fs::File::options().write(true).open(&full).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                f.write_all(&data).unwrap();
                f.set_len(data.len() as u64).unwrap();
                drop(f);
                mtime += 1;
                set_mtime(&full, mtime);
            }
            batcher.on_change(Change::Entry(rp(rel)), now);
        }
        now += DELAY;
        match rng.gen_range(0..6) {
            0 => {
                pair.transport
                    .arm(Some(cut_at(rng.gen_range(0..4), true, rng.gen())));
                cuts += 1;
            }
            1 => {
                pair.transport
                    .arm(Some(cut_at(rng.gen_range(0..6), false, rng.gen())));
                cuts += 1;
            }
            _ => {}
        }
        let runtime = rt();
        while let Some(batch) = batcher.poll(now) {
            let outcome = runtime.block_on(pair.send(batch));
            if let Outcome::Done { error, retry } = &outcome {
                assert!(error.is_none() && retry.is_empty(), "{error:?} {retry:?}");
            }
            let failed = matches!(outcome, Outcome::Unreachable { .. });
            now += 1;
            batcher.on_outcome(outcome, now);
            if failed {
                pair.transport.cut.store(false, Ordering::Relaxed);
                if rng.gen_bool(0.3) {
                    pair.restart_receiver();
                    restarts += 1;
                }
                now = batcher.next_deadline().unwrap_or(now);
            }
        }
        pair.transport.arm(None);
    }
    let seen = drive(&pair, &mut batcher, &mut now);
    assert!(seen.iter().all(|s| *s == "done"), "{seen:?}");
    assert_converged(&pair);
    stop.store(true, Ordering::Relaxed);
    let report = handle.join().unwrap();
    println!(
        "{} reads ({} of large files) in {:.1}s during {ROUNDS} rounds, {cuts} cuts, {restarts} receiver restarts, {} files sent ({} deltas)",
        report.reads,
        report.large_reads,
        started.elapsed().as_secs_f64(),
        counter(&pair.counters.files_sent),
        counter(&pair.counters.delta_files),
    );
    assert!(
        report.violations.is_empty(),
        "torn reads: {:#?}",
        report.violations
    );
    assert!(
        report.reads > 200 && report.large_reads > 20,
        "the reader hardly read: {report:?}"
    );
    let multi = report.seen.values().filter(|v| v.len() > 3).count();
    assert!(multi >= 3, "the reader saw few versions change under it");
    assert!(cuts > 0 && counter(&pair.counters.delta_files) > 0);
}
