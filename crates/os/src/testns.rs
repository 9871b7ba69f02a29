//! Test-only network namespaces: a fresh namespace holding a veth pair
//! (veth0 <-> veth1, both up), entered from a dedicated thread so that sockets
//! opened there (netlink, packet, ICMPv6) act inside it. Removed on drop, also
//! when the test fails.

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) struct TestNetns {
    name: String,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Root-only tests: skip with a message on a developer machine, fail in CI.
pub(crate) fn require_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        !in_ci(),
        "{what} needs root (network namespaces) and CI=true: failing instead of skipping"
    );
    eprintln!("skipping namespace test {what:?}: needs root (CI is not set, so not failing)");
    false
}

impl TestNetns {
    /// A namespace with veth0/veth1 up, or None (after printing why) when the
    /// test cannot run here.
    pub(crate) fn create_or_skip(tag: &str) -> Option<TestNetns> {
        if !require_root(tag) {
            return None;
        }
        let name = format!(
            "uphold-ostest-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        // From here on Drop removes it, even if the rest of the setup panics.
        let ns = TestNetns { name };
        ns.ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "set", "veth0", "up"]);
        ns.ip(&["link", "set", "veth1", "up"]);
        Some(ns)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...`, panicking with its stderr on failure.
    pub(crate) fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full);
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub(crate) fn run_sync<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
                f()
            });
            match worker.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs an async test body on a current-thread runtime inside the namespace.
    pub(crate) fn run<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        self.run_sync(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(f())
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not remove test namespace {}", self.name);
        }
    }
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
