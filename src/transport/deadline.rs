//! A deadline on request bodies: a body must have arrived `SWITCHYARD_REQUEST_TIMEOUT_MS` after
//! its request's head, or the request gets 408 `request_timeout` and the connection is closed.
//!
//! Why here and not in actix-http: its `client_request_timeout` covers the request head only;
//! once a handler waits for the body, nothing bounds how long a client may take to send it (a
//! client announcing `Content-Length: 1000` and then sending nothing, or a byte a second, held
//! its connection and its handler for as long as it liked). A timeout around each handler
//! would also cut long-polls and would have to be repeated per extractor; wrapping the payload
//! stream bounds every way a body is read (JSON, bytes, the Engine.IO POST) in one place, and
//! costs nothing for requests without a body.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use actix_http::ConnectionType;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use actix_web::ResponseError;
use bytes::Bytes;
use futures_util::Stream;

use super::head::HeadWatch;
use crate::error::{AppError, ErrorCode};

/// The request's body, cut off at its deadline.
struct TimedPayload {
    inner: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// Raised when the deadline cut the body off: the response becomes a 408.
    expired: Rc<Cell<bool>>,
}

impl Stream for TimedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.expired.get() {
            return Poll::Ready(None);
        }
        // The body first: bytes that are already here are not refused for a timer that fired
        // while they waited.
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.set(true);
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "request body not received within {} ms",
                        this.timeout.as_millis()
                    ),
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Middleware (for `App::wrap_fn`): puts a deadline of `timeout` on `req`'s body, and turns the
/// response of a request whose body missed it into 408 `request_timeout` with `Connection:
/// close` (whatever the handler made of the cut-off body: a refused JSON body, a polling
/// error). The connection must close: the rest of the body may still be on its way.
pub fn body_deadline<S, B>(
    mut req: ServiceRequest,
    srv: &S,
    timeout: Duration,
) -> impl Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    // The request's head is in: the connection's head deadline stops (see `super::head`).
    let watch = req.request().conn_data::<HeadWatch>().cloned();
    if let Some(w) = &watch {
        w.request_started();
    }
    let expired = Rc::new(Cell::new(false));
    let payload = req.take_payload();
    if matches!(payload, Payload::None) {
        // No body: nothing to wait for, no timer.
        req.set_payload(payload);
    } else {
        let timed = TimedPayload {
            inner: payload,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            expired: expired.clone(),
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(timed),
        });
    }
    let fut = srv.call(req);
    async move {
        let res = fut.await;
        if let Some(w) = &watch {
            w.request_answered();
        }
        let res = res?;
        if !expired.get() {
            return Ok(res.map_into_left_body());
        }
        log::warn!(
            "{} {}: request body not received within {} ms, closing the connection",
            res.request().method(),
            res.request().path(),
            timeout.as_millis()
        );
        let err = AppError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        );
        let mut response = err.error_response();
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        Ok(res.into_response(response).map_into_right_body())
    }
}
