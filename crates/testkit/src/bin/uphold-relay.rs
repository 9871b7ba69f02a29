//! A counting TCP relay for benchmarks: accepts on one loopback port, forwards
//! every connection to another, and counts the bytes in each direction, so that
//! "bytes on the wire" is measured the same way for uphold and the tools it is
//! compared with. Runs in its own process so that forwarding never waits on the
//! harness that measures it.
//!
//! Counters are written as one JSON line, atomically (temporary file + rename):
//! every `--every-ms` milliseconds, at once on SIGUSR1, and at exit (SIGTERM or
//! SIGINT), where the line is also printed on stdout. `seq` goes up with every
//! write, so a reader that sent SIGUSR1 knows when the file holds counts taken
//! after its signal.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(
    name = "uphold-relay",
    about = "loopback TCP relay that counts the bytes in each direction"
)]
struct Cli {
    /// Where to accept connections (loopback only; port 0 picks a free port,
    /// printed on stdout as "listening ADDR").
    #[arg(long)]
    listen: SocketAddr,
    /// Where to forward each connection (loopback only).
    #[arg(long)]
    to: SocketAddr,
    /// File that receives the counters as one JSON line.
    #[arg(long)]
    counters: Option<PathBuf>,
    /// Period of the counter writes in milliseconds (0: only on SIGUSR1 and at exit).
    #[arg(long, default_value_t = 100)]
    every_ms: u64,
}

/// Byte and connection counts; shared by every connection task.
#[derive(Default, Debug)]
struct Counters {
    /// Client to forward target (a -> b, rsync client -> rsync daemon).
    up: AtomicU64,
    /// Forward target back to the client.
    down: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    failed: AtomicU64,
    seq: AtomicU64,
}

