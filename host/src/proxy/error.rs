//! The proxy's error type and the one place that maps errors to responses
//! (Pingora's `fail_to_proxy`): upstream failures → 502/503/504, client
//! failures → 400/405/408, and a short text body for each.

use bytes::Bytes;
use http::StatusCode;

use super::head::BadHost;
use super::pool::ConnectError;
use crate::filter::Reply;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Downstream,
    Upstream,
    Internal,
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no backend selected and the frontend has no default_backend")]
    NoBackend,
    #[error("no server is up in backend {0}")]
    NoServer(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("server did not answer within {0:?}")]
    ServerTimeout(std::time::Duration),
    #[error("server closed or reset the connection: {0}")]
    UpstreamReset(hyper::Error),
    #[error("upstream connection unusable: {0}")]
    UpstreamUnusable(&'static str),
    #[error("client stopped sending the request body for longer than {0:?}")]
    ClientTimeout(std::time::Duration),
    #[error("client request body failed: {0}")]
    ClientBody(hyper::Error),
    #[error("invalid Host: {0}")]
    BadHost(#[from] BadHost),
    #[error("CONNECT requests are not supported")]
    ConnectMethod,
    #[error("server sent an invalid response: {0}")]
    UpstreamInvalid(hyper::Error),
    #[error("server switched protocols (101) though the request asked for no upgrade")]
    UnexpectedUpgrade,
}

impl ProxyError {
    /// The side responsible, for logs and counters.
    pub fn side(&self) -> ErrorSource {
        match self {
            ProxyError::ClientTimeout(_)
            | ProxyError::ClientBody(_)
            | ProxyError::BadHost(_)
            | ProxyError::ConnectMethod => ErrorSource::Downstream,
            ProxyError::NoBackend => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }

    /// Whether the chosen server is to blame (counted as a server failure).
    pub fn is_server_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_)
                | ProxyError::ServerTimeout(_)
                | ProxyError::UpstreamReset(_)
                | ProxyError::UpstreamUnusable(_)
                | ProxyError::UpstreamInvalid(_)
                | ProxyError::UnexpectedUpgrade
        )
    }

    /// Whether the client connection is closed after the answer: the request
    /// was refused before being understood, as HAProxy does on such errors.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::BadHost(_) | ProxyError::ConnectMethod)
    }

    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend | ProxyError::NoServer(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(ConnectError::Timeout { .. }) | ProxyError::ServerTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Connect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamUnusable(_)
            | ProxyError::UpstreamInvalid(_)
            | ProxyError::UnexpectedUpgrade => StatusCode::BAD_GATEWAY,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(_) | ProxyError::BadHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The response sent to the client for this error.
    pub fn reply(&self) -> Reply {
        let status = self.status();
        let mut reply = Reply::text(status, error_body(status));
        reply.headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        reply
    }
}

/// The short text body of an error the proxy itself produces.
pub fn error_body(status: StatusCode) -> Bytes {
    let text = match status.as_u16() {
        400 => "Your browser (or proxy) sent a request that this server could not understand.",
        405 => "The request method is not allowed here.",
        408 => "The request took too long to arrive.",
        414 => "The request URI is too long.",
        431 => "The request header fields are too large or too many.",
        502 => "The server returned an invalid or incomplete response.",
        503 => "No server is available to handle this request.",
        504 => "The server didn't respond in time.",
        _ => "The request could not be handled.",
    };
    Bytes::from(format!(
        "{} {}\n{}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text
    ))
}

/// A complete `Connection: close` HTTP/1.1 error response, for the few errors
/// written below hyper (request-head timeout, hyper's own parse errors).
pub fn raw_error_response(status: StatusCode) -> Bytes {
    let body = error_body(status);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}
