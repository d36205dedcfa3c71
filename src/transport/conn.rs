//! The upgrade service: actix-http hands it every request that asks for a WebSocket upgrade
//! together with the connection's socket. The request goes through the application like any
//! other (same routes, extractors, middleware and errors); when its handler accepted the upgrade
//! (a `Takeover` on the 101 response), the connection is run here, without actix-http's
//! per-connection buffers: the client's bytes go straight to the [`WsReader`] its actor polls,
//! and the outbox's chunks go straight from the [`Body`] to the socket.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{to_bytes, BodySize, MessageBody};
use actix_http::h1::{Codec, Message, SendResponse};
use actix_http::{ConnectionType, HttpMessage, Request, Response};
use actix_web::dev::{Service, ServiceResponse};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Metrics;

use super::head::HeadGuarded;
use super::outbox::Outbox;
use super::socket::WriteSocket;
use super::ws::{Body, Ending, FrameSkipper, Returned, Takeover, Upgradable, WsReader};

/// Serves one upgrade request on `app`, the worker's instance of the application.
///
/// An accepted connection is run in a task of its own, and this one (actix-http's connection
/// task, ~2.5 KiB: it is sized for the dispatcher's largest state) ends. actix-server then no
/// longer counts the connection, so `metrics.websockets` does: a graceful shutdown waits for it.
/// `linger`: once the connection's actor is gone (its reader dropped), how long the writer may
/// still take to deliver what is queued, the close frame last. A client that stops reading
/// cannot keep a closed connection (and its queued bytes) alive longer than this.
pub async fn serve<S, B>(
    app: Rc<S>,
    metrics: Arc<Metrics>,
    linger: Duration,
    (req, framed): (Request, Framed<HeadGuarded, Codec>),
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(Upgradable);
    let mut res: Response<_> = match app.call(req).await {
        Ok(res) => Response::from(res.map_into_boxed_body()),
        Err(e) => Response::from(e.error_response()),
    };
    let Some(takeover) = res.extensions_mut().remove::<Takeover>() else {
        // Refused (or not a WebSocket route): an ordinary response, then the connection closes
        // (it cannot go back to the HTTP dispatcher).
        res.head_mut().set_connection_type(ConnectionType::Close);
        let (head, body) = res.into_parts();
        // Error bodies are small JSON documents, already in memory.
        let body = to_bytes(body).await.unwrap_or_default();
        if let Err(e) = SendResponse::new(framed, head.set_body(body)).await {
            log::debug!("upgrade refusal not delivered: {e}");
        }
        return Ok(());
    };
    let (head, _empty) = res.into_parts();
    let mut parts = framed.into_parts();
    // The head deadline's wrapper is done with: a WebSocket has its own heartbeats.
    let mut socket = parts.io.into_inner();
    // The write buffer may still hold an earlier response on this connection: 101 goes after it.
    let encoded = parts
        .codec
        .encode(Message::Item((head, BodySize::None)), &mut parts.write_buf);
    // A plain WebSocket's answer waits at the front of its outbox, for the writer's first write
    // together with what the actor queues as it starts (the floor's "101 and welcome in one
    // write"; one system call and one wake-up of the client less per connection).
    let sent = match encoded {
        Ok(()) => match &takeover.direct {
            Some(d) if d.answer_in_outbox => {
                d.written.answer_first(parts.write_buf.split().freeze());
                Ok(())
            }
            _ => socket.write_all(&parts.write_buf).await,
        },
        Err(e) => Err(e),
    };
    let ending = Arc::new(Ending::default());
    if let Err(e) = sent {
        log::debug!("WebSocket handshake answer not delivered: {e}");
        // The handler's side still learns that the connection ended (e.g. an Engine.IO session
        // waiting on this upgrade falls back to polling).
        (takeover.open)(WsReader::new(None, BytesMut::new(), ending, takeover.limit));
        return Ok(());
    }
    // Frames the client sent right behind its handshake (rare) were read with it; keep just
    // those bytes, not the dispatcher's buffer.
    let early = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&parts.read_buf[..])
    };
    drop(parts.read_buf);
    drop(parts.write_buf);
    let (read, write) = socket.into_split();
    let write = Arc::new(WriteSocket::new(write, metrics.clone()));
    let written = takeover.direct.map(|d| {
        (d.attach)(write.clone());
        d.written
    });
    (takeover.open)(WsReader::new(
        Some(read),
        early,
        ending.clone(),
        takeover.limit,
    ));
    actix_web::rt::spawn(Writer {
        socket: write,
        body: Some(takeover.body),
        written,
        ending,
        linger,
        chunk: None,
        at: 0,
        deadline: None,
        closing: None,
        _open: OpenSocket::new(metrics),
    });
    Ok(())
}