impl Counters {
    /// One JSON line; `seq` numbers the snapshots so readers can wait for a fresh one.
    fn snapshot(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let up = self.up.load(Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        format!(
            "{{\"seq\":{seq},\"up\":{up},\"down\":{down},\"total\":{},\"connections\":{},\"open\":{},\"failed\":{}}}",
            up + down,
            self.connections.load(Ordering::SeqCst),
            self.open.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("uphold-relay: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uphold-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    for (flag, addr) in [("--listen", cli.listen), ("--to", cli.to)] {
        if !addr.ip().is_loopback() {
            bail!("{flag} {addr}: only loopback addresses are allowed");
        }
    }
    if cli.to.port() == 0 {
        bail!("--to {}: port 0 is not a destination", cli.to);
    }
    // Signal handlers go in before "listening" is printed: a harness that signals
    // as soon as it has read the port must not kill us with the default action.
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let counters = Arc::new(Counters::default());
    if let Some(path) = &cli.counters {
        write_counters(path, &counters.snapshot())?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {local}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    tokio::spawn(accept_loop(listener, cli.to, counters.clone()));

    let period = Duration::from_millis(cli.every_ms.max(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let periodic = cli.counters.is_some() && cli.every_ms > 0;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => save(cli.counters.as_deref(), &counters),
            _ = tick.tick(), if periodic => save(cli.counters.as_deref(), &counters),
        }
    }
    let last = counters.snapshot();
    if let Some(path) = &cli.counters {
        write_counters(path, &last)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{last}").context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

/// A failed write is reported and forwarding goes on: the traffic being
/// measured matters more than one snapshot, and the reader waiting for a fresh
/// `seq` times out with the message in our stderr.
fn save(path: Option<&Path>, counters: &Counters) {
    if let Some(path) = path {
        if let Err(e) = write_counters(path, &counters.snapshot()) {
            eprintln!("uphold-relay: {e:#}");
        }
    }
}

/// Replaces `path` atomically so a reader never sees half a line.
fn write_counters(path: &Path, line: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{line}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

async fn accept_loop(listener: TcpListener, to: SocketAddr, counters: Arc<Counters>) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let counters = counters.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(client, to, &counters).await {
                        eprintln!("uphold-relay: connection from {peer}: {e:#}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("uphold-relay: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Forwards one connection both ways until both directions are finished; an error
/// in one direction drops both sockets, which ends the other.
async fn relay(client: TcpStream, to: SocketAddr, counters: &Counters) -> Result<()> {
    counters.connections.fetch_add(1, Ordering::SeqCst);
    let server = match TcpStream::connect(to).await {
        Ok(s) => s,
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::SeqCst);
            return Err(e).with_context(|| format!("connecting to {to}"));
        }
    };
    // The relay re-segments the stream; Nagle would hold back small writes
    // (a 1 KiB change) that the endpoints themselves sent at once.
    client.set_nodelay(true).context("setting TCP_NODELAY")?;
    server.set_nodelay(true).context("setting TCP_NODELAY")?;
    counters.open.fetch_add(1, Ordering::SeqCst);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let r = tokio::try_join!(pipe(cr, sw, &counters.up), pipe(sr, cw, &counters.down));
    counters.open.fetch_sub(1, Ordering::SeqCst);
    r.map(|_| ())
}

/// Copies one direction, counting what was written on; at end of input passes
/// the half-close on, as the endpoints may still talk the other way.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, count: &AtomicU64) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf).await.context("reading")?;
        if n == 0 {
            // The peer may already have closed entirely; nothing left to tell it.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await.context("writing")?;
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Starts a relay in this runtime in front of `to`; returns its address.
    async fn start_relay(to: SocketAddr) -> (SocketAddr, Arc<Counters>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        tokio::spawn(accept_loop(listener, to, counters.clone()));
        (addr, counters)
    }

    /// A server that reads everything until EOF, then answers with `reply` and closes.
    async fn start_sink(
        reply: Vec<u8>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (tx, reply) = (tx.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(&reply).await.unwrap();
                    s.shutdown().await.unwrap();
                    let _ = tx.send(got);
                });
            }
        });
        (addr, rx)
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        timeout(LIMIT, async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn forwards_both_ways_across_a_half_close_and_counts_each_direction() {
        let reply = vec![7u8; 300_000];
        let (server, mut received) = start_sink(reply.clone()).await;
        let (relay, counters) = start_relay(server).await;
        let sent: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();

        let mut c = TcpStream::connect(relay).await.unwrap();
        c.write_all(&sent).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        timeout(LIMIT, c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();

        assert_eq!(
            timeout(LIMIT, received.recv()).await.unwrap().unwrap(),
            sent
        );
        assert_eq!(back, reply);
        wait_for("the connection to end", || {
            counters.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(counters.up.load(Ordering::SeqCst), sent.len() as u64);
        assert_eq!(counters.down.load(Ordering::SeqCst), reply.len() as u64);
        assert_eq!(counters.connections.load(Ordering::SeqCst), 1);
        assert_eq!(counters.failed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn counts_add_up_over_concurrent_connections() {
        let (server, mut received) = start_sink(b"ok".to_vec()).await;
        let (relay, counters) = start_relay(server).await;
        let mut tasks = Vec::new();
        for i in 0..8usize {
            tasks.push(tokio::spawn(async move {
                let mut c = TcpStream::connect(relay).await.unwrap();
                c.write_all(&vec![1u8; 10_000 * (i + 1)]).await.unwrap();
                c.shutdown().await.unwrap();
                let mut back = Vec::new();
                c.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"ok");
            }));
        }
        for t in tasks {
            timeout(LIMIT, t).await.unwrap().unwrap();
        }
        for _ in 0..8 {
            timeout(LIMIT, received.recv()).await.unwrap().unwrap();
        }
        wait_for("all connections to end", || {
            counters.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(counters.up.load(Ordering::SeqCst), 10_000 * 36);
        assert_eq!(counters.down.load(Ordering::SeqCst), 2 * 8);
        assert_eq!(counters.connections.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn an_unreachable_target_closes_the_client_and_is_counted() {
        // A port that was free a moment ago: nothing listens there.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (relay, counters) = start_relay(dead).await;
        let mut c = TcpStream::connect(relay).await.unwrap();
        let mut buf = Vec::new();
        let r = timeout(LIMIT, c.read_to_end(&mut buf)).await.unwrap();
        assert!(r.is_err() || buf.is_empty(), "no data from a dead target");
        wait_for("the failure to be counted", || {
            counters.failed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(counters.up.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn snapshots_are_numbered_and_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.json");
        let c = Counters::default();
        c.up.store(5, Ordering::SeqCst);
        c.down.store(7, Ordering::SeqCst);
        write_counters(&path, &c.snapshot()).unwrap();
        write_counters(&path, &c.snapshot()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["seq"], 2);
        assert_eq!(v["up"], 5);
        assert_eq!(v["down"], 7);
        assert_eq!(v["total"], 12);
        assert!(!dir.path().join("counters.json.tmp").exists());
    }

    #[test]
    fn refuses_addresses_off_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cli = Cli {
            listen: "0.0.0.0:0".parse().unwrap(),
            to: "127.0.0.1:9".parse().unwrap(),
            counters: None,
            every_ms: 100,
        };
        let e = rt.block_on(run(cli)).unwrap_err().to_string();
        assert!(
            e.contains("--listen 0.0.0.0:0") && e.contains("loopback"),
            "{e}"
        );
    }
}
