//! What the API does: fenced commits (with flip/pre-warm), zone lifecycle and delegation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::PdmError;
use crate::client::{Comment, NewZone, PowerDnsClient, RRSet, RRSetChange, Record, Zone};
use crate::config::Config;
use crate::dns::DnsChecker;
use crate::fence::{Epochs, ZoneLocks};
use crate::lua::{InnerType, LuaSpec};
use crate::model::*;
use crate::names::{in_zone, normalize, normalize_in_zone};

/// Log target of zone lifecycle, delegation and epoch-reset lines (who did what).
const AUDIT: &str = "pdm::audit";
/// Zone metadata listing names PDM created besides committed ones (glue, delegations).
pub const NAMES_KIND: &str = "X-PDM-NAMES";
/// Prefix of the rrset comment holding the LUA specs a body was synthesised from.
const SPEC_COMMENT_PREFIX: &str = "pdm-spec:v1 ";
const COMMENT_ACCOUNT: &str = "pdm";
/// First label prefix of pre-warm scratch names; reserved, callers cannot commit such names.
const SCRATCH_PREFIX: &str = "_pdm-warm-";
/// PowerDNS' check timeout when a body does not set one.
const DEFAULT_CHECK_TIMEOUT_SECS: u32 = 2;
/// Slack on top of interval + timeout before a pre-warmed check is trusted.
const PREWARM_MARGIN: Duration = Duration::from_millis(250);
const STATIC_TYPES: [&str; 4] = ["A", "AAAA", "CNAME", "TXT"];
/// When the last cache purge after a commit runs (see [`Manager::purge_after_commit`]).
const LATE_PURGE_DELAY: Duration = Duration::from_millis(500);

pub struct Manager {
    client: PowerDnsClient,
    dns: DnsChecker,
    locks: ZoneLocks,
    health_check_interval: Duration,
    api_timeout: Duration,
    dns_timeout: Duration,
    max_epoch_step: u64,
    default_nameservers: Vec<String>,
    soa_edit_api: String,
}

/// One rrset a commit writes.
struct DesiredRRSet {
    name: String,
    rtype: String,
    ttl: u32,
    records: Vec<Record>,
    /// For LUA rrsets: inner type, spec and body content of each record.
    lua: Vec<(InnerType, LuaSpec, String)>,
    /// Static rrset types, or the inner types of a LUA rrset: what to query afterwards.
    answer_types: BTreeSet<String>,
}

impl DesiredRRSet {
    fn change(&self) -> RRSetChange {
        let comments = if self.lua.is_empty() {
            Vec::new()
        } else {
            let specs: Vec<LuaRecord> =
                self.lua.iter().map(|(t, spec, _)| LuaRecord { rtype: t.as_str().into(), lua: spec.clone() }).collect();
            let json = serde_json::to_string(&specs).unwrap_or_default();
            vec![Comment { content: format!("{SPEC_COMMENT_PREFIX}{json}"), account: COMMENT_ACCOUNT.into() }]
        };
        RRSetChange::Replace {
            name: self.name.clone(),
            rtype: self.rtype.clone(),
            ttl: self.ttl,
            records: self.records.clone(),
            comments,
        }
    }

    fn matches(&self, live: &RRSet) -> bool {
        let mut want: Vec<&str> = self.records.iter().map(|r| r.content.as_str()).collect();
        let mut have: Vec<&str> = live.records.iter().map(|r| r.content.as_str()).collect();
        want.sort();
        have.sort();
        live.ttl == self.ttl && want == have
    }
}

impl Manager {
    pub fn new(config: &Config) -> Result<Self, PdmError> {
        let client = PowerDnsClient::new(&config.powerdns.api_url, &config.api_key()?, config.powerdns.api_timeout)?;
        let dns = DnsChecker::new(config.powerdns.dns_addr, config.powerdns.dns_timeout)?;
        let default_nameservers =
            config.zones.default_nameservers.iter().map(|n| normalize(n)).collect::<Result<_, _>>()?;
        Ok(Self {
            client,
            dns,
            locks: ZoneLocks::default(),
            health_check_interval: config.powerdns.health_check_interval,
            api_timeout: config.powerdns.api_timeout,
            dns_timeout: config.powerdns.dns_timeout,
            max_epoch_step: config.commit.max_epoch_step,
            default_nameservers,
            soa_edit_api: config.zones.soa_edit_api.clone(),
        })
    }

