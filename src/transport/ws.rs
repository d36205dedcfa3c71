//! WebSocket plumbing: the upgrade handshake, the hand-over of the socket from actix-http to the
//! connection (see [`crate::transport::conn`]), and a reader that turns the socket's bytes into
//! whole messages (continuations reassembled, with the size bound applied to the whole message).
//!
//! Why the socket is taken over: while actix-http's HTTP/1 dispatcher drives an upgraded
//! connection it keeps an 8 KiB read and an 8 KiB write buffer for the connection's whole life,
//! more than everything else an idle connection holds (docs/benchmarks.md, "idle"). Here an idle
//! connection holds no buffer at all: the reader allocates when bytes arrive and lets go once
//! they are decoded, and the writer writes the outbox's chunks straight to the socket.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::ws::{Codec, Frame, HandshakeError, Item, ProtocolError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use tokio::net::tcp::OwnedReadHalf;

use super::outbox::{Outbox, OutboxStream};

/// A whole message from the client.
#[derive(Debug)]
pub enum WsMessage {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
}

/// Why the read side failed. Each maps to a close code.
#[derive(Debug)]
pub enum ReadError {
    /// A message over the limit (close 1009).
    TooLarge { limit: usize },
    /// Anything else the framing layer refused (close 1002).
    Protocol(String),
}

/// Why an upgrade was refused (the caller answers 400).
#[derive(Debug)]
pub enum UpgradeError {
    Handshake(HandshakeError),
    /// A valid handshake that did not come through the upgrade service (e.g. `Upgrade:
    /// websocket, h2c`, which actix-http does not treat as an upgrade), so there is no socket
    /// to hand over.
    NotUpgradable,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Handshake(e) => write!(f, "{e}"),
            UpgradeError::NotUpgradable => f.write_str("the Upgrade header must be `websocket`"),
        }
    }
}

/// Put on a request by the upgrade service: its socket can be taken over.
pub(crate) struct Upgradable;

/// The outbound side of a taken-over connection: WebSocket frames, already encoded.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;

/// Left on a 101 response by a handler that accepted an upgrade; the upgrade service takes it
/// off, writes the 101, and runs the connection: `body` is written to the socket, and `open`
/// gets the reader of the client's messages (usually to start the connection's actor).
pub(crate) struct Takeover {
    pub body: Body,
    pub max_size: usize,
    pub open: Box<dyn FnOnce(WsReader)>,
}

/// A one-way signal between a connection's reader and writer: raised once, seen or awaited by
/// the other side. Atomics only: the writer checks it on every wake-up.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Ready once raised; otherwise `cx` is woken when it is.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_raised() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the look and the registration: the wake may have missed us.
        if self.is_raised() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn raised(&self) {
        std::future::poll_fn(|cx| self.poll_raised(cx)).await
    }
}

/// Shared by a connection's reader and writer.
#[derive(Default)]
pub(crate) struct Ending {
    /// The writer is done (close frame written or the socket failed): the reader ends too, as
    /// the whole connection did when actix-http drove it.
    pub writer_done: Signal,
    /// The reader was dropped (the connection's actor is gone).
    pub reader_gone: Signal,
    /// What a dropped reader hands back for the lingering close (see
    /// [`crate::transport::conn`]): closing a socket with unread input makes the kernel answer
    /// with a reset, which throws away the frames still in the send buffer.
    pub returned: std::sync::Mutex<Option<Returned>>,
}

/// The read side of a connection whose reader was dropped.
pub(crate) struct Returned {
    pub socket: OwnedReadHalf,
    /// Bytes read but not decoded; they start at a frame boundary.
    pub buf: BytesMut,
    /// The client's close frame was read: nothing legitimate follows it.
    pub client_closed: bool,
}

/// Follows the frames of a client's byte stream without keeping them, to spot its close frame.
/// Used while draining a closed connection: a client that sent its close frame sends nothing
/// more, so the connection can be closed without waiting for the client's end of stream.
#[derive(Default)]
pub(crate) struct FrameSkipper {
    /// The current frame's header so far (at most 14 bytes).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
}

impl FrameSkipper {
    /// Consumes `data`; true once a close frame's header went by.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if let Some((opcode, len)) = Self::header(&self.head) {
                self.head.clear();
                if opcode == 0x8 {
                    return true;
                }
                self.skip = len;
            }
        }
        false
    }

    /// (opcode, payload length) once `head` holds a whole header (mask key included).
    fn header(head: &[u8]) -> Option<(u8, u64)> {
        let (&first, &second) = (head.first()?, head.get(1)?);
        let ext = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        if head.len() < 2 + ext + mask {
            return None;
        }
        let len = match ext {
            0 => u64::from(second & 0x7f),
            _ => head[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        };
        Some((first & 0x0f, len))
    }
}

/// Read buffers get this much room per read; one that is empty after decoding is released, so
/// an idle connection holds none and one large message does not pin memory afterwards.
const READ_CHUNK: usize = 4 * 1024;

pub struct WsReader {
    socket: Option<OwnedReadHalf>,
    ending: Arc<Ending>,
    buf: BytesMut,
    codec: Codec,
    max_size: usize,
    /// A fragmented message being reassembled: (is_text, bytes so far).
    partial: Option<(bool, BytesMut)>,
    done: bool,
    /// The client's close frame was read.
    client_closed: bool,
}