/// Counts a taken-over socket in `metrics.websockets` while it lives.
struct OpenSocket(Arc<Metrics>);

impl OpenSocket {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.websockets.inc();
        Self(metrics)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.websockets.dec();
    }
}

/// A taken-over connection's writer task: writes every chunk of `body` as it comes, then shuts
/// the socket's write side; each chunk is what the connection's outbox held when it was drained,
/// so its size is that queue's depth in bytes (`switchyard_outbox_depth_bytes`). `written`: the
/// outbox that may also write to the socket itself, told when each chunk is written. Once the
/// body ended (or the socket failed) it closes the connection the lingering way. If the reader
/// is gone (the connection's actor stopped) while the body still goes on, it gives the rest at
/// most `linger`: a client that stops reading cannot keep a closed connection (and its queued
/// bytes) alive longer than that. Ends the reader whichever way it finishes.
///
/// A future written out rather than an `async` block: this state is what every idle connection
/// holds, and the `async` version kept each step's locals side by side (392 bytes, a 512-byte
/// task; this one is a 256-byte task; docs/benchmarks.md, "Idle memory").
struct Writer {
    socket: Arc<WriteSocket>,
    /// `None` once it ended (or failed).
    body: Option<Body>,
    written: Option<Arc<Outbox>>,
    ending: Arc<Ending>,
    linger: Duration,
    /// The chunk being written, and how much of it is written.
    chunk: Option<Bytes>,
    at: usize,
    /// Armed when the reader is gone while the body still goes on. Boxed, as is `closing`: only
    /// needed at the end, so they do not size the task.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The lingering close, once the body was delivered.
    closing: Option<Pin<Box<dyn Future<Output = ()>>>>,
    _open: OpenSocket,
}

impl Writer {
    /// Ready once the body ended or the socket failed.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(chunk) = &self.chunk {
                while self.at < chunk.len() {
                    match self.socket.poll_write(cx, &chunk[self.at..]) {
                        Poll::Ready(Ok(n)) => self.at += n,
                        Poll::Ready(Err(e)) => {
                            log::debug!("WebSocket write failed: {e}");
                            if let Some(outbox) = &self.written {
                                outbox.written();
                            }
                            return Poll::Ready(());
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.chunk = None;
                if let Some(outbox) = &self.written {
                    outbox.written();
                }
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(());
            };
            match body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.socket.note_chunk(chunk.len());
                    self.chunk = Some(chunk);
                    self.at = 0;
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    self.socket.shutdown_write();
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Future for Writer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some(closing) = &mut this.closing {
                return closing.as_mut().poll(cx);
            }
            if this.poll_body(cx).is_ready() {
                this.body = None;
                this.chunk = None;
                this.deadline = None;
                // The reader ends too, as the whole connection did when actix-http drove it.
                this.ending.writer_done.raise();
                this.closing = Some(Box::pin(lingering_close(this.ending.clone(), this.linger)));
                continue;
            }
            if this.deadline.is_none() {
                if this.ending.reader_gone.poll_raised(cx).is_pending() {
                    return Poll::Pending;
                }
                this.deadline = Some(Box::pin(tokio::time::sleep(this.linger)));
            }
            if let Some(deadline) = &mut this.deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    log::debug!("dropping a closed connection whose client does not read");
                    return Poll::Ready(());
                }
            }
            return Poll::Pending;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // However it ends (dropped at shutdown too), the reader ends with it.
        self.ending.writer_done.raise();
    }
}

/// Once everything, the close frame last, was written and the write side shut: reads and
/// discards what the client still sends until its close frame or its end of stream, for at
/// most `linger`. Closing a socket with unread input makes the kernel answer with a reset,
/// which throws away what is still in the send buffer: a client flooding the server when it
/// is cut off would lose the frames queued before the close, the close frame itself, and the
/// reason it was closed.
async fn lingering_close(ending: Arc<Ending>, linger: Duration) {
    let drain = async {
        // The reader ends once the writer is done; its actor drops it and hands the rest back.
        ending.reader_gone.raised().await;
        let returned = ending.returned.lock().ok().and_then(|mut slot| slot.take());
        let Some(Returned {
            socket: mut read,
            buf,
            client_closed,
        }) = returned
        else {
            return;
        };
        let mut frames = FrameSkipper::default();
        if client_closed || frames.feed(&buf) {
            return;
        }
        let mut sink = vec![0u8; 4096];
        while let Ok(n @ 1..) = read.read(&mut sink).await {
            if frames.feed(&sink[..n]) {
                return;
            }
        }
    };
    if tokio::time::timeout(linger, drain).await.is_err() {
        log::debug!("closing a connection whose client kept sending after the close");
    }
}