    /// PowerDNS purges the zone from its caches inside the PATCH, but a lookup that read the old
    /// rows just before can insert them into the query cache after that purge, and they would be
    /// served for `query-cache-ttl` (20 s by default): the old region after a flip. Seen under
    /// load with a query loop running through the commit. Purge again now (catches lookups that
    /// finished meanwhile) and once more a moment later (bounds slower ones). A failed purge is
    /// logged, not returned: the records are committed either way.
    async fn purge_after_commit(&self, zone: &str) {
        if let Err(e) = self.client.flush_cache(zone).await {
            tracing::warn!(%zone, error = %e, "cache purge after commit failed");
        }
        let (client, zone) = (self.client.clone(), zone.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(LATE_PURGE_DELAY).await;
            if let Err(e) = client.flush_cache(&zone).await {
                tracing::warn!(%zone, error = %e, "late cache purge after commit failed");
            }
        });
    }

    /// How long `request` may take at most without waiting for the zone lock: a pre-warm round
    /// if any record has health checks, the PowerDNS calls and the verification queries.
    pub fn commit_budget(&self, request: &CommitRequest) -> Duration {
        let specs: Vec<&LuaSpec> = request.records.iter().filter_map(|r| r.lua.as_ref()).collect();
        let prewarm = if specs.iter().any(|s| s.has_health_checks()) {
            let timeout =
                specs.iter().filter_map(|s| s.check_timeout_secs()).max().unwrap_or(DEFAULT_CHECK_TIMEOUT_SECS);
            self.health_check_interval + Duration::from_secs(timeout.into()) + PREWARM_MARGIN
        } else {
            Duration::ZERO
        };
        let queries = u32::try_from(request.records.len()).unwrap_or(u32::MAX);
        prewarm + self.api_timeout * 8 + self.dns_timeout.saturating_mul(queries.saturating_mul(2))
    }

    pub async fn commit(&self, request: CommitRequest, caller: &str) -> Result<CommitResponse, PdmError> {
        let zone = normalize(&request.zone)?;
        let desired = plan_rrsets(&zone, &request.records)?;
        let names: BTreeSet<&str> = desired.iter().map(|d| d.name.as_str()).collect();

        let _guard = self.locks.lock(&zone).await;
        let live = self.client.zone(&zone).await?;
        let epochs = Epochs::load(&self.client, &zone).await?;
        epochs.check(names.iter().copied(), request.epoch)?;
        epochs.check_plausible(names.iter().copied(), request.epoch, self.max_epoch_step)?;

        let mut changes = Vec::new();
        for name in &names {
            let at_name = live.rrsets.iter().filter(|r| r.name == *name);
            for rrset in at_name {
                if rrset.rtype == "SOA" || (rrset.rtype == "NS" && *name == zone) {
                    continue;
                }
                if rrset.rtype == "NS" {
                    return Err(PdmError::InvalidRequest(format!(
                        "{name} is a delegation point; commit inside the child zone"
                    )));
                }
                if !epochs.contains(name) {
                    let types: Vec<&str> =
                        live.rrsets.iter().filter(|r| r.name == *name).map(|r| r.rtype.as_str()).collect();
                    return Err(PdmError::NameNotOwned { name: name.to_string(), types: types.join(",") });
                }
                if !desired.iter().any(|d| d.name == *name && d.rtype == rrset.rtype) {
                    changes.push(RRSetChange::Delete { name: rrset.name.clone(), rtype: rrset.rtype.clone() });
                }
            }
        }

        // Flip or pre-warm: a body whose checks are all already running answers from warm state.
        let mut flipped = Vec::new();
        let mut to_warm: Vec<(String, &LuaSpec, InnerType)> = Vec::new();
        for d in desired.iter().filter(|d| !d.lua.is_empty()) {
            let live_rrset = live.rrsets.iter().find(|r| r.name == d.name && r.rtype == "LUA");
            if live_rrset.is_some_and(|l| d.matches(l)) {
                continue;
            }
            let warm = live_rrset.map(live_health_checks).unwrap_or_default();
            let mut all_warm = true;
            for (inner, spec, content) in &d.lua {
                if spec.has_health_checks() && !spec.health_checks(*inner).is_subset(&warm) {
                    all_warm = false;
                    to_warm.push((content.clone(), spec, *inner));
                }
            }
            if all_warm && !warm.is_empty() {
                flipped.push(d.name.clone());
            }
        }

        // Fence before any write: a crash after this leaves the record unchanged and the stale
        // epochs refused, never the reverse.
        let raised = epochs.raised(names.iter().copied(), request.epoch);
        if raised != epochs {
            raised.store(&self.client, &zone).await?;
        }

        let mut prewarmed = Vec::new();
        let mut scratch_names = Vec::new();
        if !to_warm.is_empty() {
            scratch_names = self.prewarm(&zone, &to_warm).await?;
            for d in &desired {
                if d.lua.iter().any(|(_, _, c)| to_warm.iter().any(|(w, _, _)| w == c)) {
                    prewarmed.push(d.name.clone());
                }
            }
        }
        changes.extend(desired.iter().map(DesiredRRSet::change));
        changes.extend(scratch_names.iter().map(|n| RRSetChange::Delete { name: n.clone(), rtype: "LUA".into() }));

        match self.client.patch_rrsets(&zone, &changes).await {
            Ok(()) => {}
            Err(PdmError::OutcomeUnknown(why)) => {
                // The PATCH may have been applied: re-read before answering.
                let now = self.client.zone(&zone).await?;
                let applied = desired
                    .iter()
                    .all(|d| now.rrsets.iter().any(|r| r.name == d.name && r.rtype == d.rtype && d.matches(r)));
                if !applied {
                    self.remove_scratch(&zone, &scratch_names).await;
                    return Err(PdmError::OutcomeUnknown(format!(
                        "{why}; the records were not applied when re-read, retry with the same epoch"
                    )));
                }
            }
            Err(e) => {
                if matches!(e, PdmError::PowerDnsRejected { status, .. } if (400..500).contains(&status)) {
                    // Definitely not applied: put the fence back so a refused request changes nothing.
                    if raised != epochs
                        && let Err(restore) = epochs.store(&self.client, &zone).await
                    {
                        tracing::warn!(%zone, error = %restore, "could not restore epochs after a refused PATCH");
                    }
                }
                self.remove_scratch(&zone, &scratch_names).await;
                return Err(e);
            }
        }

        self.purge_after_commit(&zone).await;

        let mut answers = Vec::new();
        for d in &desired {
            for rtype in &d.answer_types {
                answers.push(match self.dns.query(&d.name, rtype).await {
                    Ok(records) => Answer { name: d.name.clone(), rtype: rtype.clone(), records, error: None },
                    Err(e) => {
                        tracing::warn!(name = %d.name, %rtype, error = %e, "verification query failed after commit");
                        Answer {
                            name: d.name.clone(),
                            rtype: rtype.clone(),
                            records: Vec::new(),
                            error: Some(e.to_string()),
                        }
                    }
                });
            }
        }
        tracing::info!(%caller, %zone, epoch = request.epoch, ?names, ?flipped, ?prewarmed, "committed");
        Ok(CommitResponse { zone, epoch: request.epoch, prewarmed, flipped, answers })
    }

    /// Publishes each body on a scratch name, queries it once so PowerDNS creates its checks,
    /// and waits for one check round (PowerDNS 4.7 runs a new check only at the next round and
    /// answers with `backupSelector`, random by default, until then). Returns the scratch names.
    async fn prewarm(&self, zone: &str, bodies: &[(String, &LuaSpec, InnerType)]) -> Result<Vec<String>, PdmError> {
        let nonce: u64 = rand::random();
        let mut scratch = Vec::new();
        let mut changes = Vec::new();
        for (i, (content, _, _)) in bodies.iter().enumerate() {
            let name = format!("{SCRATCH_PREFIX}{nonce:016x}-{i}.{zone}");
            changes.push(RRSetChange::Replace {
                name: name.clone(),
                rtype: "LUA".into(),
                ttl: 1,
                records: vec![Record { content: content.clone(), disabled: false }],
                comments: Vec::new(),
            });
            scratch.push(name);
        }
        self.client.patch_rrsets(zone, &changes).await?;
        for (name, (_, _, inner)) in scratch.iter().zip(bodies) {
            // Any answer will do: the query only makes PowerDNS register the checks.
            if let Err(e) = self.dns.query(name, inner.as_str()).await {
                tracing::debug!(%name, error = %e, "pre-warm query failed");
            }
        }
        let timeout = bodies
            .iter()
            .map(|(_, spec, _)| spec.check_timeout_secs().unwrap_or(DEFAULT_CHECK_TIMEOUT_SECS))
            .max()
            .unwrap_or(DEFAULT_CHECK_TIMEOUT_SECS);
        tokio::time::sleep(self.health_check_interval + Duration::from_secs(timeout.into()) + PREWARM_MARGIN).await;
        Ok(scratch)
    }

    async fn remove_scratch(&self, zone: &str, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let changes: Vec<RRSetChange> =
            names.iter().map(|n| RRSetChange::Delete { name: n.clone(), rtype: "LUA".into() }).collect();
        if let Err(e) = self.client.patch_rrsets(zone, &changes).await {
            tracing::warn!(%zone, error = %e, "could not remove pre-warm scratch names");
        }
    }

    pub async fn list_zones(&self) -> Result<ZoneList, PdmError> {
        let zones = self.client.list_zones().await?;
        Ok(ZoneList {
            zones: zones.into_iter().map(|z| ZoneInfo { name: z.name, kind: z.kind, serial: z.serial }).collect(),
        })
    }

    pub async fn create_zone(&self, request: CreateZoneRequest, caller: &str) -> Result<ZoneInfo, PdmError> {
        let zone = normalize(&request.name)?;
        let nameservers = if request.nameservers.is_empty() {
            self.default_nameservers.iter().map(|n| Nameserver { name: n.clone(), addresses: Vec::new() }).collect()
        } else {
            request.nameservers
        };
        if nameservers.is_empty() {
            return Err(PdmError::InvalidRequest(
                "no nameservers: pass nameservers or configure zones.default_nameservers".into(),
            ));
        }
        let (ns_names, glue) = nameserver_records(&zone, &nameservers, 3600)?;
        let glue_names: Vec<String> = glue.iter().map(|g| g.name.clone()).collect();
        let _guard = self.locks.lock(&zone).await;
        self.client
            .create_zone(&NewZone {
                name: zone.clone(),
                kind: "Native".into(),
                nameservers: ns_names,
                rrsets: glue,
                soa_edit_api: self.soa_edit_api.clone(),
            })
            .await?;
        if !glue_names.is_empty() {
            self.client.put_metadata(&zone, NAMES_KIND, &glue_names).await?;
        }
        let created = self.client.zone(&zone).await?;
        tracing::info!(target: AUDIT, %caller, %zone, "zone created");
        Ok(ZoneInfo { name: created.name, kind: created.kind, serial: created.serial })
    }

    pub async fn delete_zone(&self, zone: &str, params: DeleteZoneParams, caller: &str) -> Result<(), PdmError> {
        let zone = normalize(zone)?;
        let reason = params.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
        if params.force && reason.is_none() {
            return Err(PdmError::InvalidRequest("force=true needs a non-empty reason".into()));
        }
        let _guard = self.locks.lock(&zone).await;
        let live = self.client.zone(&zone).await?;
        let owned = self.owned_names(&zone).await?;
        let foreign: BTreeSet<&str> = live
            .rrsets
            .iter()
            .filter(|r| !(r.name == zone && (r.rtype == "SOA" || r.rtype == "NS")))
            .filter(|r| !owned.contains(&r.name) && !is_scratch_name(&r.name))
            .map(|r| r.name.as_str())
            .collect();
        if !foreign.is_empty() {
            if !params.force {
                let names: Vec<&str> = foreign.into_iter().collect();
                return Err(PdmError::ZoneHasForeignRecords { zone, names: names.join(", ") });
            }
            tracing::warn!(target: AUDIT, %caller, %zone, reason, foreign = ?foreign,
                "force-deleting a zone with records PDM does not own");
        }
        self.client.delete_zone(&zone).await?;
        tracing::info!(target: AUDIT, %caller, %zone, force = params.force, reason, "zone deleted");
        Ok(())
    }

    pub async fn delegate(
        &self,
        parent: &str,
        child: &str,
        request: DelegationRequest,
        caller: &str,
    ) -> Result<DelegationResponse, PdmError> {
        let parent = normalize(parent)?;
        let child = normalize_in_zone(child, &parent)?;
        if child == parent {
            return Err(PdmError::InvalidRequest("the child zone must lie below the parent".into()));
        }
        if request.nameservers.is_empty() {
            return Err(PdmError::InvalidRequest("a delegation needs at least one nameserver".into()));
        }
        check_ttl(request.ttl)?;
        let (ns_names, glue) = nameserver_records(&parent, &request.nameservers, request.ttl)?;
        let _guard = self.locks.lock(&parent).await;
        let live = self.client.zone(&parent).await?;
        let mut owned = self.owned_names(&parent).await?;
        if let Some(other) = live.rrsets.iter().find(|r| r.name == child && r.rtype != "NS") {
            return Err(PdmError::NameNotOwned { name: child, types: other.rtype.clone() });
        }
        let mut changes = vec![RRSetChange::Replace {
            name: child.clone(),
            rtype: "NS".into(),
            ttl: request.ttl,
            records: ns_names.iter().map(|n| Record { content: n.clone(), disabled: false }).collect(),
            comments: Vec::new(),
        }];
        for g in &glue {
            if !owned.contains(&g.name) && live.rrsets.iter().any(|r| r.name == g.name) {
                return Err(PdmError::NameNotOwned { name: g.name.clone(), types: "glue".into() });
            }
            changes.push(RRSetChange::Replace {
                name: g.name.clone(),
                rtype: g.rtype.clone(),
                ttl: g.ttl,
                records: g.records.clone(),
                comments: Vec::new(),
            });
        }
        let before = owned.clone();
        owned.insert(child.clone());
        owned.extend(glue.iter().map(|g| g.name.clone()));
        if owned != before {
            // Recorded first: a name PDM wrote but forgot would block deleting the zone later.
            let names: Vec<String> = owned.iter().filter(|n| !n.is_empty()).cloned().collect();
            self.client.put_metadata(&parent, NAMES_KIND, &names).await?;
        }
        self.client.patch_rrsets(&parent, &changes).await?;
        tracing::info!(target: AUDIT, %caller, %parent, %child, nameservers = ?ns_names, "delegation written");
        Ok(DelegationResponse { parent, child, nameservers: ns_names })
    }

    /// Sets `name`'s recorded epoch to `request.epoch` (lower or higher): the way back from an
    /// epoch that fences the name against the lease store's real ones. Only names PDM holds an
    /// epoch for; logged with the caller, the old and the new epoch.
    pub async fn reset_epoch(
        &self,
        zone: &str,
        name: &str,
        request: EpochResetRequest,
        caller: &str,
    ) -> Result<EpochResetResponse, PdmError> {
        let zone = normalize(zone)?;
        let name = normalize_in_zone(name, &zone)?;
        let reason = request.reason.trim();
        if reason.is_empty() {
            return Err(PdmError::InvalidRequest("an epoch reset needs a non-empty reason".into()));
        }
        let _guard = self.locks.lock(&zone).await;
        let epochs = Epochs::load(&self.client, &zone).await?;
        let old_epoch =
            epochs.get(&name).ok_or_else(|| PdmError::NoEpoch { zone: zone.clone(), name: name.clone() })?;
        epochs.reset(&name, request.epoch).store(&self.client, &zone).await?;
        tracing::warn!(target: AUDIT, %caller, %zone, %name, old_epoch, new_epoch = request.epoch, reason,
            "epoch reset");
        Ok(EpochResetResponse { zone, name, old_epoch, new_epoch: request.epoch, by: caller.to_string() })
    }

    pub async fn records(&self, zone: &str, name: &str) -> Result<RecordsResponse, PdmError> {
        let zone = normalize(zone)?;
        let name = normalize_in_zone(name, &zone)?;
        let live: Zone = self.client.zone(&zone).await?;
        let epochs = Epochs::load(&self.client, &zone).await?;
        let mut rrsets = BTreeMap::new();
        let mut lua = Vec::new();
        for r in live.rrsets.iter().filter(|r| r.name == name) {
            rrsets.insert(
                r.rtype.clone(),
                RRSetView { ttl: r.ttl, records: r.records.iter().map(|rec| rec.content.clone()).collect() },
            );
            if r.rtype == "LUA" {
                lua.extend(stored_specs(r).unwrap_or_default());
            }
        }
        Ok(RecordsResponse { epoch: epochs.get(&name), zone, name, rrsets, lua })
    }

    /// Queries every LUA name PDM committed, in every zone, so PowerDNS keeps their health checks
    /// (it drops checks idle for `lua-health-checks-expire-delay`), and a later flip finds them
    /// warm. Returns how many queries it sent.
    pub async fn keep_warm(&self) -> Result<usize, PdmError> {
        let mut queried = 0;
        for zone in self.client.list_zones().await? {
            let epochs = Epochs::load(&self.client, &zone.name).await?;
            if epochs.names().next().is_none() {
                continue;
            }
            let live = self.client.zone(&zone.name).await?;
            for rrset in live.rrsets.iter().filter(|r| r.rtype == "LUA" && epochs.contains(&r.name)) {
                let inner: BTreeSet<&str> =
                    rrset.records.iter().filter_map(|r| r.content.split_whitespace().next()).collect();
                for rtype in inner {
                    // The answer does not matter; being asked keeps the checks alive.
                    if let Err(e) = self.dns.query(&rrset.name, rtype).await {
                        tracing::debug!(name = %rrset.name, error = %e, "keep-warm query failed");
                    }
                    queried += 1;
                }
            }
        }
        Ok(queried)
    }

    /// Whether PowerDNS' API answers.
    pub async fn ready(&self) -> Result<(), PdmError> {
        self.client.list_zones().await.map(drop)
    }

    async fn owned_names(&self, zone: &str) -> Result<BTreeSet<String>, PdmError> {
        let mut owned: BTreeSet<String> = self.client.get_metadata(zone, NAMES_KIND).await?.into_iter().collect();
        owned.extend(Epochs::load(&self.client, zone).await?.names().map(str::to_string));
        Ok(owned)
    }
}

