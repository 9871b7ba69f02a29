//! The binary as a user meets it: `check` on good and bad files, the demo, and
//! a daemon facing peers it must refuse. Loopback only; no root needed.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use uphold_testkit::child::KilledOnDrop;
use uphold_testkit::loopback::{free_port, wait_for};

mod common;
use common::uphold;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn check_accepts_every_example() {
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = uphold()
                .arg("check")
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn check_names_file_line_and_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"shop\"\n\n[[cluster.member]]\nname = \"a\"\naddress = \"10.0.0.1:7400\"\n\n[[group]]\nname = \"web\"\n\n[[group.resource]]\ntype = \"ip\"\naddress = \"10.0.0.100/33\"\ninterface = \"eth0\"\n",
    )
    .unwrap();
    let out = uphold()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:13"), "{stderr}");
    assert!(stderr.contains("group[0].resource[0].address"), "{stderr}");
    assert!(stderr.contains("10.0.0.100/33"), "{stderr}");

    std::fs::write(&path, "[cluster]\nname = \"shop\"\nleese = \"1s\"\n").unwrap();
    let out = uphold()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3") && stderr.contains("leese"),
        "{stderr}"
    );

    let missing = uphold()
        .args(["check", "--config", "/nonexistent/uphold.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn demo_shows_a_failover_and_exits_cleanly() {
    let out = uphold().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("took over"), "{stdout}");
    assert!(stdout.contains("stays on"), "{stdout}");
}

#[test]
fn daemon_refuses_bad_peers_with_a_clear_log_line_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let (p1, p2, api) = (free_port(), free_port(), free_port());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"t\"\nstate_dir = \"{d}/{{node}}\"\ntls_dir = \"{d}/tls\"\n\
             [[cluster.member]]\nname = \"a\"\naddress = \"127.0.0.1:{p1}\"\napi = \"127.0.0.1:{api}\"\n\
             [[cluster.member]]\nname = \"b\"\naddress = \"127.0.0.1:{p2}\"\n"
        ),
    )
    .unwrap();
    let init = uphold()
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    // A second cluster with its own CA: its members must be refused.
    let foreign = dir.path().join("foreign");
    let init = uphold()
        .args(["init", "--cluster", "t", "--members", "b", "--dir"])
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(init.status.success());

    let mut child = uphold()
        .args(["run", "--node", "a", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let daemon = KilledOnDrop(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                if pred(&line) {
                    return line;
                }
                seen.push(line);
            }
        }
        panic!("no log line {what}; saw:\n{}", seen.join("\n"));
    };
    wait_line("saying uphold is starting", &|l| {
        l.contains("uphold starting")
    });
    let addr = format!("127.0.0.1:{p1}");
    let connect = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(&addr) {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon never listened on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Plaintext garbage.
    let mut garbage = connect();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let line = wait_line("refusing the plaintext peer", &|l| {
        l.contains("refused connection") && l.contains("127.0.0.1")
    });
    assert!(line.to_lowercase().contains("tls"), "{line}");

    // A member of another cluster's CA, with a proper TLS client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let name = uphold_core::NodeName::new("b").unwrap();
    let identity = uphold_proto::TlsIdentity::load(&foreign, &name).unwrap();
    let endpoint = std::sync::Arc::new(uphold_proto::Endpoint::new(
        identity,
        "t",
        uphold_proto::AllowedPeers::set([uphold_core::NodeName::new("a").unwrap()]),
    ));
    let client = uphold_proto::RpcClient::new(endpoint);
    let target = uphold_core::NodeName::new("a").unwrap();
    let result = rt.block_on(client.call(
        &target,
        addr.parse().unwrap(),
        1,
        vec![],
        Duration::from_secs(3),
    ));
    assert!(result.is_err(), "a foreign CA's member was served");
    // Whichever side notices first (here the foreign client, which does not
    // trust our CA), the daemon logs the refusal with the peer's address.
    wait_line("refusing the foreign member", &|l| {
        l.contains("refused connection") && l.contains("TLS") && l.contains("127.0.0.1")
    });

    // Still serving its API after both.
    let status = uphold()
        .args(["status", "--json", "--node", "a", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    drop(daemon);
}

#[test]
fn init_keeps_the_ca_key_and_other_members_keys_out_of_each_members_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"t\"\nstate_dir = \"{d}/{{node}}\"\ntls_dir = \"{d}/{{node}}/tls\"\n\
             [[cluster.member]]\nname = \"a\"\naddress = \"127.0.0.1:7000\"\n\
             [[cluster.member]]\nname = \"b\"\naddress = \"127.0.0.2:7000\"\n"
        ),
    )
    .unwrap();
    let init = uphold()
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for (member, other) in [("a", "b"), ("b", "a")] {
        let tls = dir.path().join(member).join("tls");
        let files = file_names(&tls);
        let mut expected = vec![
            "ca.pem".to_string(),
            format!("{member}-key.pem"),
            format!("{member}.pem"),
        ];
        expected.sort();
        assert_eq!(files, expected, "{member} holds more than its bundle");
        assert!(!tls.join(format!("{other}-key.pem")).exists());
    }
    assert!(dir.path().join("_ca/tls/ca-key.pem").exists());
}

