//! `switchyard-bench floor-server --port P`: the floor of the fan-out and rooms scenarios, the
//! least any server has to do for their traffic on this machine, measured in the same run by the
//! same generator (as the `floor` target over the native protocol).
//!
//! One thread, one epoll loop (mio), no runtime, no actors, no JSON: it answers the WebSocket
//! handshake and the native `welcome`/`auth`/`join` exchanges with canned frames, and forwards a
//! `publish` frame's text as it came to every member of the publisher's room (the one room it
//! joined), encoded once, one `write` per member. Nothing is queued that a write takes at once;
//! only what a full socket refuses waits for the socket to drain. That is one read per inbound
//! frame and one write per delivery: the system calls a server cannot avoid when every member
//! gets each message as it happens. It keeps no offsets, no presence, no history and checks
//! nothing, so what it costs per delivery is what the kernel costs, plus very little.
//!
//! With `--presence true` (the connection set-up scenario) it also does the I/O presence
//! needs and nothing more: the `auth` frame's user is kept, a join's answer lists the users
//! already in the room, and each of them gets one canned `presence` frame naming the newcomer
//! (one write per delivery, as for a publish). A server with presence cannot write less at a
//! join; without it the floor would be spared frames the scenario checks every server for.
//!
//! Not a server to use: no limits, no timeouts, no fragmentation (continuation frames are
//! dropped), no TLS. Loopback only.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);
/// An inbound frame larger than this closes the connection (the benchmark's are ~150 bytes).
const MAX_FRAME: usize = 1 << 20;

struct Conn {
    stream: TcpStream,
    open: bool,
    inbuf: Vec<u8>,
    /// What a write could not take; sent when the socket is writable again.
    out: Vec<u8>,
    room: Option<usize>,
    /// The `auth` frame's user (presence only).
    user: Option<Box<str>>,
    dead: bool,
}

/// What a connection's bytes said.
enum Incoming {
    Handshake(String),
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// A bound floor server, not yet serving.
pub struct Floor {
    poll: Poll,
    listener: TcpListener,
    waker: std::sync::Arc<mio::Waker>,
    presence: bool,
}

/// Stops a serving [`Floor`] (from another thread).
#[derive(Clone)]
pub struct Stop(std::sync::Arc<mio::Waker>);

impl Stop {
    pub fn stop(&self) {
        let _ = self.0.wake();
    }
}

impl Floor {
    /// Listens on 127.0.0.1:`port` (0: any free port); `presence`: joins announce (module doc).
    pub fn bind(port: u16, presence: bool) -> Result<Floor, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("register: {e}"))?;
        let waker = mio::Waker::new(poll.registry(), WAKER).map_err(|e| format!("waker: {e}"))?;
        Ok(Floor {
            poll,
            listener,
            waker: std::sync::Arc::new(waker),
            presence,
        })
    }

    pub fn port(&self) -> Result<u16, String> {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| format!("local address: {e}"))
    }

    pub fn stopper(&self) -> Stop {
        Stop(self.waker.clone())
    }

    /// Serves until [`Stop::stop`] (the binary: until it is killed).
    pub fn serve(self) -> Result<(), String> {
        let Floor {
            mut poll,
            listener,
            presence,
            ..
        } = self;
        let mut st = State {
            presence,
            ..State::default()
        };
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 64 * 1024];
        let mut incoming = Vec::new();
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll_wait: {e}"));
            }
            let registry = poll.registry();
            for ev in events.iter() {
                match ev.token() {
                    WAKER => return Ok(()),
                    LISTENER => {
                        st.accept(&listener, registry);
                        continue;
                    }
                    _ => {}
                }
                let id = ev.token().0;
                if ev.is_writable() {
                    st.flush(registry, id);
                }
                if ev.is_readable() || ev.is_read_closed() {
                    let Some(Some(c)) = st.conns.get_mut(id) else {
                        continue;
                    };
                    if read(c, &mut buf, &mut incoming) {
                        st.kill(id);
                    }
                    for what in incoming.drain(..) {
                        st.handle(registry, id, what);
                    }
                }
            }
            // Connections whose read ended or whose write failed, dropped after the events
            // (never in the middle of a broadcast).
            while let Some(id) = st.dead.pop() {
                st.remove(registry, id);
            }
        }
    }
}

