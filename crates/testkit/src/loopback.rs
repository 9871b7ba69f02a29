//! Real `uphold run` members on loopback addresses, without root: a config
//! with free ports, TLS material from `uphold init`, each daemon in its own
//! process group (so a test can SIGKILL it the way a crash or the OOM killer
//! does), and the local API read as JSON. Used by tests of whole daemons.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;

/// A free loopback port (bound and released; the test binds it again at once).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free loopback ports (for port ranges); see
/// [`uphold_os::loopback::free_port_range`].
pub fn free_ports(n: u16) -> u16 {
    uphold_os::loopback::free_port_range(n).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `cond` every 20 ms until it holds, or fails after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// [`wait_until`] for a test: panics with the same message on timeout.
pub fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    if let Err(e) = wait_until(what, limit, cond) {
        panic!("{e}");
    }
}

/// [`wait_for`] inside a tokio runtime: sleeps without blocking the runtime.
pub async fn wait_for_async(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET /v1/status` on a member's local API; Null when it does not answer.
pub fn status(api: u16) -> serde_json::Value {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", api)) else {
        return serde_json::Value::Null;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /v1/status HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// One member as configured: its name and ports.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub port: u16,
    pub api: u16,
}

/// A cluster config on loopback and the daemons running it.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub members: Vec<Member>,
    uphold: PathBuf,
    running: Vec<Option<Child>>,
}

impl Cluster {
    /// Writes a config for `names` (all nodes) with `extra` appended (groups and
    /// their resources, in TOML) and makes its TLS material. `{dir}` in `extra`
    /// stands for the cluster's directory.
    pub fn create(uphold: &Path, dir: &Path, names: &[&str], extra: &str) -> Result<Cluster> {
        let members: Vec<Member> = names
            .iter()
            .map(|n| Member {
                name: n.to_string(),
                port: free_port(),
                api: free_port(),
            })
            .collect();
        let mut text = format!(
            "[cluster]\nname = \"loop\"\nstate_dir = \"{d}/state/{{node}}\"\ntls_dir = \"{d}/tls\"\n",
            d = dir.display()
        );
        for m in &members {
            text.push_str(&format!(
                "[[cluster.member]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n",
                m.name, m.port, m.api
            ));
        }
        text.push_str(&extra.replace("{dir}", &dir.display().to_string()));
        let config = dir.join("uphold.toml");
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let out = Command::new(uphold)
            .args(["init", "--config"])
            .arg(&config)
            .output()
            .context("running uphold init")?;
        if !out.status.success() {
            bail!("uphold init: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Cluster {
            dir: dir.to_path_buf(),
            config,
            running: members.iter().map(|_| None).collect(),
            members,
            uphold: uphold.to_path_buf(),
        })
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    /// Starts member `i` in its own process group, its stderr appended to its log.
    pub fn start(&mut self, i: usize) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let child = Command::new(&self.uphold)
            .args(["run", "--node", &self.members[i].name, "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting uphold run")?;
        self.running[i] = Some(child);
        Ok(())
    }

    /// SIGKILL to member `i`'s whole process group (its guard lives in its own
    /// session and survives, as after a real crash).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.running[i].take() {
            crate::netns::kill_group(child.id() as i32, Signal::SIGKILL)?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn api(&self, i: usize) -> u16 {
        self.members[i].api
    }

    /// Who this member's status says runs `group`, once its own phase is
    /// "running" there.
    pub fn running_on(&self, group: &str) -> Option<String> {
        self.members.iter().find_map(|m| {
            let st = status(m.api);
            let groups = st["groups"].as_array()?;
            let g = groups.iter().find(|g| g["name"] == group)?;
            (g["owner"].as_str() == Some(m.name.as_str())
                && g["local_phase"].as_str() == Some("running"))
            .then(|| m.name.clone())
        })
    }

    /// The last lines of every member's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        (0..self.members.len())
            .map(|i| {
                format!(
                    "--- {} ---\n{}",
                    self.members[i].name,
                    crate::deploy::tail(&self.log_path(i), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    /// SIGKILL, not SIGTERM: a clean stop of the last members waits for peers
    /// to take their groups. Each guard sees its daemon go and undoes at once.
    fn drop(&mut self) {
        for child in self.running.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = crate::netns::kill_group(child.id() as i32, Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}
