//! The balancer in tcp mode against real TCP servers: port-range forwarding, PROXY
//! protocol, redispatch of failed connects, bulk transfer, and the agent and exec
//! health checks.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

async fn first_line(addr: SocketAddr) -> String {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .expect("no answer")
        .unwrap();
    line.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_range_maps_each_port_to_its_offset() {
    let listen = free_ports(3);
    let target = free_ports(3);
    let same = free_ports(3);
    for i in 0..3 {
        tcp_backend(
            "shifted",
            format!("127.0.0.1:{}", target + i).parse().unwrap(),
            false,
        )
        .await;
    }
    let lb = start(&format!(
        r#"
[[balance]]
name = "range"
listen = "127.0.0.1:{listen}-{}"
[[balance.server]]
name = "shifted"
address = "127.0.0.1:{target}-{}"
"#,
        listen + 2,
        target + 2
    ));
    for i in 0..3u16 {
        let line = first_line(format!("127.0.0.1:{}", listen + i).parse().unwrap()).await;
        assert_eq!(line, format!("shifted {}", target + i));
    }
    lb.stop();
    // Without a port the client's port is kept.
    for i in 0..3 {
        tcp_backend(
            "same",
            format!("127.0.0.2:{}", same + i).parse().unwrap(),
            false,
        )
        .await;
    }
    let lb = start(&format!(
        r#"
[[balance]]
name = "range"
listen = "127.0.0.1:{same}-{}"
[[balance.server]]
name = "same"
address = "127.0.0.2"
"#,
        same + 2
    ));
    for i in 0..3u16 {
        let line = first_line(format!("127.0.0.1:{}", same + i).parse().unwrap()).await;
        assert_eq!(line, format!("same {}", same + i));
    }
    lb.stop();
}

/// Connects from loopback address `from`; the first line the server sends, or
/// "" when the connection is closed without one.
async fn held_connection(from: &str, to: u16) -> (tokio::net::TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket
        .connect(format!("127.0.0.1:{to}").parse().unwrap())
        .await
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] != b'\n' => line.push(byte[0]),
            Ok(_) => break,
            Err(_) => panic!("neither served nor closed"),
        }
    }
    (s, String::from_utf8_lossy(&line).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_holds_at_most_its_share_of_connections() {
    let backend = free_port();
    tcp_backend("a", format!("127.0.0.1:{backend}").parse().unwrap(), false).await;
    let port = free_port();
    let lb = start(&format!(
        "[[balance]]\nname = \"t\"\nlisten = \"127.0.0.1:{port}\"\nmax_connections_per_client = 2\n\
         [[balance.server]]\nname = \"a\"\naddress = \"127.0.0.1:{backend}\"\n"
    ));
    let served = format!("a {backend}");
    let (first, line) = held_connection("127.0.0.1", port).await;
    assert_eq!(line, served);
    let (_second, line) = held_connection("127.0.0.1", port).await;
    assert_eq!(line, served);
    // The third from the same address is closed at once; another address is served.
    let (_third, line) = held_connection("127.0.0.1", port).await;
    assert_eq!(line, "");
    let (_other, line) = held_connection("127.0.0.2", port).await;
    assert_eq!(line, served);
    assert_eq!(lb.status().frontends[0].over_client_limit, 1);
    // A closed connection gives its slot back.
    drop(first);
    let mut line = String::new();
    for _ in 0..100 {
        line = held_connection("127.0.0.1", port).await.1;
        if line == served {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(line, served);
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_tells_the_server_who_the_client_is() {
    let backend = free_port();
    tcp_backend("pp", format!("127.0.0.1:{backend}").parse().unwrap(), true).await;
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "pp"
listen = "127.0.0.1:{port}"
[[balance.server]]
name = "pp"
address = "127.0.0.1:{backend}"
proxy_protocol = "v1"
"#
    ));
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let client_port = s.local_addr().unwrap().port();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert_eq!(
        line,
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n")
    );
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_is_skipped_and_bulk_data_passes_intact() {
    let (alive, dead) = (free_port(), free_port());
    tcp_backend(
        "alive",
        format!("127.0.0.1:{alive}").parse().unwrap(),
        false,
    )
    .await;
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "tcp"
listen = "127.0.0.1:{port}"
[balance.check]
interval = "60s"
[[balance.server]]
name = "dead"
address = "127.0.0.1:{dead}"
[[balance.server]]
name = "alive"
address = "127.0.0.1:{alive}"
"#
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..10 {
        assert_eq!(first_line(addr).await, format!("alive {alive}"));
    }
    // 32 MiB through the echo server and back, compared byte for byte.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let data: Vec<u8> = (0..32 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    let header = format!("alive {alive}\n");
    assert_eq!(&got[..header.len()], header.as_bytes());
    assert!(got[header.len()..] == expected[..], "bulk data differs");
    let st = lb.status();
    assert_eq!(st.frontends[0].servers[0].health, "down");
    assert!(st.frontends[0].traffic.bytes_in >= 32 * 1024 * 1024);
    lb.stop();
}

/// An agent that answers whatever is in `reply` at the time.
async fn agent(reply: std::sync::Arc<std::sync::Mutex<String>>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let text = reply.lock().unwrap().clone();
            let _ = s.write_all(text.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_drains_and_weights_a_server() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let reply = std::sync::Arc::new(std::sync::Mutex::new("up 100%\n".to_string()));
    let agent_port = agent(reply.clone()).await;
    // Both servers' agents are the same program on one port here; the agent's port
    // replaces the server's for the check.
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "web"
listen = "127.0.0.1:{port}"
mode = "http"
[balance.check]
type = "agent"
port = {agent_port}
interval = "100ms"
[[balance.server]]
name = "a"
address = "{}"
[[balance.server]]
name = "b"
address = "{}"
"#,
        a.addr, b.addr
    ));
    wait_until("agent says up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up"
    })
    .await;
    *reply.lock().unwrap() = "50%\n".into();
    wait_until("weight halved", Duration::from_secs(5), || {
        lb.status().frontends[0].servers[0].agent.as_deref() == Some("up 50%")
    })
    .await;
    *reply.lock().unwrap() = "drain\n".into();
    wait_until("drained", Duration::from_secs(5), || {
        lb.status().frontends[0]
            .servers
            .iter()
            .all(|s| s.agent.as_deref().is_some_and(|a| a.starts_with("drain")))
    })
    .await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        get_once(addr, "/").await.unwrap().0,
        503,
        "a drained pool took a new request"
    );
    *reply.lock().unwrap() = "down\n".into();
    wait_until("agent says down", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "down"
    })
    .await;
    *reply.lock().unwrap() = "sideways\n".into();
    wait_until("bad reply recorded", Duration::from_secs(5), || {
        lb.status().frontends[0].servers[0]
            .last_check
            .as_deref()
            .is_some_and(|c| c.contains("sideways"))
    })
    .await;
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_check_follows_the_program_exit_status() {
    let a = Backend::http("a").await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    let port = free_port();
    let lb = start(&format!(
        r#"
[[balance]]
name = "web"
listen = "127.0.0.1:{port}"
mode = "http"
[balance.check]
type = "exec"
command = ["/bin/sh", "-c", "test -e \"$0\" && test \"$UPHOLD_SERVER_NAME\" = a && test \"$UPHOLD_SERVER_PORT\" = {}", "{}"]
interval = "100ms"
rise = 1
fall = 1
[[balance.server]]
name = "a"
address = "{}"
"#,
        a.addr.port(),
        flag.display(),
        a.addr
    ));
    wait_until("exec says up", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "up"
    })
    .await;
    std::fs::remove_file(&flag).unwrap();
    wait_until("exec says down", Duration::from_secs(5), || {
        server_health(&lb, "web", "a") == "down"
    })
    .await;
    let st = lb.status();
    let s = &st.frontends[0].servers[0];
    assert!(
        s.last_check
            .as_deref()
            .unwrap()
            .contains("exited with code 1"),
        "{:?}",
        s.last_check
    );
    assert_eq!(s.history.last().unwrap().to, "down");
    lb.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freebind_listens_on_an_address_the_machine_does_not_hold_yet() {
    // 198.51.100.0/24 is documentation space: never local here. Nothing is sent to it.
    let port = free_port();
    let text = |freebind: bool| {
        format!(
            "[[balance]]\nname = \"vip\"\nlisten = \"198.51.100.7:{port}\"\nfreebind = {freebind}\n[[balance.server]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n"
        )
    };
    let c = config(&text(false));
    let err = uphold_balance::BalanceService::start(
        &c.balance,
        &c.balancer,
        tokio::runtime::Handle::current(),
    )
    .err()
    .expect("binding a foreign address without freebind must fail");
    assert!(err.contains("198.51.100.7"), "{err}");
    let lb = start(&text(true));
    assert_eq!(
        lb.status().frontends[0].listen,
        format!("198.51.100.7:{port}")
    );
    lb.stop();
}
