//! Webhook metrics: deliveries received, forward attempts, and the outbox.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct WebhookMetrics {
    /// `result`: accepted, duplicate, rejected.
    pub received: IntCounterVec,
    /// `receiver`, `result`: delivered, retry, dead.
    pub forwards: IntCounterVec,
    /// `state`: pending, dead.
    pub outbox: IntGaugeVec,
    pub commits: IntCounter,
}

impl WebhookMetrics {
    pub fn new(registry: &Registry) -> Result<WebhookMetrics, prometheus::Error> {
        let m = WebhookMetrics::unregistered()?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.forwards.clone()))?;
        registry.register(Box::new(m.outbox.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        Ok(m)
    }

    /// Metrics nobody scrapes (command-line tools, benchmarks).
    pub fn unregistered() -> Result<WebhookMetrics, prometheus::Error> {
        Ok(WebhookMetrics {
            received: IntCounterVec::new(
                Opts::new(
                    "gatehouse_webhook_deliveries_total",
                    "Gogs webhook deliveries received, by result (accepted, duplicate, rejected).",
                ),
                &["result"],
            )?,
            forwards: IntCounterVec::new(
                Opts::new(
                    "gatehouse_webhook_forward_attempts_total",
                    "Attempts to forward a delivery to a receiver, by result (delivered, retry, dead).",
                ),
                &["receiver", "result"],
            )?,
            outbox: IntGaugeVec::new(
                Opts::new(
                    "gatehouse_webhook_outbox",
                    "Forwards in the outbox, by state (pending, dead).",
                ),
                &["state"],
            )?,
            commits: IntCounter::new(
                "gatehouse_webhook_commits_total",
                "Pushed commits recorded in the commit store.",
            )?,
        })
    }
}
