//! The write side of a taken-over connection, shared by its writer task and its outbox.
//!
//! Two ways write to it, never at once (the outbox's lock and its `writing` mark decide):
//!
//! - the connection's writer task (`transport::conn`), which writes the chunks the outbox's
//!   stream drains — several queued frames in one write when they piled up;
//! - a producer pushing into an empty, idle outbox with [`Outbox::push_text_now`]
//!   (`crate::transport::outbox::Outbox`): the frame is written at once, on the producer's
//!   thread, with no wake-up of the writer task, no task poll and no copy into a chunk. A room
//!   uses it while it is quiet (`room/placement.rs`; docs/benchmarks.md, "Small rooms and quiet
//!   rooms": in rooms of four every delivery used to cost a wake-up of the writer, often on
//!   another thread, then a poll of its task, for one frame).
//!
//! Writing from any thread is sound: a direct write is a plain non-blocking `sendmsg(2)` on the
//! socket inside tokio's `try_io`, whose readiness bookkeeping is atomic; a `WouldBlock` clears
//! the readiness, and the writer task waits for the next writable edge as usual.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::tcp::OwnedWriteHalf;

use crate::metrics::Metrics;

pub struct WriteSocket {
    half: OwnedWriteHalf,
    metrics: Arc<Metrics>,
}

/// What [`WriteSocket::try_text`] did with a frame.
pub enum Tried {
    /// Written whole.
    All,
    /// Partly written: these bytes (already framed) must be written next, before anything else.
    Rest(Bytes),
    /// Nothing written (the socket is not writable now, or failed): queue the frame as usual;
    /// the writer task meets the same condition and handles it.
    Nothing,
}

impl WriteSocket {
    pub fn new(half: OwnedWriteHalf, metrics: Arc<Metrics>) -> Self {
        Self { half, metrics }
    }

