//! `uphold sync once SET`: a one-shot sender. Compares the whole set with each target
//! over the members' mutual-TLS transport, sends what differs with a progress line, and
//! exits 0 only when every target ended identical.

use crate::check::print_config_errors;
use crate::cli::SyncOnceArgs;
use crate::EXIT_CONFIG;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uphold_config::sync::SyncDirection;
use uphold_sync::engine::batcher::Outcome;
use uphold_sync::engine::pending::Pending;
use uphold_sync::path::Excludes;
use uphold_sync::sender::{hello, run_batch, SenderCounters, SenderSet};
use uphold_sync::status::human_bytes;
use uphold_sync::transport::{RpcTransport, Transport};

pub fn once(args: SyncOnceArgs) -> ExitCode {
    let loaded = match uphold_config::load(&args.select.config) {
        Ok(loaded) => loaded,
        Err(errors) => {
            print_config_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = loaded.config;
    let usage = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(EXIT_CONFIG)
    };
    let Some(set) = config.sync.iter().find(|s| s.name.as_str() == args.set) else {
        let known: Vec<&str> = config.sync.iter().map(|s| s.name.as_str()).collect();
        return usage(format!(
            "no [[sync]] set {:?} in {} (sets: {})",
            args.set,
            args.select.config.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ));
    };
    let Some(cluster) = config.cluster.clone() else {
        return usage("[[sync]] needs a [cluster] section".into());
    };
    let me = match uphold_config::select_member(&cluster, args.select.node.as_deref()) {
        Ok(m) => m.clone(),
        Err(e) => return usage(e.to_string()),
    };
    match &set.direction {
        SyncDirection::Fixed(from) if *from != me.name && !args.force => {
            return usage(format!(
                "set {:?} is sent by {from}, and this is {}; run it there (or pass --force)",
                args.set, me.name
            ));
        }
        SyncDirection::FollowsGroup(group) if !args.force => {
            match crate::status::fetch_status(me.api) {
                Ok(status) => {
                    let here = status.groups.iter().any(|g| {
                        g.name == group.as_str() && g.owner.as_deref() == Some(me.name.as_str())
                    });
                    if !here {
                        return usage(format!(
                            "set {:?} follows group {group}, which does not run on {}; run this where it runs (or pass --force)",
                            args.set, me.name
                        ));
                    }
                }
                Err(e) => {
                    return usage(format!(
                        "cannot tell whether group {group} runs here ({e}); pass --force to send anyway"
                    ))
                }
            }
        }
        _ => {}
    }
    let mut targets = Vec::new();
    for node in set.receivers_of(&me.name) {
        if !args.to.is_empty() && !args.to.iter().any(|t| t == node.as_str()) {
            continue;
        }
        match cluster.member(node.as_str()) {
            Some(m) => targets.push(m.clone()),
            None => return usage(format!("target {node} is not a member")),
        }
    }
    for t in &args.to {
        if !targets.iter().any(|m| m.name.as_str() == t) {
            return usage(format!("--to {t}: not a receiver of set {:?}", args.set));
        }
    }
    let excludes = match Excludes::new(&set.exclude) {
        Ok(ex) => ex,
        Err(e) => return usage(e),
    };
    let endpoint = match crate::run::members::endpoint(&cluster, &me) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sender_set = SenderSet::new(set, set.source_for(&me.name), excludes);
    let rpc = Arc::new(uphold_proto::rpc::RpcClient::new(endpoint));
    let mut all_ok = true;
    for target in targets {
        let transport = RpcTransport::new(
            rpc.clone(),
            target.name.clone(),
            target.address,
            Duration::from_secs(60),
        );
        let counters = SenderCounters::default();
        let label = format!("{} -> {}", set.name, target.name);
        let started = Instant::now();
        let outcome = runtime.block_on(async {
            let with_owner = match hello(&transport, &sender_set.name).await {
                Ok(w) => w,
                Err(e) => return Err(e.to_string()),
            };
            let batch = run_batch(
                &sender_set,
                &transport,
                with_owner,
                Pending::everything(),
                &counters,
            );
            tokio::pin!(batch);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    outcome = &mut batch => return Ok(outcome),
                    _ = tick.tick() => progress(&label, &counters, &transport, started, false),
                }
            }
        });
        progress(&label, &counters, &transport, started, true);
        match outcome {
            Ok(Outcome::Done { error: None, retry }) if retry.is_empty() => {}
            Ok(Outcome::Done { error, .. }) => {
                all_ok = false;
                eprintln!(
                    "{label}: some entries were not sent: {}",
                    error.unwrap_or_else(|| "files changed while read; run again".into())
                );
            }
            Ok(Outcome::Unreachable { error, .. }) => {
                all_ok = false;
                eprintln!("{label}: failed: {error}");
            }
            Ok(Outcome::Halted { reason, .. }) => {
                all_ok = false;
                eprintln!("{label}: HALTED: {reason}");
            }
            Err(e) => {
                all_ok = false;
                eprintln!("{label}: failed: {e}");
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn progress(label: &str, c: &SenderCounters, t: &RpcTransport, started: Instant, last: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let tty = std::io::stderr().is_terminal();
    if !tty && !last && started.elapsed().as_millis() % 2000 >= 250 {
        return;
    }
    let (sent, received) = t.bytes();
    let line = format!(
        "{label}: {} dirs compared, {} files sent ({}), {} deleted, {} renamed, {} on the wire, {:.1}s",
        c.dirs_compared.load(Relaxed),
        c.files_sent.load(Relaxed),
        human_bytes(c.file_bytes.load(Relaxed)),
        c.deletes.load(Relaxed),
        c.renames.load(Relaxed),
        human_bytes(sent + received),
        started.elapsed().as_secs_f64()
    );
    let mut err = std::io::stderr();
    if tty {
        let _ = write!(err, "\r\x1b[2K{line}");
        if last {
            let _ = writeln!(err);
        }
    } else {
        let _ = writeln!(err, "{line}");
    }
}
