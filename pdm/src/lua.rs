//! Typed LUA record specs and their synthesis into PowerDNS 4.7 LUA record bodies.
//!
//! PDM never accepts Lua code from callers: it renders a typed spec into one canonical body, so
//! the same spec always yields the same text (PowerDNS keys health checks on the exact URL,
//! address and options table) and a reordering of tiers keeps every check warm.
//!
//! Quoting: the code goes inside a DNS character-string (`A "code"`), and PowerDNS 4.7 splits the
//! stored text on every `"` (`LUARecordContent::getCode`), escaped or not. Strings are therefore
//! rendered as single-quoted Lua strings, and values containing `"`, `\`, `'` or control
//! characters are refused rather than escaped: no escaping scheme survives both layers in 4.7.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::PdmError;

/// Longest character-string in DNS rdata; longer code is split into several.
const MAX_CHUNK: usize = 255;
/// Upper bound for a whole body: far above any sane spec, well below PowerDNS' limits.
pub const MAX_CODE_LEN: usize = 4000;

/// The record type a LUA body synthesises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InnerType {
    A,
    #[serde(rename = "AAAA")]
    Aaaa,
}

impl InnerType {
    pub fn as_str(self) -> &'static str {
        match self {
            InnerType::A => "A",
            InnerType::Aaaa => "AAAA",
        }
    }
}

/// How PowerDNS picks among the available (or, for `backup_selector`, all) addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Random,
    All,
    Hashed,
    Pickclosest,
}

impl Selector {
    fn as_str(self) -> &'static str {
        match self {
            Selector::Random => "random",
            Selector::All => "all",
            Selector::Hashed => "hashed",
            Selector::Pickclosest => "pickclosest",
        }
    }
}

/// Health-check options of `ifportup`, `ifurlup` and `ifurlextup`, as PowerDNS 4.7 knows them.
/// `interval`, `minimumFailures`, `failOnIncompleteCheck`, `httpcode` and `headers` only exist
/// from 5.0/5.1 and are refused (unknown field).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Used when every candidate is down or not yet checked (not by `ifportup` in 4.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_selector: Option<Selector>,
    /// Check timeout in whole seconds (PowerDNS default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// Source address for the checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// The body must contain this text (URL checks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stringmatch: Option<String>,
    /// HTTP User-Agent (URL checks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub useragent: Option<String>,
}

/// One answer address of `ifurlextup`, with the URL whose health decides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlTarget {
    pub address: String,
    pub url: String,
}

/// One address of `pickwhashed`, with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedAddress {
    pub weight: u32,
    pub address: String,
}

/// A LUA record body, as a typed spec. Tiers are in preference order: the first tier with an
/// address that is up wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "function", rename_all = "lowercase", deny_unknown_fields)]
pub enum LuaSpec {
    /// TCP connect check. PowerDNS 4.7 takes one flat address list here (tiers SERVFAIL).
    Ifportup {
        port: u16,
        addresses: Vec<String>,
        #[serde(default)]
        options: CheckOptions,
    },
    /// HTTP(S) GET of `url` against each candidate address (the URL host is only the Host header).
    Ifurlup {
        url: String,
        tiers: Vec<Vec<String>>,
        #[serde(default)]
        options: CheckOptions,
    },
    /// Answer addresses decoupled from the URLs that decide their health.
    Ifurlextup {
        tiers: Vec<Vec<UrlTarget>>,
        #[serde(default)]
        options: CheckOptions,
    },
    /// Closest by GeoIP (needs PowerDNS' geoip backend, otherwise random).
    Pickclosest {
        addresses: Vec<String>,
    },
    Pickrandom {
        addresses: Vec<String>,
    },
    /// Weighted pick, hashed on the client address.
    Pickwhashed {
        addresses: Vec<WeightedAddress>,
    },
    /// Every address.
    All {
        addresses: Vec<String>,
    },
}

/// A synthesised body: the Lua code and the record content PowerDNS stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuaBody {
    pub record_type: InnerType,
    pub code: String,
}

