//! The API's one error type: a status code and a JSON body naming what was wrong.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::resolver::ResolveError;

/// An error answer: `{"error": {"status": 400, "code": "invalid_pid", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// What was wrong, for a person.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The JSON body of this error, for answers that add to it.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        }})
    }

    /// 503: the agent sheds this request rather than queue it (answered with `Retry-After`).
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<ResolveError> for ApiError {
    fn from(error: ResolveError) -> Self {
        use collectors::ProcessError;
        match error {
            ResolveError::Process(ProcessError::NoSuchProcess(pid)) => Self::new(
                StatusCode::NOT_FOUND,
                "no_such_process",
                format!("no process with pid {pid}"),
            ),
            ResolveError::Process(ProcessError::InvalidPid(text)) => {
                Self::bad_request("invalid_pid", format!("invalid pid {text:?}"))
            }
            ResolveError::Process(error @ ProcessError::Unreadable { .. }) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "process_unreadable",
                error.to_string(),
            ),
            error @ ResolveError::Encode(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.to_string(),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        Self::new(status, code, rejection.body_text())
    }
}
