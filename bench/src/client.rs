//! Connections: a WebSocket from a chosen 127.0.0.x source address, the join handshake of each
//! protocol, the publish frames, and the cheap scan of received frames (no JSON parse per frame:
//! the load generator runs on one core and must keep up with the server).

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// The wire protocol of a run: Switchyard's native `/ws`, or Socket.IO (Switchyard's
/// `/socket.io/` or the Node reference server), always over a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Native,
    Sio,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Protocol::Native),
            "sio" | "socket.io" => Ok(Protocol::Sio),
            other => Err(format!("unknown protocol {other:?} (native or sio)")),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Native => "native",
            Protocol::Sio => "sio",
        })
    }
}

/// `http://127.0.0.1:8080`, `127.0.0.1:8080` or `ws://…` → the socket address.
pub fn parse_addr(url: &str) -> Result<SocketAddr, String> {
    let hostport = url
        .trim_start_matches("http://")
        .trim_start_matches("ws://")
        .trim_end_matches('/');
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .map_err(|e| format!("server address {url:?}: {e} (give http://IP:PORT)"))
}

/// The source address of connection `i` when spreading over `sources` addresses 127.0.0.1….
pub fn source(i: usize, sources: usize) -> Ipv4Addr {
    let n = sources.clamp(1, 250);
    Ipv4Addr::new(127, 0, 0, 1 + (i % n) as u8)
}

pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A WebSocket to the protocol's endpoint, from `source`.
pub async fn open(addr: SocketAddr, protocol: Protocol, source: Ipv4Addr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr} from {source}: {e}"))?;
    stream.set_nodelay(true).map_err(err)?;
    let path = match protocol {
        Protocol::Native => "/ws",
        Protocol::Sio => "/socket.io/?EIO=4&transport=websocket",
    };
    // Small eager buffers: tungstenite's 128 KiB default would be 2 GiB over 16,000 members.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake with {addr}{path}: {e}"))?;
    Ok(ws)
}

/// The next text frame, answering Engine.IO pings ("2") on the way.
pub async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    ws.send(Message::text("3")).await.map_err(err)?;
                    continue;
                }
                return Ok(t.to_string());
            }
            Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended".into()),
        }
    }
}

/// Waits for the first text frame for which `pick` says Some(Ok|Err).
pub async fn wait_for<T>(
    ws: &mut Ws,
    within: Duration,
    what: &str,
    mut pick: impl FnMut(&str) -> Option<Result<T, String>>,
) -> Result<T, String> {
    let fut = async {
        loop {
            let t = next_text(ws).await?;
            if let Some(r) = pick(&t) {
                return r;
            }
        }
    };
    tokio::time::timeout(within, fut)
        .await
        .map_err(|_| format!("no {what} within {within:?}"))?
}

