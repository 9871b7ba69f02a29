//! The HA implementations the lab can run on its nodes — uphold and keepalived
//! (advert every 1 s, or as fast as keepalived accepts) — with the same test
//! service, VIP and health check, so faults hit both the same way. Owns their
//! config files, their processes, and where their pid files live.

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::netns::{
    kill_group, node_addr, node_name, vip, write_file, Lab, NODE_IFACE, PREFIX_LEN,
};

/// Port of the test service on every node.
pub const SERVICE_PORT: u16 = 8080;
/// Port uphold members talk to each other on.
pub const UPHOLD_PORT: u16 = 7400;
/// VRRP router id used for the keepalived runs.
pub const VRRP_ID: u8 = 51;

/// Which HA implementation runs on the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Impl {
    /// `uphold run`, one config file per node, default timing.
    Uphold,
    /// `uphold run` with the fast timing a LAN allows: `lease = "400ms"` (renewed
    /// every 100 ms) and Raft at a 50 ms heartbeat with 150–300 ms elections.
    #[value(name = "uphold-400ms")]
    #[serde(rename = "uphold-400ms")]
    UpholdFast,
    /// keepalived, `advert_int 1`, check script every 1 s.
    #[value(name = "keepalived-1s")]
    #[serde(rename = "keepalived-1s")]
    Keepalived1s,
    /// keepalived, VRRPv3 `advert_int 0.01` (the minimum it accepts) and the
    /// check script every 1 s (its minimum: the interval is whole seconds).
    KeepalivedFast,
}

impl Impl {
    pub const ALL: [Impl; 4] = [
        Impl::Uphold,
        Impl::UpholdFast,
        Impl::Keepalived1s,
        Impl::KeepalivedFast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Uphold => "uphold",
            Impl::UpholdFast => "uphold-400ms",
            Impl::Keepalived1s => "keepalived-1s",
            Impl::KeepalivedFast => "keepalived-fast",
        }
    }

    pub fn from_name(s: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == s)
    }

    /// Whether this is uphold (any timing) rather than keepalived.
    pub fn is_uphold(self) -> bool {
        matches!(self, Impl::Uphold | Impl::UpholdFast)
    }

    /// The `[cluster]` timing lines this variant sets (none: uphold's defaults).
    fn uphold_timing(self) -> &'static [&'static str] {
        match self {
            Impl::UpholdFast => &[
                "lease = \"400ms\"",
                "renew_interval = \"100ms\"",
                "heartbeat_interval = \"50ms\"",
                "election_timeout_min = \"150ms\"",
                "election_timeout_max = \"300ms\"",
            ],
            _ => &[],
        }
    }
}

/// Programs the lab runs.
#[derive(Clone, Debug)]
pub struct Tools {
    /// `uphold-testsvc`.
    pub testsvc: PathBuf,
    /// The uphold binary; needed only for the uphold variants.
    pub uphold: Option<PathBuf>,
    /// `keepalived`; needed only for the keepalived variants.
    pub keepalived: PathBuf,
    /// Extra `[cluster]` lines for uphold, each `key = value` in TOML (timing such
    /// as `lease = "400ms"`); empty keeps uphold's defaults.
    pub uphold_settings: Vec<String>,
    /// How often uphold runs the service check, in ms. keepalived's vrrp_script
    /// runs every 1 s (its minimum); uphold's failover rows check every 500 ms,
    /// the idle row as often as keepalived so both pay for the same checks.
    pub uphold_check_interval_ms: u64,
    /// How long uphold's node 1 runs before the others start, so that it is
    /// the first candidate and usually becomes the Raft leader (0: all at once).
    pub uphold_head_start: Duration,
}

