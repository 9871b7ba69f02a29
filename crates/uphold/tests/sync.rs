//! File sync between real `uphold run` processes on loopback (no root needed): live
//! replication, a receiver killed in the middle of a large transfer, the network cut and
//! restored, the sender killed in the middle of a burst, and the direction following a
//! group across a failover. A reader on the target checks every file it opens: it must
//! never see a partially written version.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uphold_testkit::child::{run_ok, KilledOnDrop};
use uphold_testkit::loopback::{free_port, status, wait_for};

mod common;
use common::uphold;

/// `uphold run` as member `node`, its log appended to `log`; killed with
/// SIGKILL when dropped.
fn start_member(config: &Path, node: &str, log: &Path) -> KilledOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    KilledOnDrop::spawn(
        uphold()
            .args(["run", "--node", node, "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// A TCP relay between members that can cut the network: on `cut` every relayed
/// connection is shut down and new ones are closed at once, until `restore`.
struct Cable {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cable {
    fn new(to: u16) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                {
                    let mut list = o.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Cable { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// File contents that prove themselves whole: a body and a trailer holding the body's
/// length and FNV-1a hash. A torn or partial file fails the check.
fn versioned(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut body: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let trailer = [(body.len() as u64).to_le_bytes(), fnv(&body).to_le_bytes()].concat();
    body.extend(trailer);
    body
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn is_whole(data: &[u8]) -> bool {
    if data.len() < 16 {
        return false;
    }
    let (body, trailer) = data.split_at(data.len() - 16);
    let len = u64::from_le_bytes(trailer[..8].try_into().unwrap());
    let hash = u64::from_le_bytes(trailer[8..].try_into().unwrap());
    len == body.len() as u64 && hash == fnv(body)
}

/// Reads every file under `root` again and again until stopped; counts reads and torn
/// files (the receiver's own temporary files are skipped, as a web server would not
/// be pointed at them).
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    torn: Arc<Mutex<Vec<String>>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(root: PathBuf) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let torn: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, r, t) = (stop.clone(), reads.clone(), torn.clone());
        let join = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for path in files(&root) {
                    let mut data = Vec::new();
                    let Ok(mut f) = std::fs::File::open(&path) else {
                        continue;
                    };
                    if f.read_to_end(&mut data).is_err() {
                        continue;
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                    if !is_whole(&data) {
                        t.lock().unwrap().push(format!(
                            "{} ({} bytes)",
                            path.display(),
                            data.len()
                        ));
                    }
                }
            }
        });
        Reader {
            stop,
            reads,
            torn,
            join: Some(join),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            j.join().unwrap();
        }
        let torn = self.torn.lock().unwrap();
        assert!(torn.is_empty(), "the reader saw partial files: {torn:?}");
        self.reads.load(Ordering::Relaxed)
    }
}

/// The files under `root` a web server would serve: the receiver's temporary files
/// are left out (a batch staged when its sender dies may never be committed).
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in read.flatten() {
            if e.file_name().to_string_lossy().starts_with(".uphold-tmp.") {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Path -> (content, mode) of every file, and every directory, without temporaries.
fn tree(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in read.flatten() {
            if e.file_name().to_string_lossy().starts_with(".uphold-tmp.") {
                continue;
            }
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            let Ok(md) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let mode = md.permissions().mode() & 0o7777;
            if md.is_dir() {
                stack.push(e.path());
                out.insert(rel, (Vec::new(), mode));
            } else {
                out.insert(rel, (std::fs::read(e.path()).unwrap_or_default(), mode));
            }
        }
    }
    out
}

fn identical(a: &Path, b: &Path) -> bool {
    tree(a) == tree(b)
}

fn target_state(api: u16) -> Option<String> {
    status(api)["sync"]["sets"][0]["targets"][0]["state"]
        .as_str()
        .map(str::to_string)
}

fn init(config: &Path) {
    run_ok(uphold().args(["init", "--config"]).arg(config));
}

#[test]
fn replication_survives_receiver_kill_network_cut_and_sender_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, dst) = (d.join("src"), d.join("dst"));
    std::fs::create_dir(&src).unwrap();
    let (pa, pb, api_a, api_b) = (free_port(), free_port(), free_port(), free_port());
    let cable = Cable::new(pb);
    let config = d.join("u.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"t\"\nstate_dir = \"{d}/state/{{node}}\"\ntls_dir = \"{d}/tls\"\n\
             [[cluster.member]]\nname = \"a\"\naddress = \"127.0.0.1:{pa}\"\napi = \"127.0.0.1:{api_a}\"\n\
             [[cluster.member]]\nname = \"b\"\naddress = \"127.0.0.1:{cable}\"\nlisten = \"127.0.0.1:{pb}\"\napi = \"127.0.0.1:{api_b}\"\n\
             [[sync]]\nname = \"www\"\nsource = \"{src}\"\ntarget = \"{dst}\"\nfrom = \"a\"\n",
            d = d.display(),
            cable = cable.port,
            src = src.display(),
            dst = dst.display(),
        ),
    )
    .unwrap();
    init(&config);
    let log = d.join("log");
    let mut b = start_member(&config, "b", &log);
    let mut a = start_member(&config, "a", &log);
    let mut tag = 0u64;
    // Source files appear whole (written beside the tree, then renamed in): a file
    // caught half-written in the source would be a true copy of a partial file, and
    // the reader below checks the replicator, not the writer.
    let staging = d.join("staging");
    let mut write = |path: &Path, len: usize| {
        tag += 1;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&staging, versioned(tag, len)).unwrap();
        std::fs::rename(&staging, path).unwrap();
    };
    for i in 0..200 {
        write(&src.join(format!("d{}/f{i}", i % 10)), 100 + i * 37);
    }
    for i in 0..3 {
        write(&src.join(format!("big{i}")), 8_000_000 + i);
    }
    std::fs::create_dir_all(&dst).unwrap();
    let reader = Reader::start(dst.clone());
    wait_for("the first copy", Duration::from_secs(60), || {
        identical(&src, &dst)
    });

    // The network is cut: changes wait, then arrive when it is back.
    cable.cut();
    for i in 0..20 {
        write(&src.join(format!("d{}/f{i}", i % 10)), 5000 + i);
    }
    write(&src.join("big1"), 8_500_000);
    wait_for(
        "the target to be seen as down",
        Duration::from_secs(20),
        || target_state(api_a).as_deref() == Some("down"),
    );
    cable.restore();
    wait_for(
        "changes made during the cut",
        Duration::from_secs(60),
        || identical(&src, &dst),
    );

    // The receiver dies in the middle of a large transfer.
    write(&src.join("huge"), 64_000_000);
    wait_for(
        "the large transfer to start",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&dst)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".uphold-tmp."))
        },
    );
    drop(b);
    if let Ok(data) = std::fs::read(dst.join("huge")) {
        assert!(is_whole(&data), "a partial huge file is visible");
    }
    b = start_member(&config, "b", &log);
    wait_for(
        "recovery after the receiver restart",
        Duration::from_secs(90),
        || identical(&src, &dst),
    );

    // The sender dies in the middle of a burst; its successor sends only what is missing.
    for i in 0..3000 {
        write(&src.join(format!("burst/b{}/f{i}", i % 30)), 2000);
    }
    wait_for(
        "part of the burst to arrive",
        Duration::from_secs(30),
        || files(&dst.join("burst")).len() > 100,
    );
    drop(a);
    let there_before = files(&dst.join("burst")).len();
    a = start_member(&config, "a", &log);
    wait_for(
        "the burst after the sender restart",
        Duration::from_secs(90),
        || identical(&src, &dst),
    );
    let resent = status(api_a)["sync"]["sets"][0]["targets"][0]["files_sent"]
        .as_u64()
        .unwrap();
    assert!(
        resent <= (3000 - there_before as u64) + 300,
        "the restarted sender sent {resent} files; {there_before} of 3000 were already there"
    );
    let reads = reader.finish();
    assert!(reads > 1000, "the reader only read {reads} files");
    drop(a);
    drop(b);
}