/// The specs stored with a LUA rrset, if they still describe its body exactly (anything else,
/// e.g. an edit behind PDM's back, counts as unknown and gets pre-warmed).
fn stored_specs(rrset: &RRSet) -> Option<Vec<LuaRecord>> {
    let comment = rrset.comments.iter().find_map(|c| c.content.strip_prefix(SPEC_COMMENT_PREFIX))?;
    let specs: Vec<LuaRecord> = serde_json::from_str(comment).ok()?;
    let mut rendered = Vec::new();
    for s in &specs {
        rendered.push(s.lua.synthesize(inner_type(&s.rtype).ok()?).ok()?.content());
    }
    let mut live: Vec<&str> = rrset.records.iter().map(|r| r.content.as_str()).collect();
    live.sort();
    rendered.sort();
    (live == rendered).then_some(specs)
}

fn live_health_checks(rrset: &RRSet) -> BTreeSet<String> {
    stored_specs(rrset)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Some(s.lua.health_checks(inner_type(&s.rtype).ok()?)))
        .flatten()
        .collect()
}

/// A pre-warm scratch name (left behind only if PDM died mid-commit).
fn is_scratch_name(name: &str) -> bool {
    name.starts_with(SCRATCH_PREFIX)
}

fn inner_type(rtype: &str) -> Result<InnerType, PdmError> {
    match rtype {
        "A" => Ok(InnerType::A),
        "AAAA" => Ok(InnerType::Aaaa),
        other => Err(PdmError::InvalidLua(format!("LUA records synthesise A or AAAA here, not {other}"))),
    }
}

