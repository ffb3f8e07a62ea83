//! The library's error type. Request-time variants map to an HTTP status with a short plain-text
//! message; startup variants carry enough context (path, stream, spec) for an operator to act.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("media folder {0} does not exist or is not a folder")]
    MissingFolder(PathBuf),
    #[error("live stream {stream:?}: {reason}")]
    LiveStream { stream: String, reason: String },
    #[error("bad playlist {path}: {reason}")]
    BadPlaylist { path: PathBuf, reason: String },
    #[error("bad synthetic stream spec {spec:?}: {reason} (expected NAME=RATE_KBPS:SEG_SECS)")]
    BadSynthetic { spec: String, reason: String },
    #[error("bad --allow-origin value {0:?}")]
    BadAllowOrigin(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A request path with `..`, `.`, an empty or absolute component, a backslash or a NUL.
    #[error("refused path: {0}")]
    BadPath(String),
    /// The path resolves (through a symlink) outside its stream folder.
    #[error("path escapes the stream folder")]
    Forbidden,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl OriginError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OriginError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::BadPath(_) => StatusCode::BAD_REQUEST,
            OriginError::Forbidden => StatusCode::FORBIDDEN,
            OriginError::NotFound(_) => StatusCode::NOT_FOUND,
            OriginError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StatusCode::NOT_FOUND
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for OriginError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        // Never echo server file system paths to clients: Io errors say only what failed.
        let msg = match &self {
            OriginError::Io { source, .. } if status == StatusCode::NOT_FOUND => {
                format!("not found ({})\n", source.kind())
            }
            OriginError::Io { source, .. } => format!("I/O error ({})\n", source.kind()),
            OriginError::BadPlaylist { reason, .. } => format!("bad playlist: {reason}\n"),
            other => format!("{other}\n"),
        };
        (status, msg).into_response()
    }
}
