//! The threat suite: one test per attack, named after it, each sent as the raw bytes an
//! attacker would send (over TLS, below any client library that would refuse them), and each
//! asserting what the gateway answered, that nothing reached the upstream (a recording
//! upstream) or only what the gateway allows, and the audit record with its reason.
//!
//! `harness.rs` holds the stacks the threats are sent to; each module is one class of threat.

#[path = "../support/mod.rs"]
mod support;

mod confusion;
mod exhaustion;
mod framing;
mod harness;
mod injection;
mod spoofing;
mod tokens;
mod webhooks;
