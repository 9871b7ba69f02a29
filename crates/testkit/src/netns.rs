//! The network-namespace lab: a private switch (a Linux bridge in its own
//! namespace), one namespace per node and one for a client, each wired to the
//! bridge by a veth pair. Owns creating and destroying those namespaces, the
//! processes started in them, and the faults injected into their links.
//!
//! Addresses come from 198.18.0.0/24 (RFC 2544 benchmark range) and exist only
//! inside the lab's namespaces: node `i` (1-based) is 198.18.0.(10+i), the
//! client 198.18.0.100, VIP candidates 198.18.0.200 and up.
//!
//! Nothing here is global: every interface is created inside a lab namespace
//! (the veth's switch end directly in the switch namespace, its node end moved
//! straight into the node namespace), so two labs never collide on interface
//! names and the host's own network is never touched.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Where `ip netns` keeps its bind mounts; a namespace named N is `/run/netns/N`.
pub const NETNS_DIR: &str = "/run/netns";
/// Name of the node-side interface in every node and client namespace.
pub const NODE_IFACE: &str = "eth0";
/// Prefix length of the lab subnet.
pub const PREFIX_LEN: u8 = 24;
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

const BRIDGE: &str = "br0";
/// The nftables table (bridge family, in the switch namespace) that holds partitions.
const PARTITION_TABLE: &str = "uphold_lab";
/// Every lab has at most this many nodes, so addresses 10+i stay below the client's.
pub const MAX_NODES: usize = 89;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Address of node `i` (1-based): 198.18.0.(10+i).
pub fn node_addr(i: usize) -> Ipv4Addr {
    // Callers go through `Lab::node_ns` range checks; clamp anyway so a bad index
    // yields a wrong address in an error message rather than a panic.
    let last = u8::try_from(10 + i.min(MAX_NODES)).unwrap_or(99);
    Ipv4Addr::new(198, 18, 0, last)
}

/// VIP candidate `k` (0-based): 198.18.0.(200+k), k < 55.
pub fn vip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 200u8.saturating_add(k))
}

/// Name of node `i` as the HA configs and the test service use it: `n1`, `n2`, ...
pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Parses `nX` back to its 1-based index.
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok().filter(|i| *i >= 1)
}

/// A running lab. Dropping it kills every process inside its namespaces and
/// deletes the namespaces and its scratch directory (kept when
/// `UPHOLD_LAB_KEEP=1` or [`Lab::keep_dir`] was called, for post-mortems).
#[derive(Debug)]
pub struct Lab {
    /// `<prefix>-<pid>-<counter>`; every namespace name starts with it.
    id: String,
    nodes: usize,
    /// Namespaces actually created, in creation order (the switch first), so a
    /// half-built lab is torn down exactly as far as it got.
    created: Vec<String>,
    dir: PathBuf,
    keep_dir: bool,
    /// Process groups started by `spawn_in`; killed on drop even if they left
    /// the namespace's process list in some odd way.
    groups: Mutex<Vec<i32>>,
    partitioned: Mutex<BTreeSet<usize>>,
}