impl Tools {
    /// `uphold-testsvc` from `$UPHOLD_TESTSVC`, else next to the running
    /// executable (cargo puts binaries in `target/<profile>/` and test
    /// executables one level deeper, in `deps/`), keepalived from PATH or
    /// /usr/sbin.
    pub fn discover(uphold: Option<PathBuf>) -> Result<Tools> {
        let exe = std::env::current_exe().context("locating own executable")?;
        let testsvc = std::env::var_os("UPHOLD_TESTSVC")
            .map(PathBuf::from)
            .or_else(|| {
                exe.ancestors()
                    .skip(1)
                    .take(2)
                    .map(|d| d.join("uphold-testsvc"))
                    .find(|p| p.is_file())
            });
        let testsvc = testsvc.ok_or_else(|| {
            anyhow!(
                "uphold-testsvc not found next to {}; build it (cargo build -p uphold-testkit) or set UPHOLD_TESTSVC",
                exe.display()
            )
        })?;
        let keepalived = crate::find_program("keepalived")
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/keepalived"));
        Ok(Tools {
            testsvc,
            uphold,
            keepalived,
            uphold_settings: Vec::new(),
            uphold_check_interval_ms: 500,
            uphold_head_start: Duration::ZERO,
        })
    }
}

/// One HA daemon, leader of its own process group.
#[derive(Debug)]
pub struct Daemon {
    /// 1-based node index.
    pub node: usize,
    pub child: Child,
    /// Process group (= the daemon's pid).
    pub pgid: i32,
    pub log: PathBuf,
}

/// The HA implementation running on every node of a lab. Dropping it kills and
/// reaps the daemons (the lab kills whatever else runs in its namespaces).
#[derive(Debug)]
pub struct Deployment {
    pub imp: Impl,
    pub daemons: Vec<Daemon>,
    pub vip: Ipv4Addr,
    pub port: u16,
}

impl Deployment {
    pub fn daemon(&self, node: usize) -> Result<&Daemon> {
        self.daemons
            .iter()
            .find(|d| d.node == node)
            .ok_or_else(|| anyhow!("no daemon on node {node}"))
    }

    /// The last `lines` lines of every daemon's log, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for d in &self.daemons {
            out.push_str(&format!(
                "--- {} ({}):\n",
                node_name(d.node),
                d.log.display()
            ));
            out.push_str(&tail(&d.log, lines));
        }
        out
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            // SIGCONT first would not matter: SIGKILL also ends stopped processes.
            let _ = kill_group(d.pgid, Signal::SIGKILL);
            let _ = d.child.wait();
        }
    }
}

/// Directory of node `i` inside the lab directory.
pub fn node_dir(lab: &Lab, i: usize) -> PathBuf {
    lab.dir().join(node_name(i))
}

/// Pid file of the test service on node `i`, whoever started it.
pub fn service_pidfile(lab: &Lab, i: usize) -> PathBuf {
    node_dir(lab, i).join("svc.pid")
}

/// The argv that starts node `i`'s service (replies with the node's name).
pub fn service_start_argv(tools: &Tools, lab: &Lab, i: usize) -> Vec<String> {
    vec![
        tools.testsvc.display().to_string(),
        "start".into(),
        "--listen".into(),
        format!("0.0.0.0:{SERVICE_PORT}"),
        "--reply".into(),
        node_name(i),
        "--pidfile".into(),
        service_pidfile(lab, i).display().to_string(),
    ]
}

pub fn service_stop_argv(tools: &Tools, lab: &Lab, i: usize) -> Vec<String> {
    vec![
        tools.testsvc.display().to_string(),
        "stop".into(),
        "--pidfile".into(),
        service_pidfile(lab, i).display().to_string(),
    ]
}

pub fn service_check_argv(tools: &Tools) -> Vec<String> {
    vec![
        tools.testsvc.display().to_string(),
        "check".into(),
        "--addr".into(),
        format!("127.0.0.1:{SERVICE_PORT}"),
    ]
}

/// Starts `imp` on every node of `lab`, with VIP 198.18.0.200.
pub fn start(lab: &Lab, imp: Impl, tools: &Tools) -> Result<Deployment> {
    let mut dep = Deployment {
        imp,
        daemons: Vec::new(),
        vip: vip(0),
        port: SERVICE_PORT,
    };
    for i in 1..=lab.nodes() {
        std::fs::create_dir_all(node_dir(lab, i))
            .with_context(|| format!("creating {}", node_dir(lab, i).display()))?;
    }
    match imp {
        Impl::Uphold | Impl::UpholdFast => start_uphold(lab, imp, tools, &mut dep)?,
        Impl::Keepalived1s | Impl::KeepalivedFast => start_keepalived(lab, imp, tools, &mut dep)?,
    }
    Ok(dep)
}