fn check_ttl(ttl: u32) -> Result<(), PdmError> {
    if !(1..=604_800).contains(&ttl) {
        return Err(PdmError::InvalidRequest(format!("ttl {ttl} must be 1-604800 seconds")));
    }
    Ok(())
}

/// Validates every record and groups them into the rrsets the commit will write.
fn plan_rrsets(zone: &str, records: &[RecordSpec]) -> Result<Vec<DesiredRRSet>, PdmError> {
    if records.is_empty() {
        return Err(PdmError::InvalidRequest("records is empty".into()));
    }
    let mut plan: Vec<DesiredRRSet> = Vec::new();
    for (i, spec) in records.iter().enumerate() {
        let at = |msg: String| PdmError::InvalidRequest(format!("records[{i}]: {msg}"));
        let name = normalize_in_zone(&spec.name, zone).map_err(|e| at(e.to_string()))?;
        if is_scratch_name(&name) {
            return Err(at(format!("{name} is reserved for PDM's pre-warm scratch names")));
        }
        check_ttl(spec.ttl).map_err(|e| at(e.to_string()))?;
        let rtype = spec.rtype.to_ascii_uppercase();
        let (rrset_type, content, lua) = match (&spec.content, &spec.lua) {
            (Some(_), Some(_)) | (None, None) => return Err(at("set exactly one of content and lua".into())),
            (None, Some(lua)) => {
                let inner = inner_type(&rtype).map_err(|e| PdmError::InvalidLua(format!("records[{i}]: {e}")))?;
                let body = lua.synthesize(inner).map_err(|e| PdmError::InvalidLua(format!("records[{i}]: {e}")))?;
                let content = body.content();
                ("LUA".to_string(), content.clone(), Some((inner, lua.clone(), content)))
            }
            (Some(content), None) => {
                if !STATIC_TYPES.contains(&rtype.as_str()) {
                    return Err(at(format!("type {rtype:?} is not one of {}", STATIC_TYPES.join(", "))));
                }
                (rtype.clone(), static_content(&rtype, content, zone).map_err(at)?, None)
            }
        };
        let existing = plan.iter_mut().find(|d| d.name == name && d.rtype == rrset_type);
        let entry = match existing {
            Some(entry) => {
                if entry.ttl != spec.ttl {
                    return Err(at(format!("ttl {} differs from another {rrset_type} record at {name}", spec.ttl)));
                }
                if entry.records.iter().any(|r| r.content == content) {
                    return Err(at(format!("duplicate {rrset_type} record at {name}")));
                }
                entry
            }
            None => {
                plan.push(DesiredRRSet {
                    name: name.clone(),
                    rtype: rrset_type.clone(),
                    ttl: spec.ttl,
                    records: Vec::new(),
                    lua: Vec::new(),
                    answer_types: BTreeSet::new(),
                });
                plan.last_mut().expect("just pushed")
            }
        };
        entry.records.push(Record { content, disabled: false });
        entry.answer_types.insert(rtype.clone());
        if let Some(lua) = lua {
            entry.lua.push(lua);
        }
    }
    for d in &plan {
        let answers_cname = d.answer_types.contains("CNAME");
        let others_at_name = plan.iter().filter(|o| o.name == d.name).count() > 1;
        if answers_cname && (d.records.len() > 1 || others_at_name) {
            return Err(PdmError::InvalidRequest(format!("{}: a CNAME must be the only record at its name", d.name)));
        }
        if answers_cname && d.name == zone {
            return Err(PdmError::InvalidRequest("a CNAME cannot sit at the zone apex".into()));
        }
        // A LUA rrset and a static rrset of the same type would be merged into one answer.
        let lua_types: BTreeSet<&String> =
            plan.iter().filter(|o| o.name == d.name && o.rtype == "LUA").flat_map(|o| &o.answer_types).collect();
        if d.rtype != "LUA" && lua_types.contains(&d.rtype) {
            return Err(PdmError::InvalidRequest(format!("{}: both a LUA and a static {} record", d.name, d.rtype)));
        }
    }
    Ok(plan)
}

