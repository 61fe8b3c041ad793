//! The RBAC rules of the daemon and the reconciler. The YAML files under
//! `charts/continuum/files/rbac/` are the one source: the chart renders them into its roles and
//! the tests bind exactly these rules to the service accounts they run as.

use k8s_openapi::api::rbac::v1::PolicyRule;

pub const DAEMON_YAML: &str = include_str!("../../charts/continuum/files/rbac/daemon.yaml");
pub const RECONCILER_YAML: &str = include_str!("../../charts/continuum/files/rbac/reconciler.yaml");

/// The daemon's rules (traffic drain only).
pub fn daemon_rules() -> Vec<PolicyRule> {
    serde_yaml::from_str(DAEMON_YAML).expect("charts/continuum/files/rbac/daemon.yaml is a list of PolicyRule")
}

/// The reconciler's rules.
pub fn reconciler_rules() -> Vec<PolicyRule> {
    serde_yaml::from_str(RECONCILER_YAML).expect("charts/continuum/files/rbac/reconciler.yaml is a list of PolicyRule")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rule_files_parse_and_grant_no_wildcards() {
        for rule in super::daemon_rules().into_iter().chain(super::reconciler_rules()) {
            assert!(!rule.verbs.iter().any(|v| v == "*"), "{rule:?}");
            assert!(!rule.resources.unwrap_or_default().iter().any(|r| r == "*"));
        }
        assert!(!super::daemon_rules().is_empty());
    }
}