#[derive(Default)]
struct State {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    rooms: Vec<Vec<usize>>,
    names: HashMap<String, usize>,
    dead: Vec<usize>,
    presence: bool,
}

impl State {
    fn accept(&mut self, listener: &TcpListener, registry: &Registry) {
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors, say: the generator's connect times out and says so.
                    eprintln!("floor-server: accept: {e}");
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let id = self.free.pop().unwrap_or(self.conns.len());
            if registry
                .register(&mut stream, Token(id), Interest::READABLE)
                .is_err()
            {
                self.free.push(id);
                continue;
            }
            let conn = Conn {
                stream,
                open: false,
                inbuf: Vec::new(),
                out: Vec::new(),
                room: None,
                user: None,
                dead: false,
            };
            if id == self.conns.len() {
                self.conns.push(Some(conn));
            } else {
                self.conns[id] = Some(conn);
            }
        }
    }

    fn handle(&mut self, registry: &Registry, id: usize, what: Incoming) {
        match what {
            Incoming::Handshake(key) => {
                let mut answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                )
                .into_bytes();
                answer.extend(frame(0x1, br#"{"type":"welcome"}"#));
                self.send(registry, id, &answer);
            }
            Incoming::Text(text) => self.text(registry, id, &text),
            Incoming::Ping(p) => self.send(registry, id, &frame(0xA, &p)),
            Incoming::Close => {
                self.send(registry, id, &frame(0x8, &[]));
                self.kill(id);
            }
        }
    }

    fn text(&mut self, registry: &Registry, id: usize, text: &[u8]) {
        if find(text, br#""type":"publish""#).is_some() {
            let Some(room) = self
                .conns
                .get(id)
                .and_then(Option::as_ref)
                .and_then(|c| c.room)
            else {
                return;
            };
            // Encoded once; the same bytes go to every member, one write each.
            let out = frame(0x1, text);
            let members = std::mem::take(&mut self.rooms[room]);
            for &member in &members {
                self.send(registry, member, &out);
            }
            self.rooms[room] = members;
        } else if find(text, br#""type":"join""#).is_some() {
            let Some(name) = string_after(text, br#""room":""#) else {
                return;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let next = self.rooms.len();
            let room = *self.names.entry(name).or_insert(next);
            if room == next {
                self.rooms.push(Vec::new());
            }
            let Some(Some(c)) = self.conns.get_mut(id) else {
                return;
            };
            if c.room.is_some() {
                return self.send(registry, id, &frame(0x1, br#"{"type":"joined"}"#));
            }
            c.room = Some(room);
            let user = c.user.clone();
            let members = std::mem::take(&mut self.rooms[room]);
            match user.filter(|_| self.presence) {
                None => self.send(registry, id, &frame(0x1, br#"{"type":"joined"}"#)),
                Some(user) => {
                    // The answer lists who is here; each of them hears of the newcomer.
                    let mut answer = String::from(r#"{"type":"joined","presence":["#);
                    for (k, &m) in members.iter().enumerate() {
                        if let Some(u) = self.conns[m].as_ref().and_then(|c| c.user.as_deref()) {
                            let comma = if k > 0 { "," } else { "" };
                            answer.push_str(&format!(r#"{comma}{{"user":"{u}"}}"#));
                        }
                    }
                    answer.push_str("]}");
                    self.send(registry, id, &frame(0x1, answer.as_bytes()));
                    let news = frame(
                        0x1,
                        format!(r#"{{"type":"presence","joined":[{{"user":"{user}"}}]}}"#)
                            .as_bytes(),
                    );
                    for &m in &members {
                        self.send(registry, m, &news);
                    }
                }
            }
            self.rooms[room] = members;
            self.rooms[room].push(id);
        } else if find(text, br#""type":"auth""#).is_some() {
            if let (Some(Some(c)), Some(user)) =
                (self.conns.get_mut(id), string_after(text, br#""user":""#))
            {
                c.user = Some(String::from_utf8_lossy(user).into());
            }
            self.send(registry, id, &frame(0x1, br#"{"type":"authenticated"}"#));
        }
    }

    /// Writes at once; what the socket does not take waits in `out` until it is writable.
    fn send(&mut self, registry: &Registry, id: usize, bytes: &[u8]) {
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        if c.dead {
            return;
        }
        if !c.out.is_empty() {
            c.out.extend_from_slice(bytes);
            return;
        }
        let mut at = 0;
        while at < bytes.len() {
            match c.stream.write(&bytes[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return self.kill(id),
            }
        }
        if at < bytes.len() {
            c.out.extend_from_slice(&bytes[at..]);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if registry
                .reregister(&mut c.stream, Token(id), interest)
                .is_err()
            {
                self.kill(id);
            }
        }
    }

    fn flush(&mut self, registry: &Registry, id: usize) {
        let Some(Some(c)) = self.conns.get_mut(id) else {
            return;
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.kill(id),
            }
        }
        if registry
            .reregister(&mut c.stream, Token(id), Interest::READABLE)
            .is_err()
        {
            self.kill(id);
        }
    }

    /// Marks a connection for removal after this round of events.
    fn kill(&mut self, id: usize) {
        if let Some(Some(c)) = self.conns.get_mut(id) {
            if !c.dead {
                c.dead = true;
                self.dead.push(id);
            }
        }
    }

    fn remove(&mut self, registry: &Registry, id: usize) {
        let Some(mut c) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        let _ = registry.deregister(&mut c.stream);
        if let Some(room) = c.room {
            self.rooms[room].retain(|&m| m != id);
        }
        self.free.push(id);
    }
}

/// Reads what the socket has (one read when it returns less than the buffer holds, as Tokio
/// does), parses it; true at end of stream or on an error.
fn read(c: &mut Conn, buf: &mut [u8], incoming: &mut Vec<Incoming>) -> bool {
    let eof = loop {
        match c.stream.read(buf) {
            Ok(0) => break true,
            Ok(n) => {
                c.inbuf.extend_from_slice(&buf[..n]);
                if n < buf.len() {
                    break false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    if !c.open {
        let Some(end) = find(&c.inbuf, b"\r\n\r\n") else {
            return eof || c.inbuf.len() > 16 * 1024;
        };
        let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
        c.inbuf.drain(..end + 4);
        let key = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        });
        match key {
            Some(key) => {
                c.open = true;
                incoming.push(Incoming::Handshake(key));
            }
            None => return true,
        }
    }
    let mut at = 0;
    loop {
        match parse_frame(&c.inbuf[at..]) {
            Ok(Some((opcode, payload, used))) => {
                at += used;
                match opcode {
                    0x1 => incoming.push(Incoming::Text(payload)),
                    0x8 => {
                        incoming.push(Incoming::Close);
                        break;
                    }
                    0x9 => incoming.push(Incoming::Ping(payload)),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(()) => return true,
        }
    }
    c.inbuf.drain(..at);
    eof
}

/// One client frame (masked, as clients must): Ok(None) until all of it is there.
#[allow(clippy::type_complexity)]
fn parse_frame(b: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, ()> {
    if b.len() < 2 {
        return Ok(None);
    }
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() < 4 => return Ok(None),
        126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() < 10 => return Ok(None),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (usize::try_from(u64::from_be_bytes(n)).map_err(|_| ())?, 10)
        }
        n => (usize::from(n), 2),
    };
    if len > MAX_FRAME || !masked {
        return Err(());
    }
    if b.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let payload = b[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    Ok(Some((opcode, payload, at + len)))
}

/// A server frame (unmasked, final).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The string value after `key` (e.g. `"room":"`), up to the next quote.
fn string_after<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = find(text, key)? + key.len();
    let len = text[start..].iter().position(|&c| c == b'"')?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        // A masked client frame of 130 bytes (16-bit length).
        let payload = vec![b'a'; 130];
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | 126, 0, 130];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
        assert_eq!(parse_frame(&f[..f.len() - 1]), Ok(None));
        assert_eq!(parse_frame(&f), Ok(Some((1, payload.clone(), f.len()))));
        // Unmasked client frames are refused.
        assert_eq!(parse_frame(&frame(1, b"x")), Err(()));
        assert_eq!(frame(1, &payload)[..4], [0x81, 126, 0, 130]);
        assert_eq!(
            string_after(br#"{"type":"join","room":"r-1","id":"j"}"#, br#""room":""#),
            Some(&b"r-1"[..])
        );
    }
}