impl LuaBody {
    /// The LUA rrset content, e.g. `A "ifportup(443, {'192.0.2.1'})"`, split into 255-byte
    /// character-strings at token boundaries when longer.
    pub fn content(&self) -> String {
        let chunks = chunk_code(&self.code);
        let quoted: Vec<String> = chunks.iter().map(|c| format!("\"{c}\"")).collect();
        format!("{} {}", self.record_type.as_str(), quoted.join(" "))
    }
}

impl LuaSpec {
    /// Validates the spec for `record_type` and renders its canonical body.
    pub fn synthesize(&self, record_type: InnerType) -> Result<LuaBody, PdmError> {
        let code = match self {
            LuaSpec::Ifportup { port, addresses, options } => {
                if *port == 0 {
                    return Err(invalid("ifportup: port must be 1-65535"));
                }
                for (field, set) in [
                    ("backup_selector", options.backup_selector.is_some()),
                    ("stringmatch", options.stringmatch.is_some()),
                    ("useragent", options.useragent.is_some()),
                ] {
                    if set {
                        return Err(invalid(&format!("ifportup: PowerDNS 4.7 does not use option {field}")));
                    }
                }
                let list = address_list("ifportup addresses", addresses, record_type)?;
                format!("ifportup({port}, {list}{})", render_options(options)?)
            }
            LuaSpec::Ifurlup { url, tiers, options } => {
                check_url(url)?;
                let tiers = tier_list("ifurlup", tiers, |t| address_list("ifurlup tier", t, record_type))?;
                format!("ifurlup('{url}', {tiers}{})", render_options(options)?)
            }
            LuaSpec::Ifurlextup { tiers, options } => {
                let tiers = tier_list("ifurlextup", tiers, |tier| {
                    if tier.is_empty() {
                        return Err(invalid("ifurlextup: a tier is empty"));
                    }
                    let mut seen = BTreeSet::new();
                    let mut items = Vec::new();
                    for target in tier {
                        let address = address(&target.address, record_type)?;
                        check_url(&target.url)?;
                        if !seen.insert(address.clone()) {
                            return Err(invalid(&format!("ifurlextup: {address} appears twice in one tier")));
                        }
                        items.push(format!("['{address}']='{}'", target.url));
                    }
                    Ok(format!("{{{}}}", items.join(", ")))
                })?;
                format!("ifurlextup({tiers}{})", render_options(options)?)
            }
            LuaSpec::Pickclosest { addresses } => {
                format!("pickclosest({})", address_list("pickclosest addresses", addresses, record_type)?)
            }
            LuaSpec::Pickrandom { addresses } => {
                format!("pickrandom({})", address_list("pickrandom addresses", addresses, record_type)?)
            }
            LuaSpec::All { addresses } => format!("all({})", address_list("all addresses", addresses, record_type)?),
            LuaSpec::Pickwhashed { addresses } => {
                if addresses.is_empty() {
                    return Err(invalid("pickwhashed: addresses is empty"));
                }
                if addresses.iter().all(|a| a.weight == 0) {
                    return Err(invalid("pickwhashed: at least one weight must be above 0"));
                }
                let mut items = Vec::new();
                for item in addresses {
                    items.push(format!("{{{}, '{}'}}", item.weight, address(&item.address, record_type)?));
                }
                format!("pickwhashed({{{}}})", items.join(", "))
            }
        };
        validate_code(&code)?;
        if let Some(chunk) = chunk_code(&code).iter().find(|c| c.len() > MAX_CHUNK) {
            return Err(invalid(&format!("a single item is longer than {MAX_CHUNK} bytes: {chunk:?}")));
        }
        Ok(LuaBody { record_type, code })
    }

