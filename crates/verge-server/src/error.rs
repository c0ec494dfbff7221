//! API errors as `{"error":{"code","message"}}` and a JSON body extractor
//! that turns every malformed body into one of them, naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use verge_core::ValidationError;
use verge_store::{StateError, StoreError};

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 404 for a missing resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        verge_client::serve::json_error(self.status, self.code, &self.message)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::State(StateError::NodeNotFound(_) | StateError::WorkloadNotFound(_)) => Self::not_found(e.to_string()),
            StoreError::State(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::Db(_) | StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "state store failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

/// A JSON request body, decoded with the path of any bad field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let ApiBody(bytes) = ApiBody::<BODY_LIMIT>::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A raw request body of at most `LIMIT` bytes; a larger one is refused
/// with the API's JSON error (the route must allow `LIMIT` with
/// `DefaultBodyLimit`).
pub struct ApiBody<const LIMIT: usize>(pub Bytes);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for ApiBody<LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            let limit = if LIMIT.is_multiple_of(1 << 20) { format!("{} MiB", LIMIT >> 20) } else { format!("{LIMIT} bytes") };
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("request body exceeds the {limit} limit"))
        };
        // Refused from the headers alone: the client is not asked to send
        // (`100 Continue`) what would be thrown away.
        let declared = req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::bad_request(format!("cannot read request body: {}", e.body_text()))
            }
        })?;
        Ok(ApiBody(bytes))
    }
}

/// Decodes `bytes` as JSON, rejecting trailing data, naming the bad field.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body is empty; send a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { String::new() } else { format!("{path}: ") };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", format!("{field}{inner}"))
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("request body is not valid JSON: {inner}")),
        }
    })?;
    de.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("trailing data after the JSON value: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_core::WorkloadSpec;

    fn code(body: &[u8]) -> (StatusCode, &'static str, String) {
        let e = parse_json::<WorkloadSpec>(body).unwrap_err();
        (e.status, e.code, e.message)
    }

    #[test]
    fn bad_bodies_get_a_code_and_the_field() {
        assert_eq!(code(b"{").1, "malformed_json");
        assert_eq!(code(b"").1, "bad_request");
        assert_eq!(code(b"{\"id\":\"\xff\xfe\"}").1, "malformed_json");
        let (status, c, msg) = code(br#"{"requirements":{"cpu":"lots","memory":1},"spec":{"command":"x"}}"#);
        assert_eq!((status, c), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
        assert!(msg.starts_with("requirements.cpu: invalid type"), "{msg}");
        assert_eq!(code(br#"{"requirements":{"cpu":1,"memory":1},"spec":{"command":"x"}} trailing"#).1, "malformed_json");
    }
}
