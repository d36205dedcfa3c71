//! The stable error codes and [`Refusal`] (a code and a message): what every layer may import.
//!
//! Nothing here imports the rest of the crate, so the database, the metrics, the protocols, the
//! actors and the routes can all name a code without depending on each other. The HTTP edge
//! ([`crate::error::AppError`]) renders them as `{"error": code, "message": …}`; sessions as
//! protocol `error` frames.

use actix_web::http::StatusCode;

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
    TooManyOperations,
    NotFound,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    DatabaseUnavailable,
    Unavailable,
    NotImplemented,
    BackendUnavailable,
    InvalidTicket,
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
        Self::TooManyOperations,
        Self::NotFound,
        Self::BadRequest,
        Self::PayloadTooLarge,
        Self::RequestTimeout,
        Self::DatabaseUnavailable,
        Self::Unavailable,
        Self::NotImplemented,
        Self::BackendUnavailable,
        Self::InvalidTicket,
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
            Self::TooManyOperations => "too_many_operations",
            Self::NotFound => "not_found",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::Unavailable => "unavailable",
            Self::NotImplemented => "not_implemented",
            Self::BackendUnavailable => "backend_unavailable",
            Self::InvalidTicket => "invalid_ticket",
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
            Self::Unauthenticated
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::AuthTimeout
            | Self::InvalidTicket => StatusCode::UNAUTHORIZED,
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
            | Self::TooManyConnections
            | Self::TooManyOperations => StatusCode::TOO_MANY_REQUESTS,
            Self::DatabaseUnavailable | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::BackendUnavailable => StatusCode::BAD_GATEWAY,
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

    /// `unavailable`: the actor that should answer (`what`: "registry", "room", "operations")
    /// is gone; `e` is why (a closed mailbox, a timeout). One wording for every such refusal.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Unavailable, format!("{what} unavailable: {e}"))
    }

    /// `rate_limited`, with the time until the bucket has a token again.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }
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
