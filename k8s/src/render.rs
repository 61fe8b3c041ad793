//! Each region's daemon configuration, rendered from the `Continuum` spec into a ConfigMap.
//!
//! Secrets are referenced, never copied: the TOML names files under fixed mount points, and the
//! ConfigMap's `dr.openova.io/secrets` annotation lists the Secrets the daemon's pod must mount
//! there. Every rendered file is parsed and validated with the daemon's own
//! `continuum::config::Config::parse`, so a spec the daemon would refuse is refused here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::Error;
use crate::crd::{Continuum, ContinuumSpec, RegionSpec};

/// Mount points the daemon's pod gives the Secrets the spec names.
pub const TLS_DIR: &str = "/etc/continuum/tls";
pub const PDM_TOKEN_FILE: &str = "/etc/continuum/pdm/token";
pub const TOKENS_FILE: &str = "/etc/continuum/api/tokens.toml";
pub const STATE_DIR: &str = "/var/lib/continuum";
/// Key of the configuration file in the ConfigMap.
pub const CONFIG_KEY: &str = "continuum.toml";
pub const SECRETS_ANNOTATION: &str = "dr.openova.io/secrets";
pub const CONTINUUM_LABEL: &str = "dr.openova.io/continuum";
pub const REGION_LABEL: &str = "dr.openova.io/region";

/// One ConfigMap per data region and one for the witness, owned by the `Continuum` (so they go
/// with it through garbage collection: no finalizer needed).
pub fn config_maps(ctm: &Continuum) -> Result<Vec<ConfigMap>, Error> {
    let spec = &ctm.spec;
    let mut out = Vec::new();
    for region in &spec.regions {
        let text = data_config(spec, region, ctm.namespace().as_deref())?;
        let secrets = [region.tls_secret.as_str(), &spec.pdm.token_secret.name, &spec.api_tokens.tokens_file.name];
        out.push(config_map(ctm, &region.name, text, &secrets));
    }
    let text = witness_config(spec)?;
    out.push(config_map(ctm, &spec.witness.name, text, &[spec.witness.tls_secret.as_str()]));
    Ok(out)
}

pub fn config_map_name(ctm: &str, region: &str) -> String {
    format!("{ctm}-{region}")
}

fn config_map(ctm: &Continuum, region: &str, text: String, secrets: &[&str]) -> ConfigMap {
    let mut secrets: Vec<&str> = secrets.to_vec();
    secrets.sort_unstable();
    secrets.dedup();
    let name = ctm.name_any();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&name, region)),
            namespace: ctm.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".to_string(), "continuum-reconciler".to_string()),
                (CONTINUUM_LABEL.to_string(), name.clone()),
                (REGION_LABEL.to_string(), region.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(SECRETS_ANNOTATION.to_string(), secrets.join(","))])),
            owner_references: ctm.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), text)])),
        ..Default::default()
    }
}

fn port_of(field: &str, address: &str, default: u16) -> Result<u16, Error> {
    let authority = address.rsplit("://").next().unwrap_or(address);
    let authority = authority.split('/').next().unwrap_or(authority);
    match authority.rsplit_once(':') {
        Some((_, port)) => {
            port.parse().map_err(|_| Error::Spec { field: field.into(), message: format!("bad port in {address}") })
        }
        None => Ok(default),
    }
}

fn raft_section(spec: &ContinuumSpec, node_id: u64, raft_address: &str, field: &str) -> Result<toml::Table, Error> {
    let mut peers = toml::value::Array::new();
    for r in &spec.regions {
        peers.push(toml::Value::Table(table([
            ("id", (r.node_id as i64).into()),
            ("region", r.name.clone().into()),
            ("address", r.raft_address.clone().into()),
        ])));
    }
    let w = &spec.witness;
    let mut wt = table([("id", (w.node_id as i64).into()), ("region", w.name.clone().into())]);
    wt.insert("address".into(), w.raft_address.clone().into());
    wt.insert("witness".into(), true.into());
    peers.push(toml::Value::Table(wt));
    let port = port_of(field, raft_address, 7100)?;
    Ok(table([
        ("node_id", (node_id as i64).into()),
        ("listen", format!("0.0.0.0:{port}").into()),
        ("data_dir", format!("{STATE_DIR}/raft").into()),
        ("peers", toml::Value::Array(peers)),
    ]))
}

fn common(spec: &ContinuumSpec, region: &str, role: &str, raft: toml::Table) -> toml::Table {
    let mut doc = table([("region", region.into()), ("role", role.into()), ("raft", toml::Value::Table(raft))]);
    doc.insert(
        "tls".into(),
        toml::Value::Table(table([
            ("cert", format!("{TLS_DIR}/tls.crt").into()),
            ("key", format!("{TLS_DIR}/tls.key").into()),
            ("ca", format!("{TLS_DIR}/ca.crt").into()),
        ])),
    );
    doc.insert(
        "lease".into(),
        toml::Value::Table(table([
            ("renew_interval", spec.lease.renew_interval.clone().into()),
            ("duration", spec.lease.duration.clone().into()),
            ("drift_margin", spec.lease.drift_margin.clone().into()),
        ])),
    );
    doc
}