/// Opens a connection and, for Socket.IO, connects the default namespace. With `user`, the
/// connection declares that identity (open mode: native `auth` frame, Socket.IO CONNECT
/// payload); without, each connection is its own anonymous user.
pub async fn connect(
    addr: SocketAddr,
    protocol: Protocol,
    source: Ipv4Addr,
    user: Option<&str>,
    within: Duration,
) -> Result<Ws, String> {
    let mut ws = tokio::time::timeout(within, open(addr, protocol, source))
        .await
        .map_err(|_| format!("connect to {addr} took over {within:?}"))??;
    match protocol {
        Protocol::Native => {
            wait_for(&mut ws, within, "welcome", |t| {
                t.contains("\"welcome\"").then_some(Ok(()))
            })
            .await?;
            if let Some(user) = user {
                let frame = format!(r#"{{"type":"auth","user":"{user}","name":"{user}"}}"#);
                ws.send(Message::text(frame)).await.map_err(err)?;
                wait_for(&mut ws, within, "authenticated", |t| {
                    if t.contains(r#""type":"authenticated""#) {
                        Some(Ok(()))
                    } else if t.contains(r#""type":"error""#) {
                        Some(Err(format!("auth refused: {t}")))
                    } else {
                        None
                    }
                })
                .await?;
            }
        }
        Protocol::Sio => {
            wait_for(&mut ws, within, "Engine.IO open packet", |t| {
                Some(if t.starts_with('0') {
                    Ok(())
                } else {
                    Err(format!("expected an open packet, got {t}"))
                })
            })
            .await?;
            let connect = match user {
                Some(user) => format!(r#"40{{"user":"{user}","name":"{user}"}}"#),
                None => "40".to_string(),
            };
            ws.send(Message::text(connect)).await.map_err(err)?;
            wait_for(&mut ws, within, "Socket.IO CONNECT", |t| {
                if t.starts_with("40") {
                    Some(Ok(()))
                } else if t.starts_with("44") {
                    Some(Err(format!("CONNECT refused: {t}")))
                } else {
                    None
                }
            })
            .await?;
        }
    }
    Ok(ws)
}

/// Joins `room` (native `join` with an id, Socket.IO `join` with an ack) and waits for the answer.
pub async fn join(
    ws: &mut Ws,
    protocol: Protocol,
    room: &str,
    within: Duration,
) -> Result<(), String> {
    match protocol {
        Protocol::Native => {
            let frame = format!(r#"{{"type":"join","room":"{room}","id":"j"}}"#);
            ws.send(Message::text(frame)).await.map_err(err)?;
            wait_for(ws, within, "joined", |t| {
                if t.contains(r#""type":"joined""#) {
                    Some(Ok(()))
                } else if t.contains(r#""type":"error""#) {
                    Some(Err(format!("join {room} refused: {t}")))
                } else {
                    None
                }
            })
            .await
        }
        Protocol::Sio => {
            let frame = format!(r#"421["join",{{"room":"{room}"}}]"#);
            ws.send(Message::text(frame)).await.map_err(err)?;
            wait_for(ws, within, "join ack", |t| {
                t.starts_with("431").then(|| {
                    if t.contains(r#""ok":true"#) {
                        Ok(())
                    } else {
                        Err(format!("join {room} refused: {t}"))
                    }
                })
            })
            .await
        }
    }
}

/// Connects from `source` (as `user`, if given) and joins `room`.
pub async fn member(
    addr: SocketAddr,
    protocol: Protocol,
    source: Ipv4Addr,
    user: Option<&str>,
    room: &str,
    within: Duration,
) -> Result<Ws, String> {
    let mut ws = connect(addr, protocol, source, user, within).await?;
    join(&mut ws, protocol, room, within).await?;
    Ok(ws)
}

/// A member the way a browser's socket.io-client arrives (its default transports): an
/// Engine.IO session opened over HTTP long-polling, the Socket.IO CONNECT over polling, then the
/// upgrade to a WebSocket (probe, upgrade packet) while a poll is pending, then the join over
/// the WebSocket. What the server holds afterwards is what the idle scenario's
/// `--via-polling` measures (`bench/run.sh` runs it for every Socket.IO target). Unlike
/// socket.io-client, this does not wait for its pending poll to end before sending `5`, so the
/// poll may be held mid-upgrade and refused: the path that once left every such session asleep
/// until its ping timeout (fixed in the server; `bench_smoke` holds these connections across
/// ping rounds).
pub async fn member_via_polling(
    addr: SocketAddr,
    source: Ipv4Addr,
    user: Option<&str>,
    room: &str,
    within: Duration,
) -> Result<Ws, String> {
    let fut = async {
        let base = "/socket.io/?EIO=4&transport=polling";
        let open = http(addr, source, "GET", base, "").await?;
        let sid = open
            .split("\"sid\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .ok_or_else(|| format!("no sid in the open packet: {open}"))?
            .to_string();
        let path = format!("{base}&sid={sid}");
        let connect = match user {
            Some(user) => format!(r#"40{{"user":"{user}","name":"{user}"}}"#),
            None => "40".to_string(),
        };
        http(addr, source, "POST", &path, &connect).await?;
        let answer = http(addr, source, "GET", &path, "").await?;
        if !answer.contains("40{") {
            return Err(format!("CONNECT over polling answered {answer}"));
        }
        // The client keeps a poll open while it probes the WebSocket; the server ends it (a
        // noop) once the upgrade completes.
        let pending = tokio::spawn({
            let path = path.clone();
            async move { http(addr, source, "GET", &path, "").await }
        });
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .map_err(|e| format!("bind {source}: {e}"))?;
        let stream = socket.connect(addr).await.map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        ws.send(Message::text("2probe")).await.map_err(err)?;
        wait_for(&mut ws, within, "3probe", |t| {
            (t == "3probe").then_some(Ok(()))
        })
        .await?;
        ws.send(Message::text("5")).await.map_err(err)?;
        // The old transport's last poll ends with a noop, or, if it reached the server after
        // the upgrade, with a 400 the client ignores (socket.io-client discards the polling
        // transport once upgraded): either way it is over.
        let _ = pending.await;
        join(&mut ws, Protocol::Sio, room, within).await?;
        Ok(ws)
    };
    tokio::time::timeout(within, fut)
        .await
        .map_err(|_| format!("connect via polling took over {within:?}"))?
}

/// One HTTP/1.1 request on a connection of its own from `source`: the body of a 200.
async fn http(
    addr: SocketAddr,
    source: Ipv4Addr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket.connect(addr).await.map_err(err)?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.map_err(err)?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.map_err(err)?;
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head: {text}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method} {path}: {head}"));
    }
    Ok(rest.to_string())
}

/// A publish of event `tick` to `room` whose data is `{"t":…,"p":…,"i":…,"pad":"…"}`: the send
/// time in µs, the stream (sender) and its sequence number. No ack is asked for: members
/// (the sender too) get the message, which is what is measured.
pub fn publish_frame(protocol: Protocol, room: &str, t: u64, p: u32, i: u64, pad: &str) -> String {
    match protocol {
        Protocol::Native => format!(
            r#"{{"type":"publish","room":"{room}","event":"tick","data":{{"t":{t},"p":{p},"i":{i},"pad":"{pad}"}}}}"#
        ),
        Protocol::Sio => format!(
            r#"42["publish",{{"room":"{room}","event":"tick","data":{{"t":{t},"p":{p},"i":{i},"pad":"{pad}"}}}}]"#
        ),
    }
}

/// What a received `tick` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    pub t: u64,
    pub p: u32,
    pub i: u64,
}

fn number(s: &[u8], at: &mut usize) -> Option<u64> {
    let start = *at;
    let mut v: u64 = 0;
    while let Some(d) = s.get(*at).filter(|c| c.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        *at += 1;
    }
    (*at > start).then_some(v)
}

/// The number after `key` (e.g. `"t":`) in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    number(text.as_bytes(), &mut { at })
}

/// The tick in a received frame, if it is one: the numbers after `"t":`, `"p":` and `"i":`,
/// found wherever they are (servers may re-encode `data`: Switchyard's Socket.IO side sorts its
/// keys). No other frame of either protocol has these keys (rooms, users and events are named
/// so that none of them is `t`, `p` or `i`).
pub fn scan_tick(text: &str) -> Option<Tick> {
    let t = field(text, r#""t":"#)?;
    let p = u32::try_from(field(text, r#""p":"#)?).ok()?;
    let i = field(text, r#""i":"#)?;
    Some(Tick { t, p, i })
}

/// A marker `@@<t>:<seq>` in an operation's progress message or log line, after `key`.
pub fn scan_marker(text: &str, key: &str) -> Option<(u64, u64)> {
    let at = text.find(key)?;
    let s = text.as_bytes();
    let mut k = at + key.len();
    let t = number(s, &mut k)?;
    if s.get(k) != Some(&b':') {
        return None;
    }
    k += 1;
    let seq = number(s, &mut k)?;
    Some((t, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_ticks_of_both_protocols() {
        let native = r#"{"type":"message","room":"r","offset":3,"event":"tick","data":{"t":17,"p":2,"i":9,"pad":"xx"},"from":null}"#;
        assert_eq!(scan_tick(native), Some(Tick { t: 17, p: 2, i: 9 }));
        let sio = r#"42["tick",{"t":1732000000000000,"p":0,"i":0,"pad":""},{"room":"r","offset":1,"from":null}]"#;
        assert_eq!(
            scan_tick(sio),
            Some(Tick {
                t: 1732000000000000,
                p: 0,
                i: 0
            })
        );
        assert_eq!(scan_tick(r#"{"type":"presence","room":"r"}"#), None);
        assert_eq!(scan_tick(r#"{"t":1,"p":x}"#), None);
        let sorted = r#"42["tick",{"i":4,"p":1,"pad":"x","t":9},{"room":"r","offset":5,"from":{"user":"anon-x"}}]"#;
        assert_eq!(scan_tick(sorted), Some(Tick { t: 9, p: 1, i: 4 }));
        let frame = publish_frame(Protocol::Native, "r", 5, 1, 7, "ab");
        assert_eq!(scan_tick(&frame), Some(Tick { t: 5, p: 1, i: 7 }));
        let frame = publish_frame(Protocol::Sio, "r", 5, 1, 7, "ab");
        assert_eq!(scan_tick(&frame), Some(Tick { t: 5, p: 1, i: 7 }));
    }

    #[test]
    fn scans_markers() {
        let t = r#"{"data":{"offset":4,"stream":"stdout","line":"@@123:45","ts":"x"}}"#;
        assert_eq!(scan_marker(t, r#""line":"@@"#), Some((123, 45)));
        assert_eq!(scan_marker(t, r#""message":"@@"#), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(source(0, 4), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source(5, 4), Ipv4Addr::new(127, 0, 0, 2));
    }
}