    /// The health checks PowerDNS keeps for this body, one string per check in PowerDNS' own
    /// identity (`CheckDesc`: candidate address, URL or port, full options table). A new body
    /// whose checks are all among the live body's checks answers from warm state: a flip.
    pub fn health_checks(&self, record_type: InnerType) -> BTreeSet<String> {
        let opts = render_options(match self {
            LuaSpec::Ifportup { options, .. }
            | LuaSpec::Ifurlup { options, .. }
            | LuaSpec::Ifurlextup { options, .. } => options,
            _ => return BTreeSet::new(),
        })
        .unwrap_or_default();
        let canonical = |a: &str| address(a, record_type).unwrap_or_else(|_| a.to_string());
        match self {
            LuaSpec::Ifportup { port, addresses, .. } => {
                addresses.iter().map(|a| format!("tcp {}:{port} {opts}", canonical(a))).collect()
            }
            LuaSpec::Ifurlup { url, tiers, .. } => {
                tiers.iter().flatten().map(|a| format!("url {} {url} {opts}", canonical(a))).collect()
            }
            // ifurlextup resolves the URL host itself: the answer address is not part of the check.
            LuaSpec::Ifurlextup { tiers, .. } => {
                tiers.iter().flatten().map(|t| format!("url - {} {opts}", t.url)).collect()
            }
            _ => BTreeSet::new(),
        }
    }

    /// Whether PowerDNS keeps health state for this body (and a new one needs pre-warming).
    pub fn has_health_checks(&self) -> bool {
        matches!(self, LuaSpec::Ifportup { .. } | LuaSpec::Ifurlup { .. } | LuaSpec::Ifurlextup { .. })
    }

    /// The longest check timeout of this body, if it sets one (PowerDNS' default is 2 s).
    pub fn check_timeout_secs(&self) -> Option<u32> {
        match self {
            LuaSpec::Ifportup { options, .. }
            | LuaSpec::Ifurlup { options, .. }
            | LuaSpec::Ifurlextup { options, .. } => options.timeout,
            _ => None,
        }
    }
}

fn invalid(msg: &str) -> PdmError {
    PdmError::InvalidLua(msg.to_string())
}

/// Parses an address of the family `record_type` asks for, in canonical text form.
fn address(text: &str, record_type: InnerType) -> Result<String, PdmError> {
    let ip: IpAddr = text.parse().map_err(|_| invalid(&format!("{text:?} is not an IP address")))?;
    match (ip, record_type) {
        (IpAddr::V4(_), InnerType::A) | (IpAddr::V6(_), InnerType::Aaaa) => Ok(ip.to_string()),
        _ => Err(invalid(&format!("{ip} does not fit a LUA {} record", record_type.as_str()))),
    }
}

fn address_list(what: &str, addresses: &[String], record_type: InnerType) -> Result<String, PdmError> {
    if addresses.is_empty() {
        // PowerDNS evaluates `pickrandom({})` and friends to a runtime error: SERVFAIL.
        return Err(invalid(&format!("{what} is empty")));
    }
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    for a in addresses {
        let a = address(a, record_type)?;
        if !seen.insert(a.clone()) {
            return Err(invalid(&format!("{what}: {a} appears twice")));
        }
        items.push(format!("'{a}'"));
    }
    Ok(format!("{{{}}}", items.join(", ")))
}

fn tier_list<T>(
    function: &str,
    tiers: &[T],
    mut render: impl FnMut(&T) -> Result<String, PdmError>,
) -> Result<String, PdmError> {
    if tiers.is_empty() {
        return Err(invalid(&format!("{function}: tiers is empty")));
    }
    let rendered: Result<Vec<String>, PdmError> = tiers.iter().map(&mut render).collect();
    Ok(format!("{{{}}}", rendered?.join(", ")))
}

/// A value that goes into a single-quoted Lua string inside a DNS character-string.
fn check_text(what: &str, value: &str) -> Result<(), PdmError> {
    if value.is_empty() {
        return Err(invalid(&format!("{what} is empty")));
    }
    if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c) || matches!(c, '\'' | '"' | '\\')) {
        return Err(invalid(&format!(
            "{what} contains {c:?}: only printable ASCII without quotes or backslashes survives PowerDNS 4.7's LUA parsing"
        )));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), PdmError> {
    check_text("url", url)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid(&format!("url {url:?} must start with http:// or https://")))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || url.contains(' ') {
        return Err(invalid(&format!("url {url:?} has no host or contains a space")));
    }
    Ok(())
}