fn static_content(rtype: &str, content: &str, zone: &str) -> Result<String, String> {
    let content = content.trim();
    match rtype {
        "A" => content
            .parse::<std::net::Ipv4Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("{content:?} is not an IPv4 address")),
        "AAAA" => content
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("{content:?} is not an IPv6 address")),
        "CNAME" => {
            let target = normalize(content).map_err(|e| e.to_string())?;
            if in_zone(&target, zone) && target == zone {
                return Err("a CNAME to its own zone apex is not supported".into());
            }
            Ok(target)
        }
        "TXT" => {
            let inner = content.strip_prefix('"').and_then(|c| c.strip_suffix('"'));
            match inner {
                Some(text) if text.len() <= 255 && !text.contains('"') && text.chars().all(|c| (' '..='~').contains(&c)) => {
                    Ok(content.to_string())
                }
                _ => Err("TXT content must be one quoted string of at most 255 printable ASCII characters without inner quotes".into()),
            }
        }
        other => Err(format!("unsupported type {other}")),
    }
}

/// NS names plus glue rrsets for the nameservers that lie inside `zone`.
fn nameserver_records(zone: &str, nameservers: &[Nameserver], ttl: u32) -> Result<(Vec<String>, Vec<RRSet>), PdmError> {
    let mut names = Vec::new();
    let mut glue = Vec::new();
    for ns in nameservers {
        let name = normalize(&ns.name)?;
        if names.contains(&name) {
            return Err(PdmError::InvalidRequest(format!("nameserver {name} is listed twice")));
        }
        let inside = in_zone(&name, zone);
        if inside && ns.addresses.is_empty() {
            return Err(PdmError::InvalidRequest(format!(
                "nameserver {name} lies inside {zone} and needs addresses (glue)"
            )));
        }
        if !inside && !ns.addresses.is_empty() {
            return Err(PdmError::InvalidRequest(format!(
                "nameserver {name} lies outside {zone}: glue is not allowed"
            )));
        }
        for (rtype, want_v4) in [("A", true), ("AAAA", false)] {
            let records: Vec<Record> = ns
                .addresses
                .iter()
                .filter(|a| matches!(a, IpAddr::V4(_)) == want_v4)
                .map(|a| Record { content: a.to_string(), disabled: false })
                .collect();
            if !records.is_empty() {
                glue.push(RRSet { name: name.clone(), rtype: rtype.into(), ttl, records, comments: Vec::new() });
            }
        }
        names.push(name);
    }
    Ok((names, glue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, rtype: &str, content: &str) -> RecordSpec {
        RecordSpec { name: name.into(), rtype: rtype.into(), ttl: 5, content: Some(content.into()), lua: None }
    }

    #[test]
    fn plan_groups_rrsets_and_rejects_conflicts() {
        let plan =
            plan_rrsets("z.test.", &[rec("a.z.test", "A", "192.0.2.1"), rec("a.z.test.", "A", "192.0.2.2")]).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].records.len(), 2);
        for bad in [
            vec![rec("a.other.test", "A", "192.0.2.1")],
            vec![rec("a.z.test", "A", "192.0.2.1"), rec("a.z.test", "A", "192.0.2.1")],
            vec![rec("a.z.test", "CNAME", "b.z.test"), rec("a.z.test", "A", "192.0.2.1")],
            vec![rec("a.z.test", "MX", "10 mx.z.test.")],
            vec![rec("a.z.test", "A", "::1")],
            vec![rec("a.z.test", "TXT", "unquoted")],
            vec![rec("_pdm-warm-1.z.test", "A", "192.0.2.1")],
            vec![],
        ] {
            assert!(plan_rrsets("z.test.", &bad).is_err(), "{bad:?} accepted");
        }
    }
}
