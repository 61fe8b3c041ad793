//! The crate's one error type. Each variant maps to an HTTP status and a metric label.

/// Everything that can go wrong in PDM, on the server side and in [`crate::PdmClient`].
#[derive(Debug, thiserror::Error)]
pub enum PdmError {
    /// The request is malformed: bad JSON, bad name, bad record content, bad query parameter.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The LUA spec cannot be turned into a body PowerDNS 4.7 would evaluate.
    #[error("invalid LUA spec: {0}")]
    InvalidLua(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A known token whose role does not cover the route.
    #[error("role {needed} required; {caller} has role {role}")]
    Forbidden { caller: String, role: crate::auth::Role, needed: crate::auth::Role },
    #[error("zone {0} does not exist on the PowerDNS server")]
    ZoneNotFound(String),
    #[error("zone {0} already exists")]
    ZoneExists(String),
    /// The fencing check: a commit from an older lease epoch.
    #[error("stale epoch {epoch} for {name}: epoch {committed} was already committed there")]
    StaleEpoch { name: String, epoch: u64, committed: u64 },
    /// An epoch too far above the last accepted one to come from a lease store: accepting it
    /// would fence the name against every real epoch. Distinct from [`PdmError::StaleEpoch`].
    #[error(
        "implausible epoch {epoch} for {name}: more than commit.max_epoch_step ({max_step}) above {reference}; an admin can reset the name's epoch"
    )]
    ImplausibleEpoch { name: String, epoch: u64, reference: u64, max_step: u64 },
    /// An epoch reset for a name PDM holds no epoch for.
    #[error("no epoch is recorded for {name} in zone {zone}")]
    NoEpoch { zone: String, name: String },
    /// A poll for an operation this PDM process does not know (expired, or PDM restarted): the
    /// commit's outcome is unknown, retry it with the same epoch.
    #[error("unknown operation {0}")]
    UnknownOperation(String),
    /// A name that holds records PDM never committed; PDM owns whole names or none.
    #[error("{name} holds records PDM does not own ({types}); delete them first")]
    NameNotOwned { name: String, types: String },
    #[error("zone {zone} holds records PDM does not own: {names}; pass force=true with a reason to delete it anyway")]
    ZoneHasForeignRecords { zone: String, names: String },
    /// PowerDNS answered the call with an error; `message` is PowerDNS' own text.
    #[error("PowerDNS rejected the call with {status}: {message}")]
    PowerDnsRejected { status: u16, message: String },
    /// PowerDNS answered with data PDM cannot use (unexpected JSON, a damaged PDM metadata entry).
    #[error("unusable PowerDNS data: {0}")]
    PowerDnsData(String),
    #[error("PowerDNS is unreachable: {0}")]
    PowerDnsUnavailable(String),
    /// The call timed out: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The authoritative server did not answer the verification query.
    #[error("DNS verification failed: {0}")]
    DnsVerify(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A [`crate::PdmClient`] call answered with an error status; `message` is PDM's error text.
    #[error("PDM answered {status} ({code}): {message}")]
    Remote { status: u16, code: String, message: String },
    /// A [`crate::PdmClient`] call failed before an answer arrived.
    #[error("PDM request failed: {0}")]
    Transport(String),
}

impl PdmError {
    /// A short, stable label for metrics and for the `code` field of JSON errors.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PdmError::InvalidRequest(_) => "invalid_request",
            PdmError::InvalidLua(_) => "invalid_lua",
            PdmError::Unauthorized => "unauthorized",
            PdmError::Forbidden { .. } => "forbidden",
            PdmError::ImplausibleEpoch { .. } => "implausible_epoch",
            PdmError::NoEpoch { .. } => "no_epoch",
            PdmError::UnknownOperation(_) => "unknown_operation",
            PdmError::ZoneNotFound(_) => "zone_not_found",
            PdmError::ZoneExists(_) => "zone_exists",
            PdmError::StaleEpoch { .. } => "stale_epoch",
            PdmError::NameNotOwned { .. } => "name_not_owned",
            PdmError::ZoneHasForeignRecords { .. } => "zone_has_foreign_records",
            PdmError::PowerDnsRejected { .. } => "powerdns_rejected",
            PdmError::PowerDnsData(_) => "powerdns_data",
            PdmError::PowerDnsUnavailable(_) => "powerdns_unavailable",
            PdmError::OutcomeUnknown(_) => "outcome_unknown",
            PdmError::DnsVerify(_) => "dns_verify",
            PdmError::Config(_) => "config",
            PdmError::Io(_) => "io",
            PdmError::Remote { .. } => "remote",
            PdmError::Transport(_) => "transport",
        }
    }

    /// The HTTP status PDM's API answers with for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            PdmError::InvalidRequest(_) => 400,
            PdmError::InvalidLua(_) => 422,
            PdmError::Unauthorized => 401,
            PdmError::Forbidden { .. } => 403,
            PdmError::ImplausibleEpoch { .. } => 422,
            PdmError::ZoneNotFound(_) | PdmError::NoEpoch { .. } | PdmError::UnknownOperation(_) => 404,
            PdmError::ZoneExists(_)
            | PdmError::StaleEpoch { .. }
            | PdmError::NameNotOwned { .. }
            | PdmError::ZoneHasForeignRecords { .. } => 409,
            // PowerDNS refusing what PDM validated is PDM's input passing through: a client error.
            PdmError::PowerDnsRejected { status, .. } if (400..500).contains(status) => 422,
            PdmError::PowerDnsRejected { .. }
            | PdmError::PowerDnsData(_)
            | PdmError::PowerDnsUnavailable(_)
            | PdmError::DnsVerify(_) => 502,
            PdmError::OutcomeUnknown(_) => 504,
            PdmError::Remote { status, .. } => *status,
            PdmError::Config(_) | PdmError::Io(_) | PdmError::Transport(_) => 500,
        }
    }
}