impl WsReader {
    /// `buf`: bytes the client sent right after its handshake, read along with it.
    pub(crate) fn new(
        socket: Option<OwnedReadHalf>,
        buf: BytesMut,
        ending: Arc<Ending>,
        max_size: usize,
    ) -> Self {
        Self {
            socket,
            ending,
            buf,
            codec: Codec::new().max_size(max_size),
            max_size,
            partial: None,
            done: false,
            client_closed: false,
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<WsMessage>, ReadError> {
        Ok(match frame {
            Frame::Text(b) => Some(WsMessage::Text(b)),
            Frame::Binary(b) => Some(WsMessage::Binary(b)),
            Frame::Ping(b) => Some(WsMessage::Ping(b)),
            Frame::Pong(_) => Some(WsMessage::Pong),
            Frame::Close(_) => {
                self.client_closed = true;
                Some(WsMessage::Close)
            }
            Frame::Continuation(item) => {
                let (first, text, last, chunk) = match item {
                    Item::FirstText(b) => (true, true, false, b),
                    Item::FirstBinary(b) => (true, false, false, b),
                    Item::Continue(b) => (false, false, false, b),
                    Item::Last(b) => (false, false, true, b),
                };
                if first {
                    let mut acc = BytesMut::with_capacity(chunk.len());
                    acc.extend_from_slice(&chunk);
                    self.partial = Some((text, acc));
                    None
                } else {
                    let Some((is_text, mut acc)) = self.partial.take() else {
                        return Err(ReadError::Protocol("continuation without a start".into()));
                    };
                    if acc.len() + chunk.len() > self.max_size {
                        return Err(ReadError::TooLarge {
                            limit: self.max_size,
                        });
                    }
                    acc.extend_from_slice(&chunk);
                    if last {
                        let b = acc.freeze();
                        Some(if is_text {
                            WsMessage::Text(b)
                        } else {
                            WsMessage::Binary(b)
                        })
                    } else {
                        self.partial = Some((is_text, acc));
                        None
                    }
                }
            }
        })
    }
}

impl Drop for WsReader {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            if let Ok(mut slot) = self.ending.returned.lock() {
                *slot = Some(Returned {
                    socket,
                    buf: std::mem::take(&mut self.buf),
                    client_closed: self.client_closed,
                });
            }
        }
        self.ending.reader_gone.raise();
    }
}

impl Stream for WsReader {
    type Item = Result<WsMessage, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.ending.writer_done.is_raised() {
            this.done = true;
            return Poll::Ready(None);
        }
        loop {
            // Decode whatever is buffered first.
            match actix_codec::Decoder::decode(&mut this.codec, &mut this.buf) {
                Ok(Some(frame)) => match this.on_frame(frame) {
                    Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                    Ok(None) => continue,
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    let err = match e {
                        ProtocolError::Overflow => ReadError::TooLarge {
                            limit: this.max_size,
                        },
                        other => ReadError::Protocol(other.to_string()),
                    };
                    return Poll::Ready(Some(Err(err)));
                }
            }
            let Some(socket) = this.socket.as_mut() else {
                this.done = true;
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < READ_CHUNK / 4 {
                this.buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(socket), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // Idle: hold no buffer (decoded messages keep only their own bytes).
                        this.buf = BytesMut::new();
                    }
                    // Only a reader about to wait needs to hear that the writer finished.
                    if this.ending.writer_done.poll_raised(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Checks that `req` is a WebSocket handshake whose socket can be taken over.
pub fn check(req: &HttpRequest) -> Result<(), UpgradeError> {
    actix_http::ws::verify_handshake(req.head()).map_err(UpgradeError::Handshake)?;
    if !req.extensions().contains::<Upgradable>() {
        return Err(UpgradeError::NotUpgradable);
    }
    Ok(())
}

/// Accepts the upgrade: returns the 101 response, after which the connection drains `outbox`
/// and `open` gets the reader of the client's messages.
pub fn upgrade(
    req: &HttpRequest,
    outbox: Arc<Outbox>,
    max_size: usize,
    open: impl FnOnce(WsReader) + 'static,
) -> Result<HttpResponse, UpgradeError> {
    upgrade_with(req, OutboxStream::new(outbox), max_size, open)
}

/// [`upgrade`] with any body stream (the Engine.IO upgrade switches outboxes mid-stream).
pub fn upgrade_with<S>(
    req: &HttpRequest,
    body: S,
    max_size: usize,
    open: impl FnOnce(WsReader) + 'static,
) -> Result<HttpResponse, UpgradeError>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    check(req)?;
    // verify_handshake checked the key is present.
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_ref()))
        .ok_or(UpgradeError::Handshake(HandshakeError::BadWebsocketKey))?;
    let accept = HeaderValue::from_bytes(&key)
        .map_err(|_| UpgradeError::Handshake(HandshakeError::BadWebsocketKey))?;
    let mut response = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS)
        .upgrade("websocket")
        .insert_header((header::SEC_WEBSOCKET_ACCEPT, accept))
        .finish();
    response.extensions_mut().insert(Takeover {
        body: Box::pin(body),
        max_size,
        open: Box::new(open),
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::FrameSkipper;

    /// A masked client frame with `len` payload bytes (the payload is zeros).
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(0, len));
        f
    }

    #[test]
    fn the_skipper_finds_the_close_frame_behind_frames_of_every_length_form() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(0x1, len));
        }
        let before = stream.len();
        stream.extend(frame(0x8, 2));
        // Whole, and one byte at a time (headers split across reads).
        assert!(FrameSkipper::default().feed(&stream));
        let mut skipper = FrameSkipper::default();
        let seen: Vec<bool> = stream.iter().map(|b| skipper.feed(&[*b])).collect();
        assert_eq!(seen.iter().position(|s| *s), Some(before + 5));
        // Without the close frame: never.
        assert!(!FrameSkipper::default().feed(&stream[..before]));
    }

    #[test]
    fn a_close_opcode_inside_a_payload_is_not_a_close_frame() {
        let mut f = frame(0x2, 10);
        f[6..].fill(0x88);
        assert!(!FrameSkipper::default().feed(&f));
    }
}