impl Lab {
    /// Builds a lab of `nodes` nodes plus a client. Also removes leftovers of
    /// earlier runs with the same prefix whose process is gone.
    ///
    /// `prefix` must be short, lowercase ASCII letters, digits or `-`.
    pub fn create(prefix: &str, nodes: usize) -> Result<Lab> {
        if prefix.is_empty()
            || prefix.len() > 16
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("lab prefix {prefix:?} must be 1-16 characters of a-z, 0-9 or '-'");
        }
        if nodes == 0 || nodes > MAX_NODES {
            bail!("a lab has 1..={MAX_NODES} nodes, {nodes} requested");
        }
        remove_stale(prefix);
        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{prefix}-{pid}-{n}");
        let dir = std::env::temp_dir().join(&id);
        let mut lab = Lab {
            id,
            nodes,
            created: Vec::new(),
            dir,
            keep_dir: std::env::var("UPHOLD_LAB_KEEP").is_ok_and(|v| v == "1"),
            groups: Mutex::new(Vec::new()),
            partitioned: Mutex::new(BTreeSet::new()),
        };
        // From here on an early return drops `lab`, which removes whatever was made.
        fs::create_dir_all(&lab.dir)
            .with_context(|| format!("creating lab directory {}", lab.dir.display()))?;
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch_ns();
        self.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        // No STP (ports forward at once) and no IGMP snooping (VRRP multicast and
        // ARP must flood exactly as on a dumb switch).
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        for i in 1..=self.nodes {
            let ns = self.node_ns(i)?;
            self.attach(&ns, &switch_port(&node_name(i)), node_addr(i))?;
        }
        let client = self.client_ns();
        self.attach(&client, &switch_port("c"), CLIENT_ADDR)?;
        Ok(())
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        Ok(())
    }

    fn attach(&mut self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        let sw = self.switch_ns();
        self.add_ns(ns)?;
        ip(&[
            "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", NODE_IFACE, "netns", ns,
        ])?;
        ip(&["-n", &sw, "link", "set", port, "master", BRIDGE, "up"])?;
        let cidr = format!("{addr}/{PREFIX_LEN}");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", NODE_IFACE])?;
        ip(&["-n", ns, "link", "set", NODE_IFACE, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// `<prefix>-<pid>-<counter>`, the common start of all namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Number of nodes (the client not counted).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Scratch directory for configs, pid files and logs (`/tmp/<id>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep the scratch directory after drop (namespaces are still removed).
    pub fn keep_dir(&mut self, keep: bool) {
        self.keep_dir = keep;
    }

    /// Namespace of node `i` (1-based).
    pub fn node_ns(&self, i: usize) -> Result<String> {
        if i == 0 || i > self.nodes {
            bail!("lab {} has nodes 1..={}, not {i}", self.id, self.nodes);
        }
        Ok(format!("{}-{}", self.id, node_name(i)))
    }

    /// Namespace of the client.
    pub fn client_ns(&self) -> String {
        format!("{}-c", self.id)
    }

    /// Namespace holding the bridge.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.id)
    }

    /// Path of a namespace's handle, for `setns`.
    pub fn ns_path(ns: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(ns)
    }

    /// A command that runs `argv` inside namespace `ns` (`ip netns exec NS ...`).
    /// `ip` execs the program, so the child's pid is the program's pid.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: &str, argv: &[S]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd.args(argv);
        cmd
    }

    /// Runs `argv` in `ns` to completion and fails unless it exits 0; the error
    /// carries its stderr.
    pub fn run<S: AsRef<OsStr>>(&self, ns: &str, argv: &[S]) -> Result<Output> {
        let out = self
            .exec(ns, argv)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} in {ns}", show_argv(argv)))?;
        if !out.status.success() {
            bail!(
                "{} in {ns} failed ({}): {}",
                show_argv(argv),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Starts `argv` in `ns` as the leader of a new process group (its pgid is its
    /// pid), stdout and stderr appended to `log_path`. The lab kills the group on
    /// drop; the caller should still `wait` the child to reap it. The child
    /// enters `ns` just after the fork (inside `ip netns exec`), so it may not be
    /// listed by [`Lab::pids_in`] the instant this returns.
    pub fn spawn_in<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        argv: &[S],
        log_path: &Path,
    ) -> Result<Child> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log {}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .with_context(|| format!("duplicating log handle {}", log_path.display()))?;
        let child = self
            .exec(ns, argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} in {ns}", show_argv(argv)))?;
        if let Ok(pgid) = i32::try_from(child.id()) {
            if let Ok(mut g) = self.groups.lock() {
                g.push(pgid);
            }
        }
        Ok(child)
    }

    /// Cuts node `i` off the switch: sets the **switch-side** veth end down, so
    /// the node sees carrier loss on its `eth0` (NO-CARRIER, like a pulled cable)
    /// while its own interface stays administratively up with its addresses.
    pub fn link_down(&self, i: usize) -> Result<()> {
        self.node_ns(i)?;
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &switch_port(&node_name(i)),
            "down",
        ])
    }

    /// Undoes [`Lab::link_down`].
    pub fn link_up(&self, i: usize) -> Result<()> {
        self.node_ns(i)?;
        ip(&[
            "-n",
            &self.switch_ns(),
            "link",
            "set",
            &switch_port(&node_name(i)),
            "up",
        ])
    }

    /// Cuts node `i` off from the other nodes while the client still reaches
    /// every node: a bridge-family nftables table in the switch namespace drops
    /// every frame between node `i`'s port and the other nodes' ports. Filtering
    /// frames at the switch (instead of IP addresses inside the node) also stops
    /// VRRP multicast adverts and ARP, which an address filter would let through.
    pub fn partition_from_peers(&self, i: usize) -> Result<()> {
        self.node_ns(i)?;
        let mut set = self
            .partitioned
            .lock()
            .map_err(|_| anyhow!("partition state poisoned"))?;
        set.insert(i);
        self.apply_partitions(&set)
    }

    /// Undoes [`Lab::partition_from_peers`] for node `i`.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.node_ns(i)?;
        let mut set = self
            .partitioned
            .lock()
            .map_err(|_| anyhow!("partition state poisoned"))?;
        set.remove(&i);
        self.apply_partitions(&set)
    }

    fn apply_partitions(&self, cut: &BTreeSet<usize>) -> Result<()> {
        // Rebuilt whole each time: `add` makes the delete valid when the table
        // does not exist yet, and one `nft -f` applies atomically.
        let mut rules = format!(
            "add table bridge {PARTITION_TABLE}\ndelete table bridge {PARTITION_TABLE}\n\
             table bridge {PARTITION_TABLE} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n"
        );
        for &i in cut {
            let me = switch_port(&node_name(i));
            let peers: Vec<String> = (1..=self.nodes)
                .filter(|&j| j != i)
                .map(|j| format!("\"{}\"", switch_port(&node_name(j))))
                .collect();
            if peers.is_empty() {
                continue;
            }
            let peers = peers.join(", ");
            rules.push_str(&format!("  iifname \"{me}\" oifname {{ {peers} }} drop\n"));
            rules.push_str(&format!("  iifname {{ {peers} }} oifname \"{me}\" drop\n"));
        }
        rules.push_str(" }\n}\n");
        let sw = self.switch_ns();
        let mut child = self
            .exec(&sw, &["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running nft in {sw} (is the nftables package installed?)"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .with_context(|| format!("writing nft rules in {sw}"))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for nft in {sw}"))?;
        if !out.status.success() {
            bail!(
                "nft in {sw} failed ({}): {}\nrules:\n{rules}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Pids of every process currently inside namespace `ns`.
    pub fn pids_in(ns: &str) -> Vec<i32> {
        let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(groups) = self.groups.lock() {
            for &g in groups.iter() {
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            }
        }
        for ns in self.created.iter().rev() {
            destroy_ns(ns);
        }
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lab {}: kept {}", self.id, self.dir.display());
        }
    }
}

/// Sends `sig` to every process of group `pgid` (as started by `spawn_in`).
pub fn kill_group(pgid: i32, sig: Signal) -> Result<()> {
    if pgid <= 1 {
        bail!("refusing to signal process group {pgid}");
    }
    killpg(Pid::from_raw(pgid), sig)
        .with_context(|| format!("sending {sig} to process group {pgid}"))
}

/// Sends `sig` to the single process `pid`.
pub fn signal_pid(pid: i32, sig: Signal) -> Result<()> {
    if pid <= 1 {
        bail!("refusing to signal pid {pid}");
    }
    kill(Pid::from_raw(pid), sig).with_context(|| format!("sending {sig} to pid {pid}"))
}

/// Whether `pid` names a live (or zombie) process.
pub fn pid_alive(pid: i32) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), None::<Signal>).is_ok()
}

