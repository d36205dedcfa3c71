//! Errors at the edge: one set of stable snake_case codes shared by HTTP responses and protocol
//! `error` frames, so a client branches on the same code whichever way it talks to us.
//!
//! Policy (after crates.io's `util/errors.rs`): model and database code returns `QueryResult` /
//! `DbError`; actors return [`Refusal`] for things a client did wrong; only route handlers turn
//! them into [`AppError`], which renders `{"error": code, "message": …}` with a status. Start-up
//! uses `anyhow`. Messages never carry secrets or tokens.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Stable error codes. The wire spelling is `as_str()`; never rename one, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidFrame,
    UnknownType,
    MissingField,
    InvalidField,
    InvalidRoom,
    NotMember,
    Forbidden,
    Unauthenticated,
    InvalidToken,
    TokenExpired,
    AuthTimeout,
    IdentityChange,
    FrameTooLarge,
    BinaryNotSupported,
    TooManyErrors,
    SlowConsumer,
    DuplicateOperation,
    OperationFinished,
    UnknownKind,
    TooManyRooms,
    RateLimited,
    TooManyConnections,
    NotFound,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    DatabaseUnavailable,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidJson,
        Self::InvalidFrame,
        Self::UnknownType,
        Self::MissingField,
        Self::InvalidField,
        Self::InvalidRoom,
        Self::NotMember,
        Self::Forbidden,
        Self::Unauthenticated,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::AuthTimeout,
        Self::IdentityChange,
        Self::FrameTooLarge,
        Self::BinaryNotSupported,
        Self::TooManyErrors,
        Self::SlowConsumer,
        Self::DuplicateOperation,
        Self::OperationFinished,
        Self::UnknownKind,
        Self::TooManyRooms,
        Self::RateLimited,
        Self::TooManyConnections,
        Self::NotFound,
        Self::BadRequest,
        Self::PayloadTooLarge,
        Self::RequestTimeout,
        Self::DatabaseUnavailable,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::UnknownType => "unknown_type",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::InvalidRoom => "invalid_room",
            Self::NotMember => "not_member",
            Self::Forbidden => "forbidden",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::AuthTimeout => "auth_timeout",
            Self::IdentityChange => "identity_change",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::TooManyErrors => "too_many_errors",
            Self::SlowConsumer => "slow_consumer",
            Self::DuplicateOperation => "duplicate_operation",
            Self::OperationFinished => "operation_finished",
            Self::UnknownKind => "unknown_kind",
            Self::TooManyRooms => "too_many_rooms",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// Index into per-code counters (see `metrics`).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::InvalidFrame
            | Self::UnknownType
            | Self::MissingField
            | Self::InvalidField
            | Self::InvalidRoom
            | Self::BadRequest
            | Self::BinaryNotSupported => StatusCode::BAD_REQUEST,
            Self::Unauthenticated | Self::InvalidToken | Self::TokenExpired | Self::AuthTimeout => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden | Self::NotMember | Self::IdentityChange => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::DuplicateOperation | Self::OperationFinished => StatusCode::CONFLICT,
            Self::UnknownKind => StatusCode::BAD_REQUEST,
            Self::FrameTooLarge | Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyErrors
            | Self::SlowConsumer
            | Self::TooManyRooms
            | Self::RateLimited
            | Self::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            Self::DatabaseUnavailable | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal of something a client asked for: a code plus a human message. Actors return it;
/// sessions turn it into an `error` frame, routes into an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// When to try again (a rate limit): HTTP answers carry it as `Retry-After`.
    pub retry_after: Option<std::time::Duration>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `rate_limited`, with the time until the bucket has a token again.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }
}

/// Marks an HTTP response as a refusal with this code, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct RefusedWith(pub ErrorCode);

/// The error type of every HTTP handler.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("database unavailable")]
    Database(#[from] crate::db::DbError),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused(Refusal::new(code, message))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Refused(r) => r.code,
            Self::Database(_) => ErrorCode::DatabaseUnavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<crate::transport::ws::UpgradeError> for AppError {
    fn from(e: crate::transport::ws::UpgradeError) -> Self {
        Self::new(
            ErrorCode::BadRequest,
            format!("not a WebSocket upgrade: {e}"),
        )
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.code().status()
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            Self::Refused(r) => r.message.clone(),
            Self::Database(e) => {
                log::warn!("request failed on the database: {e:#}");
                "the database is unreachable; try again shortly".to_string()
            }
            Self::Internal(e) => {
                log::error!("internal error: {e:#}");
                "internal server error".to_string()
            }
        };
        let mut res = HttpResponse::build(self.status_code());
        if let Self::Refused(Refusal {
            retry_after: Some(wait),
            ..
        }) = self
        {
            // Whole seconds, rounded up: a client that waits that long finds a token.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs.max(1)));
        }
        let mut res = res.json(ErrorBody {
            error: self.code().as_str(),
            message: &message,
        });
        // Read by the refusal-counting middleware (see `startup`), which has the metrics.
        res.extensions_mut().insert(RefusedWith(self.code()));
        res
    }
}

/// JSON error responses for actix-web's own extractor failures (bad JSON bodies, bad query
/// strings, oversize bodies), so they carry the same `{error, message}` shape as ours.
pub fn json_config(limit: usize) -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError as J;
            let app = match &err {
                J::OverflowKnownLength { length, limit } => AppError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("body of {length} bytes is over the limit of {limit} bytes"),
                ),
                J::Overflow { limit } => AppError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("body is over the limit of {limit} bytes"),
                ),
                J::ContentType => AppError::new(
                    ErrorCode::BadRequest,
                    "expected Content-Type: application/json",
                ),
                J::Deserialize(e) => AppError::new(ErrorCode::InvalidJson, e.to_string()),
                other => AppError::new(ErrorCode::BadRequest, other.to_string()),
            };
            app.into()
        })
}

pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default()
        .error_handler(|err, _req| AppError::new(ErrorCode::BadRequest, err.to_string()).into())
}

pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default()
        .error_handler(|err, _req| AppError::new(ErrorCode::BadRequest, err.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            assert_eq!(ErrorCode::ALL[c.index()], *c);
        }
    }
}