// ---------------------------------------------------------------------------
// uphold

/// A TOML basic string. JSON string escapes (`\"`, `\\`, `\n`, `\u00XX`) are all
/// valid TOML basic-string escapes, so serde_json does the quoting.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn toml_array(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", v.join(", "))
}

/// uphold's config for node `i` of `lab`. One file per node because the
/// service's reply and pid file differ per node; everything else is identical.
pub fn uphold_config(lab: &Lab, imp: Impl, tools: &Tools, i: usize) -> String {
    let dir = lab.dir().display().to_string();
    let n = lab.nodes();
    let mut s = String::new();
    s.push_str("[cluster]\nname = \"lab\"\n");
    s.push_str(&format!(
        "state_dir = {}\n",
        toml_str(&format!("{dir}/{{node}}/state"))
    ));
    s.push_str(&format!("tls_dir = {}\n", toml_str(&format!("{dir}/tls"))));
    for line in imp.uphold_timing() {
        s.push_str(line);
        s.push('\n');
    }
    for line in &tools.uphold_settings {
        s.push_str(line);
        s.push('\n');
    }
    for j in 1..=n {
        s.push_str(&format!(
            "\n[[cluster.member]]\nname = \"{}\"\naddress = \"{}:{UPHOLD_PORT}\"\n",
            node_name(j),
            node_addr(j)
        ));
    }
    let names: Vec<String> = (1..=n).map(node_name).collect();
    s.push_str(&format!(
        "\n[[group]]\nname = \"vip\"\nnodes = {}\n",
        toml_array(&names)
    ));
    s.push_str(&format!(
        "\n[[group.resource]]\ntype = \"ip\"\naddress = \"{}/{PREFIX_LEN}\"\ninterface = \"{NODE_IFACE}\"\n",
        vip(0)
    ));
    s.push_str(&format!(
        "\n[[group.resource]]\ntype = \"exec\"\nname = \"svc\"\nstart = {}\nstop = {}\nmonitor = {}\ninterval = \"{}ms\"\n",
        toml_array(&service_start_argv(tools, lab, i)),
        toml_array(&service_stop_argv(tools, lab, i)),
        toml_array(&service_check_argv(tools)),
        tools.uphold_check_interval_ms,
    ));
    s
}

