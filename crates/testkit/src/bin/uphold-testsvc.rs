//! A tiny TCP service for the failover lab: on every connection it writes one
//! line (the node's name) and closes. Its subcommands are what the HA configs
//! under test use as start, stop and monitor commands (uphold's exec resource,
//! keepalived's vrrp_script), so both implementations manage the same service.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use uphold_testkit::netns::{process_running as is_running, signal_pid};

#[derive(Parser, Debug)]
#[command(
    name = "uphold-testsvc",
    about = "one-line TCP test service for the failover lab"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve in the foreground: each connection gets TEXT + "\n", then is closed.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        reply: String,
    },
    /// Start `serve` detached in its own session, write its pid to PIDFILE, and
    /// return once the port accepts connections. Succeeds at once if the pid in
    /// PIDFILE is already serving.
    Start {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        reply: String,
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Stop the process named by PIDFILE; succeeds if it is already gone.
    Stop {
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Exit 0 if ADDR accepts a connection and sends a line within 1 s.
    Check {
        #[arg(long)]
        addr: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve { listen, reply } => serve(listen, &reply),
        Cmd::Start {
            listen,
            reply,
            pidfile,
        } => start(listen, &reply, &pidfile),
        Cmd::Stop { pidfile } => stop(&pidfile),
        Cmd::Check { addr } => check(addr, Duration::from_secs(1)).map(|_| ()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uphold-testsvc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(listen: SocketAddr, reply: &str) -> Result<()> {
    if reply.contains('\n') {
        bail!("--reply must be a single line");
    }
    // Own session: signals aimed at the HA daemon's process group (the lab's
    // daemon-kill and pause faults) must not reach the service it started.
    // Fails only if we already lead a group, which is fine as well.
    let _ = nix::unistd::setsid();
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let line = format!("{reply}\n");
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(line.as_bytes());
    }
    Ok(())
}

fn start(listen: SocketAddr, reply: &str, pidfile: &Path) -> Result<()> {
    let target = connect_addr(listen);
    if let Some(pid) = read_pid(pidfile)? {
        if is_testsvc(pid) && check(target, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
    }
    let exe = std::env::current_exe().context("locating own executable")?;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", &listen.to_string(), "--reply", reply])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning serve")?;
    let pid = child.id();
    write_pidfile(pidfile, pid)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("serve on {listen} exited at startup ({status}); is the port in use?");
        }
        if check(target, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("serve on {listen} did not accept connections within 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stop(pidfile: &Path) -> Result<()> {
    let Some(pid) = read_pid(pidfile)? else {
        return Ok(());
    };
    // Only ever signal our own service: after a reboot or a crash the pid may
    // belong to an unrelated process.
    if is_testsvc(pid) {
        let _ = signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while is_running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_running(pid) {
            let _ = signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    match std::fs::remove_file(pidfile) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pidfile.display())),
    }
}

fn check(addr: SocketAddr, within: Duration) -> Result<String> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, within)
        .with_context(|| format!("connecting to {addr}"))?;
    let left = within
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left))
        .context("setting read timeout")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64];
    while !buf.contains(&b'\n') && buf.len() < 256 {
        let n = s
            .read(&mut chunk)
            .with_context(|| format!("reading from {addr}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if line.is_empty() {
        bail!("{addr} sent no line");
    }
    Ok(line)
}

/// Where to connect to reach a listener bound to `listen` (unspecified -> loopback).
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

fn read_pid(pidfile: &Path) -> Result<Option<i32>> {
    match std::fs::read_to_string(pidfile) {
        Ok(s) => {
            let pid: i32 = s
                .trim()
                .parse()
                .with_context(|| format!("{}: not a pid: {:?}", pidfile.display(), s.trim()))?;
            Ok(Some(pid))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", pidfile.display())),
    }
}

fn write_pidfile(pidfile: &Path, pid: u32) -> Result<()> {
    if let Some(dir) = pidfile.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write then rename, so `stop` never reads half a pid.
    let tmp = pidfile.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, pidfile).with_context(|| format!("renaming to {}", pidfile.display()))
}

/// Whether `pid` is a live `uphold-testsvc serve` process.
fn is_testsvc(pid: i32) -> bool {
    if !is_running(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"uphold-testsvc"))
        && args.get(1) == Some(&&b"serve"[..])
}