/// Alive and not a zombie: an exited child nobody reaped yet counts as dead.
pub fn process_running(pid: i32) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn switch_port(member: &str) -> String {
    // Lives only in the lab's own switch namespace, so it need not be globally
    // unique and stays well under the 15-byte interface-name limit.
    format!("v-{member}")
}

fn destroy_ns(ns: &str) {
    // Two passes: a process may fork between listing and killing.
    for _ in 0..2 {
        for pid in Lab::pids_in(ns) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("lab cleanup: {e:#}");
    }
}

/// Removes `<prefix>-<pid>-<n>-*` namespaces (and `/tmp/<prefix>-<pid>-<n>`
/// directories) left by a process that no longer exists.
fn remove_stale(prefix: &str) {
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = stale_owner(prefix, &name) {
                if !pid_alive(pid) {
                    eprintln!("lab: removing stale namespace {name} (pid {pid} is gone)");
                    destroy_ns(&name);
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Directories are named exactly `<prefix>-<pid>-<n>`; add a suffix to reuse the parser.
            if let Some(pid) = stale_owner(prefix, &format!("{name}-dir")) {
                if !pid_alive(pid) && e.path().is_dir() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// For a name `<prefix>-<pid>-<counter>-<rest>`, the pid.
fn stale_owner(prefix: &str, name: &str) -> Option<i32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let counter = parts.next()?;
    let tail = parts.next()?;
    if tail.is_empty()
        || counter.is_empty()
        || !counter.bytes().all(|b| b.is_ascii_digit())
        || !pid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    pid.parse().ok()
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn show_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `contents` to `path`, creating parent directories.
pub fn write_file(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_owner_parses_only_our_names() {
        assert_eq!(stale_owner("uph", "uph-123-4-n1"), Some(123));
        assert_eq!(stale_owner("uph", "uph-123-4-sw"), Some(123));
        assert_eq!(stale_owner("uph", "uph-lab-123-4-n1"), None);
        assert_eq!(stale_owner("uph", "uphx-123-4-n1"), None);
        assert_eq!(stale_owner("uph", "uph-123-4"), None);
        assert_eq!(stale_owner("uph", "uph-12a-4-n1"), None);
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(node_addr(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(node_addr(3), Ipv4Addr::new(198, 18, 0, 13));
        assert_eq!(vip(0), Ipv4Addr::new(198, 18, 0, 200));
        assert_eq!(node_index("n2"), Some(2));
        assert_eq!(node_index("n0"), None);
        assert_eq!(node_index("x1"), None);
    }
}