/// The TOML of `region`'s data daemon.
/// `ctm_namespace`: the resource's namespace, where its `HTTPRoute` lives.
pub fn data_config(spec: &ContinuumSpec, region: &RegionSpec, ctm_namespace: Option<&str>) -> Result<String, Error> {
    let field = |f: &str| format!("spec.regions[{}].{f}", region.name);
    let raft = raft_section(spec, region.node_id, &region.raft_address, &field("raftAddress"))?;
    let mut doc = common(spec, &region.name, "data", raft);
    let mut dns = table([("record", spec.dns.record.clone().into()), ("ttl", (spec.dns.ttl as i64).into())]);
    let addresses: toml::Table =
        spec.regions.iter().filter_map(|r| r.dns_address.clone().map(|a| (r.name.clone(), a.into()))).collect();
    dns.insert("addresses".into(), toml::Value::Table(addresses));
    if let Some(lua) = &spec.dns.lua {
        let pdm = lua.to_pdm()?;
        let value = toml::Value::try_from(&pdm)
            .map_err(|e| Error::Spec { field: "spec.dns.lua".into(), message: e.to_string() })?;
        dns.insert("lua".into(), value);
    }
    let pg = &region.postgres;
    let peers: toml::value::Array = spec
        .regions
        .iter()
        .filter(|r| r.name != region.name)
        .map(|r| {
            toml::Value::Table(table([
                ("region", r.name.clone().into()),
                ("host", r.postgres.host.clone().into()),
                ("port", (r.postgres.port as i64).into()),
            ]))
        })
        .collect();
    let mut pair = table([
        ("name", spec.pair.clone().into()),
        ("durability", crate::status::json_name(&spec.durability).into()),
        ("takeover", crate::status::json_name(&spec.takeover).into()),
        ("auto_failover", spec.auto_failover.into()),
        (
            "postgres",
            toml::Value::Table(table([
                ("data_dir", pg.data_dir.clone().into()),
                ("host", pg.host.clone().into()),
                ("port", (pg.port as i64).into()),
            ])),
        ),
        ("peers", toml::Value::Array(peers)),
        ("dns", toml::Value::Table(dns)),
    ]);
    if let (Some(traffic), Some(namespace)) = (&spec.traffic, ctm_namespace) {
        // The daemon's pod reaches the API server with its in-cluster service account, bound to
        // the daemon's RBAC rules in this namespace.
        let backends: toml::Table = traffic.backends.iter().map(|(r, b)| (r.clone(), b.clone().into())).collect();
        pair.insert(
            "traffic".into(),
            toml::Value::Table(table([
                ("namespace", namespace.into()),
                ("http_route", traffic.http_route.clone().into()),
                ("backends", toml::Value::Table(backends)),
                ("drain_window", traffic.drain_window.clone().into()),
            ])),
        );
    }
    doc.insert("pairs".into(), toml::Value::Array(vec![toml::Value::Table(pair)]));
    doc.insert(
        "pdm".into(),
        toml::Value::Table(table([
            ("url", spec.pdm.url.clone().into()),
            ("token_file", PDM_TOKEN_FILE.into()),
            ("zone", spec.pdm.zone.clone().into()),
        ])),
    );
    let api_port = port_of(&field("apiEndpoint"), &region.api_endpoint, 8080)?;
    doc.insert(
        "api".into(),
        toml::Value::Table(table([
            ("listen", format!("0.0.0.0:{api_port}").into()),
            ("tokens_file", TOKENS_FILE.into()),
        ])),
    );
    doc.insert("audit".into(), toml::Value::Table(table([("log", format!("{STATE_DIR}/audit.log").into())])));
    validated(doc, &format!("spec.regions[{}]", region.name))
}

/// The TOML of the witness.
pub fn witness_config(spec: &ContinuumSpec) -> Result<String, Error> {
    let w = &spec.witness;
    let raft = raft_section(spec, w.node_id, &w.raft_address, "spec.witness.raftAddress")?;
    validated(common(spec, &w.name, "witness", raft), "spec.witness")
}

fn validated(doc: toml::Table, field: &str) -> Result<String, Error> {
    let text = toml::to_string(&doc).map_err(|e| Error::Spec { field: field.into(), message: e.to_string() })?;
    continuum::config::Config::parse(&text).map_err(|e| Error::Spec {
        field: field.into(),
        message: format!("the daemon would refuse its configuration: {}", crate::error_chain(&e)),
    })?;
    Ok(text)
}

fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Table {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Name of the object `cm` belongs to, for logs.
pub fn owner_name(cm: &ConfigMap) -> Option<String> {
    cm.meta().labels.as_ref()?.get(CONTINUUM_LABEL).cloned()
}
