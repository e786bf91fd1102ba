//! The gateway as broker: callers present their own identity to the gateway, and the gateway
//! presents to each upstream what that upstream understands (a trusted header for Gogs's web
//! UI, a credential it holds for git and APIs, the Lightstep token), plus its own signed
//! assertion for upstreams that verify one.

pub mod gogs;
pub mod otlp;

use crate::config::{RouteConfig, SecretError};
use gogs::GogsRuntime;
use otlp::OtlpRuntime;

/// A route's brokering with secrets loaded.
pub enum Broker {
    Gogs(GogsRuntime),
    Otlp(OtlpRuntime),
    None,
}

impl Broker {
    pub fn load(route: &RouteConfig) -> Result<Broker, SecretError> {
        Ok(match (&route.gogs, &route.otlp) {
            (Some(g), _) => Broker::Gogs(GogsRuntime::load(g)?),
            (_, Some(o)) => Broker::Otlp(OtlpRuntime::load(o)?),
            _ => Broker::None,
        })
    }
}
