//! `uphold demo`: three real `uphold run` processes on 127.0.0.1, a group holding a
//! small HTTP service, a client polling it, and the owner killed with SIGKILL so a
//! newcomer can watch the failover, the guard cleaning up, and stickiness after
//! the old owner returns. No root, nothing to install.

use crate::cli::{DemoArgs, DemoServiceAction, DemoServiceArgs};
use crate::status::{fetch_status, http_get};
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use uphold_cluster::runtime::status::ClusterStatus;

const NODES: [&str; 3] = ["alpha", "beta", "gamma"];

struct Demo {
    dir: PathBuf,
    config: PathBuf,
    exe: PathBuf,
    apis: Vec<SocketAddr>,
    service: SocketAddr,
    children: Vec<Option<Child>>,
    started: Instant,
    /// The working directory stays after the demo (given with --dir).
    kept: bool,
}

pub fn main(args: DemoArgs) -> ExitCode {
    let (dir, _tempdir) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => match tempfile::Builder::new().prefix("uphold-demo-").tempdir() {
            Ok(t) => (t.path().to_path_buf(), Some(t)),
            Err(e) => {
                eprintln!("error: cannot create a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let kept = _tempdir.is_none();
    let mut demo = match Demo::prepare(dir, kept) {
        Ok(demo) => demo,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = demo.play();
    demo.stop_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e}\nlogs are in {}", demo.dir.display());
            if _tempdir.is_some() {
                for node in NODES {
                    let log = demo.dir.join(format!("{node}.log"));
                    if let Ok(text) = std::fs::read_to_string(&log) {
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        eprintln!("--- last lines of {node}.log ---");
                        for line in tail.iter().rev() {
                            eprintln!("{line}");
                        }
                    }
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// One free loopback port for a member or the service.
fn demo_port() -> Result<u16, String> {
    uphold_os::loopback::free_port_range(1).map_err(|e| format!("cannot find a free port: {e}"))
}

impl Demo {
    fn prepare(dir: PathBuf, kept: bool) -> Result<Demo, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut peers = Vec::new();
        let mut apis = Vec::new();
        for _ in NODES {
            peers.push(SocketAddr::from(([127, 0, 0, 1], demo_port()?)));
            apis.push(SocketAddr::from(([127, 0, 0, 1], demo_port()?)));
        }
        let service = SocketAddr::from(([127, 0, 0, 1], demo_port()?));
        let exe_str = exe.display().to_string();
        let d = dir.display();
        let mut config = format!(
            "# Written by `uphold demo`. Three members on one host; {{node}} in paths\n\
             # gives each its own state and certificates.\n\
             [cluster]\nname = \"demo\"\nstate_dir = \"{d}/{{node}}/state\"\ntls_dir = \"{d}/{{node}}/tls\"\n\n"
        );
        for (i, node) in NODES.iter().enumerate() {
            config.push_str(&format!(
                "[[cluster.member]]\nname = \"{node}\"\naddress = \"{}\"\napi = \"{}\"\n\n",
                peers[i], apis[i]
            ));
        }
        config.push_str(&format!(
            "# The floating service. On real servers you would add an `ip` resource\n\
             # (a VIP) first; that needs root, so the demo floats a port instead.\n\
             [[group]]\nname = \"web\"\n\n\
             [[group.resource]]\ntype = \"exec\"\nname = \"hello\"\n\
             start = [\"{exe_str}\", \"demo-service\", \"start\", \"--listen\", \"{service}\", \"--pidfile\", \"{d}/{{node}}/hello.pid\"]\n\
             stop = [\"{exe_str}\", \"demo-service\", \"stop\", \"--pidfile\", \"{d}/{{node}}/hello.pid\"]\n\
             monitor = [\"{exe_str}\", \"demo-service\", \"check\", \"--addr\", \"{service}\"]\n\
             interval = \"1s\"\ntimeout = \"5s\"\n"
        ));
        let config_path = dir.join("demo.toml");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let init = Command::new(&exe)
            .args(["init", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !init.status.success() {
            return Err(format!(
                "uphold init failed: {}",
                String::from_utf8_lossy(&init.stderr)
            ));
        }
        Ok(Demo {
            dir,
            config: config_path,
            exe,
            apis,
            service,
            children: NODES.iter().map(|_| None).collect(),
            started: Instant::now(),
            kept,
        })
    }

    fn say(&self, text: &str) {
        println!("[{:5.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    fn start_node(&mut self, i: usize) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let log_path = self.dir.join(format!("{}.log", NODES[i]));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&self.config)
            .args(["--node", NODES[i]])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Its own process group, so the demo can kill the daemon the way a crash would.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", NODES[i]))?;
        self.children[i] = Some(child);
        Ok(())
    }

    fn status_from(&self, i: usize) -> Option<ClusterStatus> {
        fetch_status(self.apis[i]).ok()
    }

    fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut probe: impl FnMut(&Demo) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = probe(self) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out after {limit:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ask_service(&self) -> Option<String> {
        let body = http_get(self.service, "/").ok()?;
        let text = String::from_utf8_lossy(&body).trim().to_string();
        text.strip_prefix("hello from ").map(str::to_string)
    }

    fn play(&mut self) -> Result<(), String> {
        println!("uphold demo: a 3-node cluster on 127.0.0.1 with one floating service\n");
        println!("  working directory: {}", self.dir.display());
        println!("  config:            {}", self.config.display());
        println!(
            "  logs:              {}/{{alpha,beta,gamma}}.log",
            self.dir.display()
        );
        println!("  service:           http://{}/\n", self.service);
        for i in 0..NODES.len() {
            self.start_node(i)?;
        }
        self.say("started alpha, beta and gamma (`uphold run --config demo.toml --node NAME`)");
        let owner = self.wait_for("the group to start", Duration::from_secs(20), |d| {
            let status = d.status_from(0)?;
            let owner = status.groups.first()?.owner.clone()?;
            // Started there, not merely starting: the kill below must find a
            // finished start for the guard to undo.
            let at_owner = d.status_from(NODES.iter().position(|n| *n == owner)?)?;
            let phase = at_owner.groups.first()?.local_phase.clone()?;
            let answer = d.ask_service()?;
            (answer == owner && phase == "running").then_some(owner)
        })?;
        let owner_index = NODES
            .iter()
            .position(|n| *n == owner)
            .ok_or("owner is not a demo node")?;
        let status = self.status_from(owner_index).ok_or("status unavailable")?;
        self.say(&format!(
            "quorum formed (leader {}); group \"web\" runs on {owner}; the service says \"hello from {owner}\"\n",
            status.leader.as_deref().unwrap_or("?")
        ));
        print_indented(&status.render());

        let victim = self.children[owner_index]
            .as_ref()
            .map(|c| c.id())
            .ok_or("owner process missing")?;
        self.say(&format!(
            "killing {owner}'s daemon with SIGKILL (pid {victim}, its whole process group), as a crash would"
        ));
        let killed_at = Instant::now();
        kill_group(victim, Signal::SIGKILL);
        if let Some(mut child) = self.children[owner_index].take() {
            let _ = child.wait();
        }
        // The client's view: poll every 50 ms until someone else answers.
        let mut line = String::from("  client polling every 50 ms: ");
        let mut first_fail: Option<Instant> = None;
        let new_owner = loop {
            let answer = self.ask_service();
            match &answer {
                Some(who) if *who != owner => {
                    line.push_str(who);
                    break who.clone();
                }
                Some(_) => {
                    line.push('o');
                }
                None => {
                    line.push('.');
                    first_fail.get_or_insert_with(Instant::now);
                }
            }
            if killed_at.elapsed() > Duration::from_secs(20) {
                println!("{line}");
                return Err("no other node took the service within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        println!("{line}");
        let outage = first_fail.map_or(Duration::ZERO, |f| f.elapsed());
        self.say(&format!(
            "{new_owner} took over: the service was unreachable for about {:.2} s ('o' = old owner answered, '.' = no answer)",
            outage.as_secs_f64()
        ));
        println!(
            "           {owner}'s guard process removed its service when the daemon died, and the"
        );
        println!("           leader waited for {owner}'s lease to expire before placing the group elsewhere.\n");
        let survivor = NODES
            .iter()
            .position(|n| *n == new_owner)
            .ok_or("unknown new owner")?;
        let status = self.wait_for(
            "the status to show the new owner",
            Duration::from_secs(5),
            |d| {
                let s = d.status_from(survivor)?;
                (s.groups.first()?.owner.as_deref() == Some(new_owner.as_str())).then_some(s)
            },
        )?;
        print_indented(&status.render());

        self.say(&format!("restarting {owner}: it rejoins, and the group stays on {new_owner} (no automatic failback)"));
        self.start_node(owner_index)?;
        let status = self.wait_for(
            &format!("{owner} to rejoin"),
            Duration::from_secs(20),
            |d| {
                let s = d.status_from(owner_index)?;
                let me = s.members.iter().find(|m| m.name == owner)?;
                let caught_up = s.groups.first()?.owner.as_deref() == Some(new_owner.as_str());
                (me.live && s.quorum && caught_up).then_some(s)
            },
        )?;
        print_indented(&status.render());
        let still = self.wait_for("the service to answer", Duration::from_secs(5), |d| {
            d.ask_service()
        })?;
        if still != new_owner {
            return Err(format!(
                "expected the service to stay on {new_owner}, it answers from {still:?}"
            ));
        }
        self.say("stopping all nodes with SIGTERM (each hands its groups over before exiting)");
        println!("\nWhat to look at:");
        if self.kept {
            println!(
                "  - the logs in {} (lease expiry, the guard, placement decisions)",
                self.dir.display()
            );
            println!("  - the config the nodes ran: {}", self.config.display());
        } else {
            println!(
                "  - run `uphold demo --dir /tmp/uphold-demo` to keep the logs and the config"
            );
        }
        println!("  - on real servers: examples/cluster.toml, `uphold check`, `uphold init`, `uphold status`");
        Ok(())
    }

    fn stop_all(&mut self) {
        for child in self.children.iter_mut().flatten() {
            kill_group(child.id(), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for slot in self.children.iter_mut() {
            if let Some(child) = slot.as_mut() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            kill_group(child.id(), Signal::SIGKILL);
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
            *slot = None;
        }
    }
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
    println!();
}

fn kill_group(pid: u32, signal: Signal) {
    let pgid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::killpg(pgid, signal);
}

/// The demo's floating service: a one-line HTTP server and its start/stop/check
/// commands, run by the group's `exec` resource. It answers with the node name
/// the daemon passes in `UPHOLD_NODE`.
pub fn service_main(args: DemoServiceArgs) -> ExitCode {
    let node = std::env::var("UPHOLD_NODE").unwrap_or_else(|_| "unknown".into());
    let result = match args.action {
        DemoServiceAction::Serve { listen } => serve(&listen, &node),
        DemoServiceAction::Start { listen, pidfile } => start(&listen, &for_node(&pidfile, &node)),
        DemoServiceAction::Stop { pidfile } => stop(&for_node(&pidfile, &node)),
        DemoServiceAction::Check { addr } => check(&addr),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-service: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `{node}` in a path becomes this node's name, so one config serves all three.
fn for_node(path: &Path, node: &str) -> PathBuf {
    PathBuf::from(path.display().to_string().replace("{node}", node))
}

fn serve(listen: &str, node: &str) -> Result<(), String> {
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        // Read the whole request head: closing with unread bytes would reset the
        // connection instead of delivering the answer.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("hello from {node}\n");
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

fn start(listen: &str, pidfile: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["demo-service", "serve", "--listen", listen])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| e.to_string())?;
    // The pid goes down before anything else, so a stop that runs while this
    // start is still waiting (its daemon was killed) finds the service.
    if let Some(parent) = pidfile.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(pidfile, child.id().to_string())
        .map_err(|e| format!("{}: {e}", pidfile.display()))?;
    let addr: SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(pidfile);
            return Err(format!(
                "service exited at start ({status}); is {listen} in use?"
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = std::fs::remove_file(pidfile);
            return Err(format!("service did not listen on {listen} within 3 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn stop(pidfile: &Path) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return Ok(());
    };
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a pid: {text:?}", pidfile.display()))?;
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = std::fs::remove_file(pidfile);
    Ok(())
}

fn check(addr: &str) -> Result<(), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let body = http_get(addr, "/")?;
    if body.starts_with(b"hello from ") {
        Ok(())
    } else {
        Err("unexpected answer".into())
    }
}