/// The files of directory `dir`, sorted.
fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[test]
fn init_into_one_directory_puts_each_members_bundle_apart_without_the_ca_key() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let init = uphold()
        .args(["init", "--cluster", "t", "--members", "a,b", "--dir"])
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let said = String::from_utf8_lossy(&init.stdout);
    assert!(said.contains("bundles/<name>/"), "{said}");
    for member in ["a", "b"] {
        let bundle = tls.join("bundles").join(member);
        let mut expected = vec![
            "ca.pem".to_string(),
            format!("{member}-key.pem"),
            format!("{member}.pem"),
        ];
        expected.sort();
        assert_eq!(file_names(&bundle), expected, "{member}'s bundle");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(bundle.join(format!("{member}-key.pem")))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
    // The directory itself still serves the host init ran on.
    assert!(tls.join("ca-key.pem").exists());
    assert!(tls.join("a-key.pem").exists());
}

#[test]
fn sighup_adds_and_removes_groups_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (port, api) = (free_port(), free_port());
    let group = |name: &str| {
        format!(
            "[[group]]\nname = \"{name}\"\n[[group.resource]]\ntype = \"exec\"\nname = \"marker\"\n\
             start = [\"/usr/bin/touch\", \"{d}/{name}.up\"]\nstop = [\"/bin/rm\", \"-f\", \"{d}/{name}.up\"]\n\
             monitor = [\"/usr/bin/test\", \"-e\", \"{d}/{name}.up\"]\ninterval = \"200ms\"\n"
        )
    };
    let head = format!(
        "[cluster]\nname = \"t\"\nstate_dir = \"{d}/state\"\ntls_dir = \"{d}/tls\"\n\
         [[cluster.member]]\nname = \"solo\"\naddress = \"127.0.0.1:{port}\"\napi = \"127.0.0.1:{api}\"\n"
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("{head}{}", group("one"))).unwrap();
    let init = uphold()
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(init.status.success());
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let child = uphold()
        .args(["run", "--node", "solo", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _daemon = KilledOnDrop(child);
    let up = |name: &str| dir.path().join(format!("{name}.up")).exists();
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let log_text = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();

    wait_for("group one to start", Duration::from_secs(15), || up("one"));
    std::fs::write(&config, format!("{head}{}{}", group("one"), group("two"))).unwrap();
    hup();
    wait_for(
        "group two to start after SIGHUP",
        Duration::from_secs(10),
        || up("two"),
    );
    std::fs::write(&config, format!("{head}{}", group("two"))).unwrap();
    hup();
    wait_for(
        "group one to stop after SIGHUP",
        Duration::from_secs(10),
        || !up("one"),
    );
    assert!(up("two"));

    std::fs::write(&config, format!("{head}{}\nbogus = 1\n", group("two"))).unwrap();
    hup();
    wait_for(
        "the broken file to be refused",
        Duration::from_secs(10),
        || log_text().contains("reload refused"),
    );
    let text = log_text();
    assert!(text.contains("c.toml") && text.contains("bogus"), "{text}");
    assert!(up("two"), "a refused reload changes nothing");
}