    /// Writes all of `buf`, waiting for the socket to be writable when it is not.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        self.note_chunk(buf.len());
        while !buf.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_write(cx, buf)).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Counts a chunk the writer is about to write (`switchyard_outbox_depth_bytes`).
    pub fn note_chunk(&self, len: usize) {
        self.metrics.observe_outbox_depth(len);
    }

    /// Writes some of `buf` (never 0 bytes of a non-empty one), or registers `cx` for the
    /// socket's next writable edge. Shares tokio's readiness with the direct writes: a
    /// `WouldBlock` from either clears it.
    pub fn poll_write(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.half.try_write(buf) {
                Ok(0) if !buf.is_empty() => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let stream: &tokio::net::TcpStream = self.half.as_ref();
                    match stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Tries to write `payload` as one WebSocket text frame now, without waiting: the header
    /// and the shared payload in one `sendmsg`, no copy.
    pub fn try_text(&self, payload: &Bytes) -> Tried {
        let mut head = [0u8; 10];
        let head = text_header(&mut head, payload.len());
        let total = head.len() + payload.len();
        // `sendmsg`, not tokio's `try_write_vectored`: that is `writev`, which goes through the
        // VFS (the file position lock among other things) and cost ~0.6 µs more per frame in
        // the rooms benchmark's profile. `try_io` keeps tokio's readiness right either way.
        let stream: &tokio::net::TcpStream = self.half.as_ref();
        let sent = stream.try_io(Interest::WRITABLE, || {
            // MSG_NOSIGNAL: a peer gone is an error here, never a SIGPIPE.
            socket2::SockRef::from(stream).send_vectored_with_flags(
                &[IoSlice::new(head), IoSlice::new(payload)],
                libc::MSG_NOSIGNAL,
            )
        });
        match sent {
            Ok(n) if n == total => {
                self.metrics.observe_outbox_depth(total);
                self.metrics.direct_writes.inc();
                Tried::All
            }
            Ok(0) | Err(_) => Tried::Nothing,
            Ok(n) => {
                self.metrics.observe_outbox_depth(n);
                self.metrics.direct_writes.inc();
                Tried::Rest(if n < head.len() {
                    let mut rest = Vec::with_capacity(total - n);
                    rest.extend_from_slice(&head[n..]);
                    rest.extend_from_slice(payload);
                    Bytes::from(rest)
                } else {
                    payload.slice(n - head.len()..)
                })
            }
        }
    }

    /// Shuts the write side (the client reads its end of stream), whoever else still holds
    /// this socket.
    pub fn shutdown_write(&self) {
        let sock = socket2::SockRef::from(self.half.as_ref());
        if let Err(e) = sock.shutdown(std::net::Shutdown::Write) {
            log::debug!("WebSocket shutdown failed: {e}");
        }
    }
}

/// Writes the header of an unmasked, final text frame of `len` bytes (RFC 6455 §5.2) into
/// `buf`; returns the part used.
fn text_header(buf: &mut [u8; 10], len: usize) -> &[u8] {
    buf[0] = 0x81;
    if len < 126 {
        buf[1] = len as u8;
        &buf[..2]
    } else if let Ok(short) = u16::try_from(len) {
        buf[1] = 126;
        buf[2..4].copy_from_slice(&short.to_be_bytes());
        &buf[..4]
    } else {
        buf[1] = 127;
        buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        &buf[..10]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{OpCode, Parser};
    use bytes::BytesMut;

    #[test]
    fn the_header_is_the_one_the_codec_writes() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let mut codec = BytesMut::new();
            Parser::write_message(&mut codec, &payload, OpCode::Text, true, false);
            let mut head = [0u8; 10];
            let ours = text_header(&mut head, len);
            assert_eq!(ours, &codec[..codec.len() - len], "length {len}");
        }
    }

    /// A server-to-client frame: (opcode, payload), reading from `bytes` at `*at`.
    fn frame(bytes: &[u8], at: &mut usize) -> (u8, Vec<u8>) {
        let (op, len1) = (bytes[*at] & 0x0f, bytes[*at + 1] & 0x7f);
        let (len, head) = match len1 {
            126 => (
                u16::from_be_bytes([bytes[*at + 2], bytes[*at + 3]]) as usize,
                4,
            ),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[*at + 2..*at + 10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n => (n as usize, 2),
        };
        let payload = bytes[*at + head..*at + head + len].to_vec();
        *at += head + len;
        (op, payload)
    }

    /// Direct writes and the writer share one socket: a frame pushed into an idle outbox goes
    /// out at once; the rest of a frame the socket took only part of goes first when the writer
    /// runs, ahead of a ping queued meanwhile (control frames otherwise jump the queue); while
    /// the writer holds a chunk, a push is queued behind it.
    #[actix_web::test]
    async fn direct_writes_and_the_writer_keep_one_byte_stream() {
        use crate::transport::outbox::{Outbox, OutboxStream};
        use futures_util::StreamExt;
        use tokio::io::AsyncReadExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let metrics = Arc::new(Metrics::new());
        let socket = Arc::new(WriteSocket::new(write, metrics.clone()));
        socket.half.writable().await.unwrap();
        let outbox = Outbox::new(16, 64 << 20);
        outbox.attach(socket.clone());

        outbox.push_text_now(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(outbox.backlog(), (0, 0), "written, not queued");
        let mut got = vec![0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"\x81\x05hello");

        // The client does not read: the socket takes part of 16 MiB, the rest is queued.
        let big = Bytes::from(vec![b'x'; 16 << 20]);
        outbox.push_text_now(big.clone()).unwrap();
        let (queued, rest) = outbox.backlog();
        assert_eq!(queued, 1);
        assert!(rest > 0 && rest < big.len(), "{rest} bytes left");
        outbox.ping();
        outbox.push_text_now(Bytes::from_static(b"after")).unwrap();
        assert_eq!(
            outbox.backlog().0,
            3,
            "queued behind the rest: {:?}",
            outbox.backlog()
        );
        assert_eq!(metrics.direct_writes.get(), 2);

        // The writer's side, as `transport::conn` runs it.
        let mut stream = OutboxStream::new(outbox.clone());
        let chunk = stream.next().await.unwrap().unwrap();
        outbox
            .push_text_now(Bytes::from_static(b"while writing"))
            .unwrap();
        assert_eq!(outbox.backlog().0, 1, "the writer holds a chunk: queued");
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let want = (10 + big.len()) + 2 + 7 + 15;
            while all.len() < want {
                let mut buf = vec![0u8; 1 << 20];
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        socket.write_all(&chunk).await.unwrap();
        outbox.written();
        let chunk = stream.next().await.unwrap().unwrap();
        socket.write_all(&chunk).await.unwrap();
        outbox.written();
        let all = reader.await.unwrap();
        let mut at = 0;
        let frames: Vec<(u8, usize)> = std::iter::from_fn(|| {
            (at < all.len()).then(|| {
                let (op, p) = frame(&all, &mut at);
                (op, p.len())
            })
        })
        .collect();
        assert_eq!(
            frames,
            vec![(1, 16 << 20), (9, 0), (1, 5), (1, 13)],
            "the big text whole, the ping, then the rest in push order"
        );
    }
}