fn start_uphold(lab: &Lab, imp: Impl, tools: &Tools, dep: &mut Deployment) -> Result<()> {
    let uphold = tools
        .uphold
        .as_ref()
        .ok_or_else(|| anyhow!("--uphold-bin is required for impl uphold"))?;
    if !uphold.is_file() {
        bail!(
            "uphold binary {} does not exist (cargo build --release -p uphold)",
            uphold.display()
        );
    }
    let members: Vec<String> = (1..=lab.nodes()).map(node_name).collect();
    let tls = lab.dir().join("tls");
    let out = std::process::Command::new(uphold)
        .arg("init")
        .arg("--dir")
        .arg(&tls)
        .args(["--cluster", "lab", "--members", &members.join(",")])
        .output()
        .with_context(|| format!("running {} init", uphold.display()))?;
    if !out.status.success() {
        bail!(
            "{} init failed ({}): {}",
            uphold.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for i in 1..=lab.nodes() {
        let cfg = node_dir(lab, i).join("uphold.toml");
        write_file(&cfg, &uphold_config(lab, imp, tools, i))?;
        let log = node_dir(lab, i).join("uphold.log");
        let argv = vec![
            uphold.display().to_string(),
            "run".into(),
            "--config".into(),
            cfg.display().to_string(),
            "--node".into(),
            node_name(i),
        ];
        let child = lab.spawn_in(&lab.node_ns(i)?, &argv, &log)?;
        let pgid = pid_of(&child)?;
        dep.daemons.push(Daemon {
            node: i,
            child,
            pgid,
            log,
        });
        if i == 1 && !tools.uphold_head_start.is_zero() {
            // A head start, not a wait for a condition: node 1 cannot lead
            // alone, it only gets to ask for votes first.
            std::thread::sleep(tools.uphold_head_start);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// keepalived

/// keepalived.conf for node `i`: one VRRP instance on eth0, priorities
/// 150/100/50 (node 1 starts as master), default preemption, and the service
/// check as a vrrp_script whose failure puts the instance into FAULT.
pub fn keepalived_config(tools: &Tools, imp: Impl, i: usize) -> String {
    let fast = imp == Impl::KeepalivedFast;
    let priority = match i {
        1 => 150,
        2 => 100,
        _ => 50u32
            .saturating_sub(u32::try_from(i).unwrap_or(50).saturating_sub(3))
            .max(1),
    };
    let state = if i == 1 { "MASTER" } else { "BACKUP" };
    // VRRPv2 advert_int is whole seconds; sub-second adverts need VRRPv3.
    let (version, advert) = if fast { ("3", "0.01") } else { ("2", "1") };
    let check = service_check_argv(tools).join(" ");
    format!(
        "global_defs {{
  router_id {name}
  script_user root
  vrrp_version {version}
}}

vrrp_script chk_svc {{
  script \"{check}\"
  interval 1
  timeout 1
  fall 1
  rise 1
}}

vrrp_instance VI_1 {{
  state {state}
  interface {NODE_IFACE}
  virtual_router_id {VRRP_ID}
  priority {priority}
  advert_int {advert}
  virtual_ipaddress {{
    {vip}/{PREFIX_LEN} dev {NODE_IFACE}
  }}
  track_script {{
    chk_svc
  }}
}}
",
        name = node_name(i),
        vip = vip(0),
    )
}

fn start_keepalived(lab: &Lab, imp: Impl, tools: &Tools, dep: &mut Deployment) -> Result<()> {
    if !tools.keepalived.is_file() {
        bail!(
            "keepalived not found at {} (apt-get install keepalived)",
            tools.keepalived.display()
        );
    }
    for i in 1..=lab.nodes() {
        let ns = lab.node_ns(i)?;
        // keepalived only moves the address; the service runs everywhere, as in
        // a typical keepalived deployment.
        lab.run(&ns, &service_start_argv(tools, lab, i))?;
        let d = node_dir(lab, i);
        let conf = d.join("keepalived.conf");
        write_file(&conf, &keepalived_config(tools, imp, i))?;
        let log = d.join("keepalived.log");
        let p = |f: &str| d.join(f).display().to_string();
        let argv = vec![
            tools.keepalived.display().to_string(),
            "--dont-fork".into(),
            "--log-console".into(),
            "--log-detail".into(),
            "--no-syslog".into(),
            "--vrrp".into(),
            "--use-file".into(),
            conf.display().to_string(),
            "--pid".into(),
            p("keepalived.pid"),
            "--vrrp_pid".into(),
            p("vrrp.pid"),
            "--checkers_pid".into(),
            p("checkers.pid"),
        ];
        let child = lab.spawn_in(&ns, &argv, &log)?;
        let pgid = pid_of(&child)?;
        dep.daemons.push(Daemon {
            node: i,
            child,
            pgid,
            log,
        });
        if i == 1 && !tools.uphold_head_start.is_zero() {
            // A head start, not a wait for a condition: node 1 cannot lead
            // alone, it only gets to ask for votes first.
            std::thread::sleep(tools.uphold_head_start);
        }
    }
    Ok(())
}

fn pid_of(child: &Child) -> Result<i32> {
    i32::try_from(child.id()).map_err(|_| anyhow!("pid {} out of range", child.id()))
}

/// Last `lines` lines of a file ("" if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(s) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = s.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = all[from..].join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impl_names_round_trip() {
        for i in Impl::ALL {
            assert_eq!(Impl::from_name(i.name()), Some(i));
            assert_eq!(
                serde_json::to_string(&i).unwrap(),
                format!("\"{}\"", i.name())
            );
        }
    }

    #[test]
    fn toml_strings_are_quoted() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_array(&["x".into(), "y z".into()]), r#"["x", "y z"]"#);
    }
}
