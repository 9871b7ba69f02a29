//! The sending service as `uphold run` runs it, in one process: real inotify on the
//! source, the members' mutual-TLS RPC on loopback, a real receiver. Covers a tree with
//! more directories than the watch limit: changes in the unwatched part still arrive,
//! by periodic comparison, and the status says how many directories are unwatched.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uphold_core::NodeName;
use uphold_proto::{init_ca, issue_member_cert, serve, AllowedPeers, Endpoint, TlsIdentity};
use uphold_sync::path::Excludes;
use uphold_sync::receiver::{Receiver, ReceiverHandler};
use uphold_sync::service::{SyncOptions, SyncService};
use uphold_testkit::loopback::wait_for;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

#[test]
fn past_the_watch_limit_changes_still_arrive_and_status_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    init_ca(&tls, "t", false).unwrap();
    for m in ["a", "b"] {
        issue_member_cert(&tls, "t", &name(m)).unwrap();
    }
    let endpoint = |me: &str| {
        Arc::new(Endpoint::new(
            TlsIdentity::load(&tls, &name(me)).unwrap(),
            "t",
            AllowedPeers::set([name("a"), name("b")]),
        ))
    };
    let source = dir.path().join("src");
    let target = dir.path().join("dst");
    for d in 0..12 {
        std::fs::create_dir_all(source.join(format!("d{d}/inner"))).unwrap();
        std::fs::write(source.join(format!("d{d}/inner/f")), b"first").unwrap();
    }
    let mut set = common::config(&source, &target, Vec::new());
    set.scan_interval = Duration::from_millis(300);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver::new(
        name("b"),
        &[set.clone()],
        Arc::new(|_| false),
        None,
    ));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(serve(
        listener,
        endpoint("b"),
        Arc::new(ReceiverHandler(receiver.clone())),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let service = SyncService::start(
        SyncOptions {
            me: name("a"),
            addresses: HashMap::from([(name("b"), addr)]),
            endpoint: endpoint("a"),
            group_active: Arc::new(|_| false),
            max_watches: Some(5),
        },
        vec![set],
        receiver,
    );
    // The target appears and changes while we look: compare only once it exists.
    let same = || {
        target.exists()
            && std::panic::catch_unwind(|| {
                common::snapshot(&source, &Excludes::none())
                    == common::snapshot(&target, &Excludes::none())
            })
            .unwrap_or(false)
    };
    wait_for("the first copy", Duration::from_secs(30), same);
    let status = service.status();
    let watch = status.sets[0].watch.clone().unwrap();
    assert!(watch.unwatched_dirs > 0, "{watch:?}");

    // Every directory gets a change, watched or not.
    for d in 0..12 {
        std::fs::write(source.join(format!("d{d}/inner/f")), b"second version").unwrap();
    }
    wait_for(
        "changes in unwatched directories",
        Duration::from_secs(30),
        same,
    );
    let target_status = &service.status().sets[0].targets[0];
    // "syncing" while one of the periodic comparisons runs.
    assert!(
        ["up", "syncing"].contains(&target_status.state.as_str()),
        "{target_status:?}"
    );
    assert!(target_status.initial_done);
    service.stop();
    let _ = stop_tx.send(());
}
