//! WebSocket plumbing: the upgrade handshake and a reader that turns the request payload into
//! whole messages (continuations reassembled, with the size bound applied to the whole message).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::ws::{Codec, Frame, HandshakeError, Item, ProtocolError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

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

/// Read buffers above this size are released once empty, so one large message does not pin
/// memory for the life of the connection.
const KEEP_BUFFER: usize = 8 * 1024;

pub struct WsReader {
    payload: web::Payload,
    buf: BytesMut,
    codec: Codec,
    max_size: usize,
    /// A fragmented message being reassembled: (is_text, bytes so far).
    partial: Option<(bool, BytesMut)>,
    done: bool,
}

impl WsReader {
    fn new(payload: web::Payload, max_size: usize) -> Self {
        Self {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_size),
            max_size,
            partial: None,
            done: false,
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<WsMessage>, ReadError> {
        Ok(match frame {
            Frame::Text(b) => Some(WsMessage::Text(b)),
            Frame::Binary(b) => Some(WsMessage::Binary(b)),
            Frame::Ping(b) => Some(WsMessage::Ping(b)),
            Frame::Pong(_) => Some(WsMessage::Pong),
            Frame::Close(_) => Some(WsMessage::Close),
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

impl Stream for WsReader {
    type Item = Result<WsMessage, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            // Decode whatever is buffered first.
            match actix_codec::Decoder::decode(&mut this.codec, &mut this.buf) {
                Ok(Some(frame)) => {
                    if this.buf.is_empty() && this.buf.capacity() > KEEP_BUFFER {
                        this.buf = BytesMut::new();
                    }
                    match this.on_frame(frame) {
                        Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                        Ok(None) => continue,
                        Err(e) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
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
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Validates the upgrade request and returns the 101 response (its body drains `outbox`) and
/// the reader for the client's messages.
pub fn upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    outbox: Arc<Outbox>,
    max_size: usize,
) -> Result<(HttpResponse, WsReader), HandshakeError> {
    upgrade_with(req, payload, OutboxStream::new(outbox), max_size)
}

/// [`upgrade`] with any body stream (the Engine.IO upgrade switches outboxes mid-stream).
pub fn upgrade_with<S>(
    req: &HttpRequest,
    payload: web::Payload,
    body: S,
    max_size: usize,
) -> Result<(HttpResponse, WsReader), HandshakeError>
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    actix_http::ws::verify_handshake(req.head())?;
    // verify_handshake checked the key is present.
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_ref()))
        .ok_or(HandshakeError::BadWebsocketKey)?;
    let accept = HeaderValue::from_bytes(&key).map_err(|_| HandshakeError::BadWebsocketKey)?;
    let response = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS)
        .upgrade("websocket")
        .insert_header((header::SEC_WEBSOCKET_ACCEPT, accept))
        .streaming(body);
    Ok((response, WsReader::new(payload, max_size)))
}
