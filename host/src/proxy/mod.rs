//! Proxy core.
