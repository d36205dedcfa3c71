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

// The codes live in their own module with no dependencies (everything may import them); they
// are re-exported here, where the HTTP edge has always named them.
pub use crate::error_code::{ErrorCode, Refusal};

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
