//! gatehouse: an identity-aware TLS gateway in front of Gogs and the Lightstep ingest API.
//!
//! The crate is laid out along a request's path: [`server`] accepts connections and speaks
//! TLS and HTTP, [`proxy`] decides what each request is and forwards it, [`config`] describes
//! what the operator asked for, [`telemetry`] reports what happened. ARCHITECTURE.md follows
//! one request through these modules.

#![forbid(unsafe_code)]
// Nothing a request or a file can influence may panic the gateway: outside tests, failures
// are errors with a message, never `unwrap`/`expect`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod attribution;
pub mod audit;
pub mod broker;
pub mod certs;
pub mod classify;
pub mod cli;
pub mod config;
pub mod http_token;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod random;
pub mod server;
pub mod shared;
pub mod telemetry;
pub mod webhook;
