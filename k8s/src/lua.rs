//! The DNS record's LUA spec as the CRD carries it: a typed subset of `pdm::LuaSpec`, flattened
//! because a structural schema cannot express an internally tagged enum whose variants have
//! different fields. [`LuaRecord::to_pdm`] converts it (and checks the fields fit the function),
//! so the daemons still receive exactly the spec `pdm` validates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The LUA function PowerDNS runs to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LuaFunction {
    Ifportup,
    Ifurlup,
    Ifurlextup,
    Pickclosest,
    Pickrandom,
    Pickwhashed,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Random,
    All,
    Hashed,
    Pickclosest,
}

/// Health-check options (PowerDNS 4.7 set; see `pdm::CheckOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_selector: Option<Selector>,
    /// Check timeout, whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stringmatch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlTarget {
    pub address: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedAddress {
    pub weight: u32,
    pub address: String,
}

/// Which fields a function reads: `ifportup` port + addresses; `ifurlup` url + tiers;
/// `ifurlextup` urlTiers; `pickwhashed` weighted; the others addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LuaRecord {
    pub function: LuaFunction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Address tiers in preference order (`ifurlup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url_tiers: Vec<Vec<UrlTarget>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weighted: Vec<WeightedAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<CheckOptions>,
}

impl LuaRecord {
    /// The `pdm` spec, or a `Spec` error naming what does not fit `function`.
    pub fn to_pdm(&self) -> Result<pdm::LuaSpec, Error> {
        let bad = |message: &str| Error::Spec { field: "spec.dns.lua".into(), message: message.into() };
        let options = || -> Result<serde_json::Value, Error> {
            let o = self.options.clone().unwrap_or_default();
            Ok(serde_json::json!({
                "selector": o.selector, "backup_selector": o.backup_selector, "timeout": o.timeout,
                "source": o.source, "stringmatch": o.stringmatch, "useragent": o.useragent,
            }))
            .map(strip_nulls)
        };
        let value = match self.function {
            LuaFunction::Ifportup => serde_json::json!({
                "function": "ifportup",
                "port": self.port.ok_or_else(|| bad("ifportup needs port"))?,
                "addresses": self.addresses, "options": options()?,
            }),
            LuaFunction::Ifurlup => serde_json::json!({
                "function": "ifurlup",
                "url": self.url.as_ref().ok_or_else(|| bad("ifurlup needs url"))?,
                "tiers": self.tiers, "options": options()?,
            }),
            LuaFunction::Ifurlextup => serde_json::json!({
                "function": "ifurlextup", "tiers": self.url_tiers, "options": options()?,
            }),
            LuaFunction::Pickwhashed => serde_json::json!({ "function": "pickwhashed", "addresses": self.weighted }),
            LuaFunction::Pickclosest => serde_json::json!({ "function": "pickclosest", "addresses": self.addresses }),
            LuaFunction::Pickrandom => serde_json::json!({ "function": "pickrandom", "addresses": self.addresses }),
            LuaFunction::All => serde_json::json!({ "function": "all", "addresses": self.addresses }),
        };
        serde_json::from_value(value).map_err(|e| bad(&e.to_string()))
    }
}

fn strip_nulls(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(function: LuaFunction) -> LuaRecord {
        LuaRecord {
            function,
            port: None,
            url: None,
            addresses: vec![],
            tiers: vec![],
            url_tiers: vec![],
            weighted: vec![],
            options: None,
        }
    }

    #[test]
    fn every_function_converts_to_the_pdm_spec() {
        let mut r = record(LuaFunction::Ifurlup);
        r.url = Some("https://db.example/health".into());
        r.tiers = vec![vec!["192.0.2.1".into()], vec!["192.0.2.2".into()]];
        r.options = Some(CheckOptions { selector: Some(Selector::All), timeout: Some(2), ..Default::default() });
        let spec = r.to_pdm().unwrap();
        assert!(matches!(spec, pdm::LuaSpec::Ifurlup { ref tiers, .. } if tiers.len() == 2));

        let mut r = record(LuaFunction::Ifportup);
        r.port = Some(5432);
        r.addresses = vec!["192.0.2.1".into()];
        assert!(matches!(r.to_pdm().unwrap(), pdm::LuaSpec::Ifportup { port: 5432, .. }));

        let mut r = record(LuaFunction::Pickwhashed);
        r.weighted = vec![WeightedAddress { weight: 1, address: "192.0.2.1".into() }];
        assert!(matches!(r.to_pdm().unwrap(), pdm::LuaSpec::Pickwhashed { .. }));
        for f in [LuaFunction::Pickclosest, LuaFunction::Pickrandom, LuaFunction::All, LuaFunction::Ifurlextup] {
            record(f).to_pdm().unwrap();
        }
    }

    #[test]
    fn missing_function_fields_are_named() {
        let err = record(LuaFunction::Ifportup).to_pdm().unwrap_err();
        assert!(err.to_string().contains("ifportup needs port"), "{err}");
        let mut r = record(LuaFunction::Ifurlup);
        r.url = Some("u".into());
        r.options = Some(CheckOptions { source: Some("not-an-ip".into()), ..Default::default() });
        assert!(r.to_pdm().is_err());
    }
}
