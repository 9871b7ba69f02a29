//! Replication of real trees through a real receiver (in-process transport): what is
//! sent, what arrives, and what is refused.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use uphold_sync::engine::batcher::Outcome;
use uphold_sync::engine::pending::Pending;
use uphold_sync::transport::{CallError, Transport};

/// Metadata a hostile peer might announce for a file it sends.
fn meta(mode: u32) -> uphold_sync::entry::Meta {
    uphold_sync::entry::Meta {
        mode,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mtime_s: 0,
        mtime_ns: 0,
    }
}

#[test]
fn a_tree_arrives_complete_and_a_second_pass_sends_nothing() {
    let pair = Pair::new();
    let s = &pair.source;
    std::fs::create_dir_all(s.join("a/b/c")).unwrap();
    std::fs::write(s.join("a/small"), b"hello").unwrap();
    std::fs::write(s.join("a/b/c/big"), vec![7u8; 3_000_000]).unwrap();
    std::fs::write(s.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("a/small", s.join("link")).unwrap();
    std::fs::set_permissions(s.join("a/small"), std::fs::Permissions::from_mode(0o600)).unwrap();
    rt().block_on(async {
        pair.sync_all().await;
        assert_same(&pair);
        let before = pair.wire_bytes();
        let files = pair
            .counters
            .files_sent
            .load(std::sync::atomic::Ordering::Relaxed);
        pair.sync_all().await;
        assert_eq!(
            pair.counters
                .files_sent
                .load(std::sync::atomic::Ordering::Relaxed),
            files
        );
        assert!(
            pair.wire_bytes() - before < 2_000,
            "an unchanged tree cost {} bytes",
            pair.wire_bytes() - before
        );
    });
}

#[test]
fn a_changed_large_file_travels_as_a_delta_against_the_cached_signature() {
    let pair = Pair::new();
    let mut data: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(pair.source.join("db"), &data).unwrap();
    rt().block_on(async {
        pair.sync_all().await;
        data[4_000_000..4_004_096].fill(0xAB);
        std::fs::write(pair.source.join("db"), &data).unwrap();
        let before = pair.wire_bytes();
        let mut batch = Pending::default();
        batch.add_changed(&rp("db"));
        assert!(matches!(
            pair.send(batch).await,
            Outcome::Done { error: None, .. }
        ));
        let cost = pair.wire_bytes() - before;
        assert_same(&pair);
        assert_eq!(
            pair.counters
                .delta_files
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(cost < 200_000, "4 KiB change in 8 MB cost {cost} bytes");
    });
}

#[test]
fn a_directory_rename_is_a_rename_on_the_target() {
    let pair = Pair::new();
    std::fs::create_dir_all(pair.source.join("old/sub")).unwrap();
    for i in 0..500 {
        std::fs::write(
            pair.source.join(format!("old/sub/f{i}")),
            vec![i as u8; 4096],
        )
        .unwrap();
    }
    rt().block_on(async {
        pair.sync_all().await;
        std::fs::rename(pair.source.join("old"), pair.source.join("new")).unwrap();
        let before = pair.wire_bytes();
        let mut batch = Pending::default();
        batch.add_rename(&rp("old"), &rp("new"), true);
        assert!(matches!(
            pair.send(batch).await,
            Outcome::Done { error: None, .. }
        ));
        assert_same(&pair);
        let cost = pair.wire_bytes() - before;
        assert!(cost < 20_000, "rename of 500 files cost {cost} bytes");
    });
}

#[test]
fn an_emptied_or_missing_source_halts_instead_of_deleting() {
    let pair = Pair::new();
    std::fs::write(pair.source.join("precious"), b"x").unwrap();
    rt().block_on(async {
        pair.sync_all().await;
        std::fs::remove_file(pair.source.join("precious")).unwrap();
        assert!(matches!(
            pair.send(Pending::everything()).await,
            Outcome::Halted { .. }
        ));
        let mut batch = Pending::default();
        batch.add_changed(&rp("precious"));
        assert!(matches!(pair.send(batch).await, Outcome::Halted { .. }));
        std::fs::remove_dir(&pair.source).unwrap();
        assert!(matches!(
            pair.send(Pending::everything()).await,
            Outcome::Halted { .. }
        ));
        assert!(pair.target.join("precious").exists());
    });
}

#[test]
fn a_tree_deeper_than_any_stack_is_deleted_through_the_receiver() {
    // Renames can nest directories on a target past PATH_MAX; deleting such a tree
    // once overflowed the daemon's stack and aborted it (Raft, VIPs and all).
    let pair = Pair::new();
    std::fs::write(pair.source.join("kept"), b"x").unwrap();
    uphold_testkit::trees::deep_tree(&pair.target, "deep", 100_000);
    rt().block_on(pair.sync_all());
    assert!(!pair.target.join("deep").exists());
    assert_eq!(std::fs::read(pair.target.join("kept")).unwrap(), b"x");
}

#[test]
fn a_delta_may_not_write_past_its_announced_size() {
    use uphold_sync::protocol::{DeltaBasis, Request, Response};
    // A peer announces a 100-byte file as a delta against a 1 MiB basis and then
    // sends copies of the whole basis: each chunk once grew the temporary file by
    // up to 16 GB. The first copy past 100 bytes is refused and nothing beyond the
    // announced size is ever on the disk.
    let pair = Pair::new();
    let basis_len: u64 = 1024 * 1024;
    std::fs::write(pair.target.join("big"), vec![7u8; basis_len as usize]).unwrap();
    let block_size = 4096u32;
    let runtime = rt();
    let call = |request| runtime.block_on(pair.transport.call(request));
    let id = match call(Request::Begin {
        set: "www".into(),
        path: rp("big"),
        meta: meta(0o644),
        size: 100,
        delta: Some(DeltaBasis {
            block_size,
            basis_len,
        }),
    }) {
        Ok(Response::Begun { id }) => id,
        other => panic!("begin: {other:?}"),
    };
    let mut data = Vec::new();
    let blocks = basis_len / u64::from(block_size);
    for _ in 0..64 {
        uphold_delta::wire::write_op(
            &mut data,
            &uphold_delta::Op::Copy {
                block_index: 0,
                count: blocks,
            },
        )
        .unwrap();
    }
    let refused = match call(Request::Chunk { id, data }) {
        Err(CallError::Refused(why)) => why,
        other => panic!("the chunk was not refused: {other:?}"),
    };
    assert!(
        refused.contains("would write past the announced length of 100 bytes"),
        "{refused}"
    );
    let temp_bytes: u64 = temp_files(&pair.target)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(temp_bytes <= 100, "{temp_bytes} temporary bytes on disk");
    assert_eq!(
        std::fs::metadata(pair.target.join("big")).unwrap().len(),
        basis_len
    );
}

#[test]
fn a_transfer_that_would_fill_the_target_filesystem_waits() {
    use uphold_sync::protocol::Request;
    let pair = Pair::new();
    let begin = Request::Begin {
        set: "www".into(),
        path: rp("huge"),
        meta: meta(0o644),
        size: u64::MAX / 4,
        delta: None,
    };
    let refused = match rt().block_on(pair.transport.call(begin)) {
        Err(CallError::Refused(why)) => why,
        other => panic!("a transfer larger than the disk began: {other:?}"),
    };
    assert!(refused.contains("bytes free"), "{refused}");
    assert!(temp_files(&pair.target).is_empty());
}

/// Another full pass over an unchanged source compares and sends no file: the
/// sender sees the target as the receiver wrote it.
async fn second_pass_sends_nothing(pair: &Pair) {
    let before = pair.wire_bytes();
    pair.sync_all().await;
    let sent = pair.wire_bytes() - before;
    assert!(sent < 2_000, "a second pass sent {sent} bytes");
}

#[test]
fn setuid_and_setgid_bits_are_not_recreated_unless_the_set_preserves_them() {
    use uphold_sync::protocol::{FileOp, OpResult, Request, Response};
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let pair = Pair::stripping_privileged(Default::default());
    std::fs::write(pair.source.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        pair.source.join("tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::create_dir(pair.source.join("shared")).unwrap();
    std::fs::set_permissions(
        pair.source.join("shared"),
        std::fs::Permissions::from_mode(0o2775),
    )
    .unwrap();
    rt().block_on(async {
        pair.sync_all().await;
        assert_eq!(mode(&pair.target.join("tool")), 0o755);
        assert_eq!(mode(&pair.target.join("shared")), 0o775);
        // The source keeps its bits, and a second pass does not try again.
        second_pass_sends_nothing(&pair).await;
        // A peer that asks for the bits directly does not get them either.
        let setuid = Request::Apply {
            set: "www".into(),
            ops: vec![FileOp::SetMeta {
                path: rp("tool"),
                kind: uphold_sync::entry::Kind::File,
                meta: meta(0o6755),
            }],
        };
        match pair.transport.call(setuid).await {
            Ok(Response::Apply(results)) => assert_eq!(results, vec![OpResult::Done]),
            other => panic!("{other:?}"),
        }
        assert_eq!(mode(&pair.target.join("tool")), 0o755);
    });
    assert_eq!(mode(&pair.source.join("tool")), 0o4755);
}

#[test]
fn only_the_owners_and_groups_a_set_keeps_are_given_on_the_target() {
    use uphold_config::owners::{KeptIds, Ownership};
    use uphold_sync::protocol::{FileOp, OpResult, Request, Response};
    if !uphold_testkit::require_root(
        "only_the_owners_and_groups_a_set_keeps_are_given_on_the_target",
    ) {
        return;
    }
    let owner = |p: &std::path::Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    let pair = Pair::stripping_privileged(Ownership {
        owners: Some(KeptIds::new([33..=33, 2000..=2999])),
        groups: Some(KeptIds::new([33..=33])),
    });
    let chown = |name: &str, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(pair.source.join(name), Some(uid), Some(gid)).unwrap();
    };
    std::fs::write(pair.source.join("page.html"), b"<p>hi</p>").unwrap();
    chown("page.html", 33, 33);
    std::fs::write(pair.source.join("site.php"), b"<?php").unwrap();
    chown("site.php", 2500, 2500);
    std::fs::create_dir(pair.source.join("home")).unwrap();
    chown("home", 1000, 1000);
    std::os::unix::fs::symlink("page.html", pair.source.join("link")).unwrap();
    chown("link", 4321, 33);
    rt().block_on(async {
        pair.sync_all().await;
        assert_eq!(owner(&pair.target.join("page.html")), (33, 33));
        // A kept owner with a group that is not kept.
        assert_eq!(owner(&pair.target.join("site.php")), (2500, 0));
        assert_eq!(owner(&pair.target.join("home")), (0, 0));
        assert_eq!(owner(&pair.target.join("link")), (0, 33));
        // The sender compares as the target writes, so a second pass sends nothing.
        second_pass_sends_nothing(&pair).await;
        // A peer that asks for another owner directly does not get it either.
        let mut wanted = meta(0o644);
        (wanted.uid, wanted.gid) = (4321, 4321);
        let request = Request::Apply {
            set: "www".into(),
            ops: vec![FileOp::SetMeta {
                path: rp("page.html"),
                kind: uphold_sync::entry::Kind::File,
                meta: wanted,
            }],
        };
        match pair.transport.call(request).await {
            Ok(Response::Apply(results)) => assert_eq!(results, vec![OpResult::Done]),
            other => panic!("{other:?}"),
        }
        assert_eq!(owner(&pair.target.join("page.html")), (0, 0));
    });
    assert_eq!(owner(&pair.source.join("site.php")), (2500, 2500));
}

#[test]
fn excluded_entries_are_neither_sent_nor_deleted() {
    let pair = Pair::with_excludes(vec!["*.tmp".into(), "/cache/".into()]);
    std::fs::create_dir_all(pair.source.join("cache")).unwrap();
    std::fs::write(pair.source.join("cache/x"), b"x").unwrap();
    std::fs::write(pair.source.join("a.tmp"), b"x").unwrap();
    std::fs::write(pair.source.join("keep"), b"x").unwrap();
    std::fs::write(pair.target.join("b.tmp"), b"target's own").unwrap();
    rt().block_on(async {
        pair.sync_all().await;
        assert!(!pair.target.join("cache").exists());
        assert!(!pair.target.join("a.tmp").exists());
        assert!(pair.target.join("b.tmp").exists());
        assert!(pair.target.join("keep").exists());
    });
}

#[test]
fn an_unreachable_target_returns_the_batch() {
    let pair = Pair::new();
    std::fs::write(pair.source.join("f"), b"x").unwrap();
    pair.transport
        .cut
        .store(true, std::sync::atomic::Ordering::Relaxed);
    rt().block_on(async {
        match pair.send(Pending::everything()).await {
            Outcome::Unreachable { batch, .. } => assert_eq!(batch, Pending::everything()),
            other => panic!("{other:?}"),
        }
    });
}

/// Cost of the 10,000-file burst through the real receiver, for profiling:
/// `cargo test --release -p uphold-sync --test replicate burst_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn burst_cost() {
    let pair = Pair::new();
    for d in 0..100 {
        let dir = pair.source.join(format!("burst/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f}")), vec![(d * f) as u8; 4096]).unwrap();
        }
    }
    let start = std::time::Instant::now();
    let cpu = |who| {
        let usage = nix::sys::resource::getrusage(who).unwrap();
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(usage.user_time()) + t(usage.system_time())
    };
    let cpu0 = cpu(nix::sys::resource::UsageWho::RUSAGE_SELF);
    rt().block_on(pair.sync_all());
    println!(
        "10k files: {:.2}s wall, {:.2}s cpu, {} bytes on the wire",
        start.elapsed().as_secs_f64(),
        cpu(nix::sys::resource::UsageWho::RUSAGE_SELF) - cpu0,
        pair.wire_bytes()
    );
    assert_same(&pair);
}
