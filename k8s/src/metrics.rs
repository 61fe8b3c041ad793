//! The reconciler's Prometheus metrics (OpenMetrics text at `GET /metrics`).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::Error;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    error: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("continuum_reconciles", "Reconcile runs, by resource kind", reconciles.clone());
        registry.register(
            "continuum_reconcile_errors",
            "Failed reconcile runs, by resource kind and error variant",
            errors.clone(),
        );
        Self { registry: Arc::new(registry), reconciles, errors }
    }

    pub fn reconciled(&self, kind: &str) {
        self.reconciles.get_or_create(&KindLabels { kind: kind.into() }).inc();
    }

    pub fn failed(&self, kind: &str, e: &Error) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.into(), error: e.metric_label().into() }).inc();
    }

    /// How many times `kind` failed with error label `error`.
    pub fn errors(&self, kind: &str, error: &str) -> u64 {
        self.errors.get_or_create(&ErrorLabels { kind: kind.into(), error: error.into() }).get()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
