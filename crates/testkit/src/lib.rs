//! Test and benchmark infrastructure: the network-namespace lab
//! ([`netns::Lab`]), in-namespace measurement ([`probe`]), the HA
//! implementations the lab can run ([`deploy`]), the failover scenarios
//! ([`scenario`]) and the stress scenarios ([`stress`]) with the host loads they
//! apply ([`pressure`]), shared by the end-to-end tests and `bench/failover`;
//! hostile directory trees ([`trees`]) for the file-handling tests.

pub mod child;
pub mod deploy;
pub mod http_backend;
pub mod loopback;
pub mod netns;
pub mod pressure;
pub mod probe;
pub mod procstat;
pub mod scenario;
pub mod stress;
pub mod trees;

/// Whether a root-only test can run here. Returns false (after printing why)
/// when not root and CI is unset; panics when CI=true, because CI must run it.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if ci() {
        panic!("{test}: needs root (network namespaces) and CI=true; refusing to skip");
    }
    eprintln!(
        "SKIP {test}: needs root for network namespaces (set CI=true to make this a failure)"
    );
    false
}

/// Whether `prog` is found on PATH (or is an existing path). When it is not:
/// false plus a message if CI is unset, a panic when CI=true.
pub fn require_program(test: &str, prog: &str) -> bool {
    if find_program(prog).is_some() {
        return true;
    }
    if ci() {
        panic!("{test}: {prog} is not installed and CI=true; refusing to skip");
    }
    eprintln!("SKIP {test}: {prog} is not installed");
    false
}

/// `prog` as found on PATH (or itself if it contains a slash and exists).
pub fn find_program(prog: &str) -> Option<std::path::PathBuf> {
    if prog.contains('/') {
        let p = std::path::PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    // sbin directories too: test runners often have a user PATH, and
    // keepalived lives in /usr/sbin.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}