#[test]
fn the_direction_follows_the_group_across_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let www = |node: &str| d.join(node).join("www");
    for n in ["a", "b"] {
        std::fs::create_dir_all(www(n)).unwrap();
    }
    let config = d.join("u.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"t\"\nstate_dir = \"{d}/state/{{node}}\"\ntls_dir = \"{d}/tls\"\n\
             [[cluster.member]]\nname = \"a\"\naddress = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n\
             [[cluster.member]]\nname = \"b\"\naddress = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\n\
             [[cluster.member]]\nname = \"w\"\naddress = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\nrole = \"witness\"\n\
             [[group]]\nname = \"web\"\nnodes = [\"a\", \"b\"]\n\
             [[group.resource]]\ntype = \"exec\"\nname = \"marker\"\n\
             start = [\"/bin/true\"]\nstop = [\"/bin/true\"]\n\
             [[sync]]\nname = \"www\"\nsource = \"{d}/{{node}}/www\"\ngroup = \"web\"\n",
            ports[0], ports[1], ports[2], ports[3], ports[4], ports[5],
            d = d.display(),
        ),
    )
    .unwrap();
    init(&config);
    let log = d.join("log");
    let _w = start_member(&config, "w", &log);
    let _b = start_member(&config, "b", &log);
    let a = start_member(&config, "a", &log);
    let (api_a, api_b) = (ports[1], ports[3]);
    let role = |api: u16| {
        status(api)["sync"]["sets"][0]["role"]
            .as_str()
            .map(str::to_string)
    };
    wait_for(
        "a to send (it runs the group)",
        Duration::from_secs(30),
        || role(api_a).as_deref() == Some("sender"),
    );
    std::fs::write(www("a").join("before"), versioned(1, 1000)).unwrap();
    std::fs::write(www("a").join("doomed"), versioned(2, 1000)).unwrap();
    wait_for("a's files on b", Duration::from_secs(30), || {
        identical(&www("a"), &www("b"))
    });

    drop(a);
    wait_for("b to take over and send", Duration::from_secs(30), || {
        role(api_b).as_deref() == Some("sender")
    });
    std::fs::write(www("b").join("after"), versioned(3, 5000)).unwrap();
    std::fs::remove_file(www("b").join("doomed")).unwrap();

    let _a = start_member(&config, "a", &log);
    wait_for(
        "a to come back as a receiver",
        Duration::from_secs(30),
        || role(api_a).as_deref() == Some("receiver"),
    );
    wait_for("b's changes on a", Duration::from_secs(30), || {
        identical(&www("b"), &www("a"))
    });
    assert!(!www("a").join("doomed").exists());
}