/// The options table in a fixed key order, so equal options always render equally.
fn render_options(options: &CheckOptions) -> Result<String, PdmError> {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some(s) = options.backup_selector {
        pairs.push(("backupSelector", s.as_str().into()));
    }
    if let Some(s) = options.selector {
        pairs.push(("selector", s.as_str().into()));
    }
    if let Some(source) = options.source {
        pairs.push(("source", source.to_string()));
    }
    if let Some(text) = &options.stringmatch {
        check_text("stringmatch", text)?;
        pairs.push(("stringmatch", text.clone()));
    }
    if let Some(timeout) = options.timeout {
        if !(1..=60).contains(&timeout) {
            return Err(invalid("timeout must be 1-60 seconds"));
        }
        pairs.push(("timeout", timeout.to_string()));
    }
    if let Some(text) = &options.useragent {
        check_text("useragent", text)?;
        pairs.push(("useragent", text.clone()));
    }
    if pairs.is_empty() {
        return Ok(String::new());
    }
    // PowerDNS reads every option value as a string (opts_t = map<string,string>).
    let mut out = String::from(", {");
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{key}='{value}'");
    }
    out.push('}');
    Ok(out)
}

const KNOWN_FUNCTIONS: [&str; 7] =
    ["ifportup", "ifurlup", "ifurlextup", "pickclosest", "pickrandom", "pickwhashed", "all"];

/// Structural check of a body before it goes to PowerDNS, whose API accepts any text and only
/// fails at query time (SERVFAIL): a known function call, balanced brackets, closed strings, no
/// empty tables, characters that survive 4.7's character-string handling, bounded length.
pub fn validate_code(code: &str) -> Result<(), PdmError> {
    if code.len() > MAX_CODE_LEN {
        return Err(invalid(&format!("body is {} bytes, more than {MAX_CODE_LEN}", code.len())));
    }
    if code.contains(['"', '\\']) || !code.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(invalid("body contains characters PowerDNS 4.7 mangles"));
    }
    let function = code.split('(').next().unwrap_or_default();
    if !KNOWN_FUNCTIONS.contains(&function) {
        return Err(invalid(&format!("body does not start with a supported function call: {code:?}")));
    }
    let mut stack = Vec::new();
    let mut in_string = false;
    let mut previous = ' ';
    for c in code.chars() {
        if in_string {
            in_string = c != '\'';
            continue;
        }
        match c {
            '\'' => in_string = true,
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = stack.pop();
                let matches = matches!((open, c), (Some('('), ')') | (Some('{'), '}') | (Some('['), ']'));
                if !matches {
                    return Err(invalid(&format!("unbalanced {c:?} in body {code:?}")));
                }
                if c == '}' && previous == '{' {
                    return Err(invalid(&format!("empty table in body {code:?}")));
                }
            }
            _ => {}
        }
        if !c.is_whitespace() {
            previous = c;
        }
    }
    if in_string || !stack.is_empty() || !code.ends_with(')') {
        return Err(invalid(&format!("unterminated string or bracket in body {code:?}")));
    }
    Ok(())
}

/// Splits code into character-strings of at most 255 bytes, only at a `, ` outside a string
/// literal. 4.7 joins the pieces with spaces and 5.x without; a split between tokens reads the
/// same either way.
fn chunk_code(code: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_string = false;
    let bytes = code.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\'' {
            in_string = !in_string;
        } else if !in_string && b == b',' && bytes.get(i + 1) == Some(&b' ') {
            pieces.push(&code[start..=i]);
            start = i + 2;
        }
    }
    pieces.push(&code[start..]);
    let mut chunks = Vec::new();
    let mut current = String::new();
    for piece in pieces {
        if current.is_empty() {
            current.push_str(piece);
        } else if current.len() + 1 + piece.len() > MAX_CHUNK {
            chunks.push(std::mem::replace(&mut current, piece.to_string()));
        } else {
            current.push(' ');
            current.push_str(piece);
        }
    }
    chunks.push(current);
    chunks
}
