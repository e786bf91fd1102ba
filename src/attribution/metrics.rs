//! How much OTLP traffic the gateway attributes.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

pub struct AttributionMetrics {
    /// Exports that gained attributes.
    pub attributed: IntCounter,
    /// Exports read and forwarded as they came (nothing known to attribute them to).
    pub unattributed: IntCounter,
    /// Exports refused as malformed.
    pub refused: IntCounter,
    /// Resources that gained attributes.
    pub resources: IntCounter,
}

impl AttributionMetrics {
    pub fn new(registry: &Registry) -> Result<AttributionMetrics, prometheus::Error> {
        let exports = IntCounterVec::new(
            Opts::new(
                "gatehouse_otlp_exports_total",
                "OTLP/HTTP exports read for attribution, by result (attributed, unattributed, refused).",
            ),
            &["result"],
        )?;
        let resources = IntCounter::new(
            "gatehouse_otlp_attributed_resources_total",
            "OTLP resources that gained commit attributes.",
        )?;
        registry.register(Box::new(exports.clone()))?;
        registry.register(Box::new(resources.clone()))?;
        Ok(AttributionMetrics {
            attributed: exports.with_label_values(&["attributed"]),
            unattributed: exports.with_label_values(&["unattributed"]),
            refused: exports.with_label_values(&["refused"]),
            resources,
        })
    }
}
