//! The proxy's own failures ([`ProxyError`], with their context for logs),
//! classified into the one error model of [`crate::error`], which owns the
//! statuses and pages.

use http::StatusCode;

use super::head::BadHost;
use super::pool::ConnectError;
use crate::error::{ClientError, ErrorSource, ServerError};
use crate::filter::Reply;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no backend selected and the frontend has no default_backend")]
    NoBackend,
    #[error("no server is up in backend {0}")]
    NoServer(String),
    /// Every server of the backend stayed at its `maxconn` for `timeout queue`.
    #[error("backend {0}: every server stayed at its maxconn for the queue timeout ({1:?})")]
    QueueTimeout(String, std::time::Duration),
    /// Every server of the backend was at its `maxconn` and the queue was full.
    #[error("backend {0}: every server is at its maxconn and the queue is full")]
    QueueFull(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("server did not answer within {0:?}")]
    ServerTimeout(std::time::Duration),
    /// The request's `grpc-timeout` ran out before the server's response head.
    #[error("no response within the request's grpc-timeout ({0:?})")]
    GrpcDeadline(std::time::Duration),
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
    #[error(
        "HTTP/2 extended CONNECT for protocol {0:?}, which this frontend's `upgrades` does not list"
    )]
    ProtocolNotAllowed(String),
    #[error("invalid CONNECT target: {0}")]
    ConnectTarget(&'static str),
    #[error("CONNECT to {0} is not in this frontend's connect.allow")]
    ConnectDenied(String),
    #[error("CONNECT to {target}: {why}")]
    ConnectFailed { target: String, why: String },
    #[error("CONNECT to {0}: no connection within {1:?}")]
    ConnectTimeout(String, std::time::Duration),
    #[error("server sent an invalid response: {0}")]
    UpstreamInvalid(hyper::Error),
    /// The worker's own HTTP/1.1 client failed with the server.
    #[error(transparent)]
    UpstreamH1(super::upstream_h1::H1Error),
    /// The client's request body failed while the native client sent it.
    #[error("client request body failed: {0}")]
    ClientBodyStream(super::body::BoxError),
    #[error("server switched protocols (101) though the request asked for no upgrade")]
    UnexpectedUpgrade,
    /// An upgrade (WebSocket) routed to an HTTP/2 server that did not
    /// enable RFC 8441's extended CONNECT.
    #[error(
        "the HTTP/2 server did not enable extended CONNECT (RFC 8441, SETTINGS_ENABLE_CONNECT_PROTOCOL), so an upgrade (WebSocket) cannot go to it; enable it on the server or route upgrades to an HTTP/1.1 backend"
    )]
    NoExtendedConnect,
}

impl ProxyError {
    /// Where the error came from: the input of the one status table.
    pub fn source(&self) -> ErrorSource {
        match self {
            ProxyError::NoBackend
            | ProxyError::NoServer(_)
            | ProxyError::QueueTimeout(..)
            | ProxyError::QueueFull(_) => ErrorSource::Server(ServerError::Unavailable),
            ProxyError::Connect(ConnectError::Timeout { .. })
            | ProxyError::ServerTimeout(_)
            | ProxyError::GrpcDeadline(_) => ErrorSource::Server(ServerError::Timeout),
            ProxyError::Connect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamUnusable(_)
            | ProxyError::UpstreamInvalid(_)
            | ProxyError::UpstreamH1(_)
            | ProxyError::UnexpectedUpgrade
            | ProxyError::NoExtendedConnect
            | ProxyError::ConnectFailed { .. } => ErrorSource::Server(ServerError::BadResponse),
            ProxyError::ConnectTimeout(..) => ErrorSource::Server(ServerError::Timeout),
            ProxyError::ConnectTarget(_) => ErrorSource::Client(ClientError::BadRequest),
            ProxyError::ConnectDenied(_) => ErrorSource::Client(ClientError::Forbidden),
            ProxyError::ClientTimeout(_) => ErrorSource::Client(ClientError::Timeout),
            ProxyError::ClientBody(_)
            | ProxyError::ClientBodyStream(_)
            | ProxyError::BadHost(_) => ErrorSource::Client(ClientError::BadRequest),
            ProxyError::ConnectMethod | ProxyError::ProtocolNotAllowed(_) => {
                ErrorSource::Client(ClientError::MethodNotAllowed)
            }
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
                | ProxyError::UpstreamH1(_)
                | ProxyError::UnexpectedUpgrade
        )
    }

    /// Whether the client connection is closed after the answer: the request
    /// was refused before being understood, as HAProxy does on such errors.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadHost(_) | ProxyError::ConnectMethod | ProxyError::ConnectTarget(_)
        )
    }

    /// HAProxy's termination state (cause, then state) for this error, as
    /// the access log's `%ts` says it.
    pub fn term_state(&self) -> [u8; 2] {
        match self {
            ProxyError::NoBackend | ProxyError::NoServer(_) => *b"SC",
            // HAProxy: the server-side timeout struck while queued.
            ProxyError::QueueTimeout(..) | ProxyError::QueueFull(_) => *b"sQ",
            ProxyError::Connect(ConnectError::Timeout { .. }) => *b"sC",
            ProxyError::Connect(_) => *b"SC",
            ProxyError::ServerTimeout(_) | ProxyError::GrpcDeadline(_) => *b"sH",
            ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamUnusable(_)
            | ProxyError::UpstreamInvalid(_)
            | ProxyError::UpstreamH1(_)
            | ProxyError::UnexpectedUpgrade
            // The server cannot carry what the request asks for.
            | ProxyError::NoExtendedConnect => *b"SH",
            ProxyError::ClientTimeout(_) => *b"cD",
            ProxyError::ClientBody(_) | ProxyError::ClientBodyStream(_) => *b"CD",
            ProxyError::BadHost(_)
            | ProxyError::ConnectMethod
            | ProxyError::ProtocolNotAllowed(_)
            | ProxyError::ConnectTarget(_)
            | ProxyError::ConnectDenied(_) => *b"PR",
            ProxyError::ConnectFailed { .. } => *b"SC",
            ProxyError::ConnectTimeout(..) => *b"sC",
        }
    }

    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        self.source().status()
    }

    /// The response sent to the client for this error (HAProxy's page).
    pub fn reply(&self) -> Reply {
        self.source().reply()
    }
}
