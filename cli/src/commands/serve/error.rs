//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Input problems are 400s that name the field (`param`); only the engine failing is a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kestrel::backend::BackendError;
use kestrel::reply::ReplyError;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429s).
    retry_after: Option<u64>,
}

impl ApiError {
    /// A bad request about `param`.
    pub(super) fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: (!param.is_empty()).then(|| param.to_string()),
            code: None,
            retry_after: None,
        }
    }

    /// Every place for a request is taken.
    pub(super) fn overloaded(capacity: usize) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: format!(
                "the server is full ({capacity} requests decoding or waiting); retry shortly"
            ),
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
        }
    }

    /// The field the error is about.
    #[cfg(test)]
    pub(super) fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// Whether the request, not the server, was at fault.
    pub(super) fn is_client_error(&self) -> bool {
        self.status.is_client_error()
    }

    /// A missing or wrong API key.
    pub(super) fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "missing or wrong API key: send `Authorization: Bearer KEY` (or \
                      `x-api-key: KEY`) with the key the server was started with"
                .into(),
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    /// An unknown route.
    pub(super) fn not_found(message: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    /// The JSON body of this error (also what a stream sends before it ends).
    pub(super) fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<ReplyError> for ApiError {
    fn from(e: ReplyError) -> Self {
        match &e {
            ReplyError::ContextFull { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::invalid("messages", e.to_string())
            },
            ReplyError::Prompt(_) => Self::invalid("messages", e.to_string()),
            ReplyError::Constraint(_) => Self::invalid("tools", e.to_string()),
            ReplyError::Format(_) => Self::invalid("response_format", e.to_string()),
            // What this server's engine cannot do is the request's to change.
            ReplyError::Backend(BackendError::Unsupported(_)) => Self {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid_request_error",
                message: e.to_string(),
                param: None,
                code: None,
                retry_after: None,
            },
            // The remote engine behind this server failed (after its retries).
            ReplyError::Backend(BackendError::Remote(_)) => Self {
                status: StatusCode::BAD_GATEWAY,
                kind: "server_error",
                message: e.to_string(),
                param: None,
                code: None,
                retry_after: None,
            },
            ReplyError::Backend(_) | ReplyError::Engine(_) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                message: e.to_string(),
                param: None,
                code: None,
                retry_after: None,
            },
        }
    }
}

impl ApiError {
    /// The body in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`.
    pub(super) fn anthropic_body(&self) -> serde_json::Value {
        let kind = match self.status.as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            _ => "api_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": self.message}})
    }
}

/// An error answered in Anthropic's shape (the Messages endpoints).
pub(super) struct AnthropicError(pub(super) ApiError);

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let mut response = (self.0.status, axum::Json(self.0.anthropic_body())).into_response();
        if let Some(seconds) = self.0.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
