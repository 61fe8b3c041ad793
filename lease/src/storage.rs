//! Durable storage: an append-only, CRC-checked log file plus atomically replaced files for the
//! vote, the state machine and the snapshot.
//!
//! - `log`: records `[len u32 LE][crc32 u32 LE][json]`. An append is acknowledged to openraft only
//!   after `fdatasync`. On open, a torn tail (a bad record with no intact record after it: the
//!   last append, never acknowledged) is cut off. A bad record *followed* by intact ones is
//!   corruption of acknowledged entries: the node refuses to start, naming file and offset
//!   (cutting there would silently drop entries, and with them epochs; README "Recovering a lease
//!   node").
//! - `vote.json`, `sm.json`, `snapshot.json`: written to a temp file, fsynced, renamed over the old
//!   one, then the directory is fsynced, so a crash leaves either the old or the new version.
//! - All writes run on a blocking thread, one at a time (openraft awaits each call), so I/O order
//!   equals submission order.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{
    LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine, Snapshot,
};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, SnapshotMeta, StorageError, StoredMembership,
    Vote,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::types::{CommandResult, LeaseRecord, LeaseTable, NodeId, NodeInfo, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The log is rewritten without purged entries once it grows past this size.
const COMPACT_AFTER_BYTES: u64 = 4 << 20;

fn io_err(verb: ErrorVerb) -> impl FnOnce(io::Error) -> StorageError<NodeId> {
    move |e| StorageError::from_io_error(ErrorSubject::Store, verb, e)
}

/// Writes `bytes` to `dir/name` so that a crash leaves the old or the new content, never a mix.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Entry(Entry<TypeConfig>),
    /// Entries with index ≥ this were deleted (conflict truncation).
    TruncateFrom(u64),
    /// Entries up to and including this log id were purged (covered by a snapshot).
    Purge(LogId<NodeId>),
}

/// The intact record at `pos` and its encoded length, if there is one.
fn decode_at(bytes: &[u8], pos: usize) -> Option<(LogRecord, usize)> {
    let header = bytes.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let payload = bytes.get(pos + 8..(pos + 8).checked_add(len)?)?;
    if len == 0 || crc32fast::hash(payload) != crc {
        return None;
    }
    let rec = serde_json::from_slice::<LogRecord>(payload).ok()?;
    Some((rec, 8 + len))
}

/// Where the first intact record after the bad one at `bad` starts, if any. A torn append leaves
/// at most a partial last write (a partial record, zeros), never an intact record after the bad
/// one — except when the kernel persisted a later page of that same unacknowledged write before
/// an earlier one; refusing then is the safe mistake (the node is rebuilt from its peers).
fn next_intact_record(bytes: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..bytes.len().saturating_sub(8)).find(|&pos| decode_at(bytes, pos).is_some())
}

fn encode(rec: &LogRecord, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = serde_json::to_vec(rec).map_err(|e| corrupt("encode", e))?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

#[derive(Debug)]
struct LogInner {
    dir: PathBuf,
    file: File,
    file_len: u64,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

impl LogInner {
    fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut inner = LogInner {
            dir: dir.to_path_buf(),
            file,
            file_len: 0,
            entries: BTreeMap::new(),
            last_purged: None,
            vote: None,
        };
        let good = inner.replay(&bytes);
        if good < bytes.len()
            && let Some(next) = next_intact_record(&bytes, good)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: corrupt record at byte offset {good}, followed by an intact record at offset {next}: \
                     entries after it were acknowledged and cutting the log there would lose them; this node \
                     refuses to start (recovery: wipe this node's data_dir and let it rejoin from the others, \
                     see README \"Recovering a lease node\")",
                    path.display()
                ),
            ));
        }
        if good < bytes.len() {
            // Never acknowledged (the fsync did not finish): safe to drop.
            tracing::warn!(path = %path.display(), kept = good, dropped = bytes.len() - good, "truncating torn log tail");
            inner.file.set_len(good as u64)?;
            inner.file.sync_all()?;
        }
        inner.file_len = good as u64;
        if let Some(v) = read_optional(&dir.join("vote.json"))? {
            inner.vote = Some(serde_json::from_slice(&v).map_err(|e| corrupt("vote.json", e))?);
        }
        Ok(inner)
    }

    /// Applies every intact record; returns the length of the intact prefix.
    fn replay(&mut self, bytes: &[u8]) -> usize {
        let mut pos = 0;
        while let Some((rec, len)) = decode_at(bytes, pos) {
            self.apply_record(rec);
            pos += len;
        }
        pos
    }

    fn apply_record(&mut self, rec: LogRecord) {
        match rec {
            LogRecord::Entry(e) => {
                self.entries.insert(e.log_id.index, e);
            }
            LogRecord::TruncateFrom(i) => {
                self.entries.split_off(&i);
            }
            LogRecord::Purge(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                self.last_purged = Some(id);
            }
        }
    }

    fn write(&mut self, recs: Vec<LogRecord>) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in &recs {
            encode(r, &mut buf)?;
        }
        for r in recs {
            self.apply_record(r);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.file_len += buf.len() as u64;
        Ok(())
    }

    /// Rewrites the log with only the live entries.
    fn compact(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = self.last_purged {
            encode(&LogRecord::Purge(p), &mut buf)?;
        }
        for e in self.entries.values() {
            encode(&LogRecord::Entry(e.clone()), &mut buf)?;
        }
        write_atomic(&self.dir, "log", &buf)?;
        self.file = OpenOptions::new().read(true).append(true).open(self.dir.join("log"))?;
        self.file_len = buf.len() as u64;
        Ok(())
    }
}

/// The raft log and vote. Cheap to clone handles share one file.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path) -> Result<Self, crate::LeaseError> {
        let inner = LogInner::open(dir).map_err(|e| crate::LeaseError::Storage(format!("{}: {e}", dir.display())))?;
        Ok(LogStore { inner: Arc::new(Mutex::new(inner)) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        verb: ErrorVerb,
        f: impl FnOnce(&mut LogInner) -> io::Result<T> + Send + 'static,
    ) -> StorageResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock().expect("log lock poisoned")))
            .await
            .map_err(|e| io_err(verb)(io::Error::other(e)))?
            .map_err(io_err(verb))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let inner = self.inner.lock().expect("log lock poisoned");
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.inner.lock().expect("log lock poisoned");
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote = *vote;
        self.blocking(ErrorVerb::Write, move |inner| {
            let bytes = serde_json::to_vec(&vote).map_err(|e| corrupt("vote", e))?;
            write_atomic(&inner.dir, "vote.json", &bytes)?;
            inner.vote = Some(vote);
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.inner.lock().expect("log lock poisoned").vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let recs: Vec<LogRecord> = entries.into_iter().map(LogRecord::Entry).collect();
        let res = self.blocking(ErrorVerb::Write, move |inner| inner.write(recs)).await;
        // Acknowledge only what is on disk.
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(ErrorVerb::Delete, move |inner| inner.write(vec![LogRecord::TruncateFrom(log_id.index)])).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(ErrorVerb::Delete, move |inner| {
            inner.write(vec![LogRecord::Purge(log_id)])?;
            if inner.file_len > COMPACT_AFTER_BYTES {
                inner.compact()?;
            }
            Ok(())
        })
        .await
    }
}

/// Everything the state machine persists, atomically, on every applied batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
    table: LeaseTable,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

/// When this node applied the latest change of a pair, on its own monotonic clock. Local only:
/// never replicated, never persisted, never used by `apply`. Used by the grant gate (observed-time
/// rule): a change seen late only delays a re-grant, which is the safe direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    pub seq: u64,
    pub at: Instant,
}

/// Read access to the applied lease table, shared with the node.
#[derive(Debug, Clone)]
pub(crate) struct StateView {
    data: Arc<RwLock<SmData>>,
    observed: Arc<Mutex<HashMap<String, Observation>>>,
}

impl StateView {
    pub(crate) fn record(&self, pair: &str) -> Option<LeaseRecord> {
        self.data.read().expect("sm lock poisoned").table.pairs.get(pair).cloned()
    }

    pub(crate) fn observation(&self, pair: &str) -> Option<Observation> {
        self.observed.lock().expect("observed lock poisoned").get(pair).copied()
    }

    /// Stamps every pair as changed now: after a restart or snapshot install this node has not
    /// watched the holders, so it must wait a full duration before believing any lease expired.
    fn observe_all_now(&self) {
        let data = self.data.read().expect("sm lock poisoned");
        let mut obs = self.observed.lock().expect("observed lock poisoned");
        let now = Instant::now();
        obs.clear();
        for (pair, rec) in &data.table.pairs {
            obs.insert(pair.clone(), Observation { seq: rec.seq, at: now });
        }
    }
}

/// The lease state machine. Keeps the tiny table in memory and persists it with last-applied and
/// membership after every batch, so a restart never re-applies and a snapshot is just a copy.
#[derive(Debug)]
pub struct StateMachineStore {
    dir: PathBuf,
    view: StateView,
}

impl StateMachineStore {
    pub fn open(dir: &Path) -> Result<Self, crate::LeaseError> {
        let storage = |e: io::Error| crate::LeaseError::Storage(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(storage)?;
        let data = match read_optional(&dir.join("sm.json")).map_err(storage)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| storage(corrupt("sm.json", e)))?,
            None => SmData::default(),
        };
        let view = StateView { data: Arc::new(RwLock::new(data)), observed: Default::default() };
        view.observe_all_now();
        Ok(StateMachineStore { dir: dir.to_path_buf(), view })
    }

    pub(crate) fn view(&self) -> StateView {
        self.view.clone()
    }

    async fn persist(&self, data: SmData) -> StorageResult<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&data).map_err(|e| corrupt("sm", e))?;
            write_atomic(&dir, "sm.json", &bytes)
        })
        .await
        .map_err(|e| io_err(ErrorVerb::Write)(io::Error::other(e)))?
        .map_err(io_err(ErrorVerb::Write))
    }
}

/// Builds snapshots from a copy of the state.
#[derive(Debug)]
pub struct SnapshotBuilder {
    dir: PathBuf,
    data: SmData,
}

fn save_snapshot(dir: &Path, meta: &SnapshotMeta<NodeId, NodeInfo>, data: &[u8]) -> io::Result<()> {
    let stored = StoredSnapshot { meta: meta.clone(), data: data.to_vec() };
    write_atomic(dir, "snapshot.json", &serde_json::to_vec(&stored).map_err(|e| corrupt("snapshot", e))?)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let bytes = serde_json::to_vec(&self.data).map_err(|e| io_err(ErrorVerb::Write)(corrupt("snapshot", e)))?;
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.data.last_applied.map(|l| l.index).unwrap_or(0),
                self.data.membership.log_id().map(|l| l.index).unwrap_or(0)
            ),
        };
        let (dir, m, b) = (self.dir.clone(), meta.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || save_snapshot(&dir, &m, &b))
            .await
            .map_err(|e| io_err(ErrorVerb::Write)(io::Error::other(e)))?
            .map_err(io_err(ErrorVerb::Write))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>)> {
        let data = self.view.data.read().expect("sm lock poisoned");
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut touched = Vec::new();
        let snapshot = {
            let mut data = self.view.data.write().expect("sm lock poisoned");
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => replies.push(CommandResult::default()),
                    EntryPayload::Normal(cmd) => {
                        let reply = data.table.apply(entry.log_id.index, &cmd);
                        touched.push((reply.record.pair.clone(), reply.record.seq));
                        replies.push(reply);
                    }
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        replies.push(CommandResult::default());
                    }
                }
            }
            data.clone()
        };
        self.persist(snapshot).await?;
        let now = Instant::now();
        let mut obs = self.view.observed.lock().expect("observed lock poisoned");
        for (pair, seq) in touched {
            let changed = obs.get(&pair).is_none_or(|o| o.seq != seq);
            if changed {
                obs.insert(pair, Observation { seq, at: now });
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { dir: self.dir.clone(), data: self.view.data.read().expect("sm lock poisoned").clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let mut data: SmData =
            serde_json::from_slice(&bytes).map_err(|e| io_err(ErrorVerb::Read)(corrupt("snapshot", e)))?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        self.persist(data.clone()).await?;
        let (dir, m) = (self.dir.clone(), meta.clone());
        tokio::task::spawn_blocking(move || save_snapshot(&dir, &m, &bytes))
            .await
            .map_err(|e| io_err(ErrorVerb::Write)(io::Error::other(e)))?
            .map_err(io_err(ErrorVerb::Write))?;
        *self.view.data.write().expect("sm lock poisoned") = data;
        self.view.observe_all_now();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = read_optional(&self.dir.join("snapshot.json")).map_err(io_err(ErrorVerb::Read))? else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| io_err(ErrorVerb::Read)(corrupt("snapshot.json", e)))?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

/// Opens both halves of a node's storage in `dir`.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), crate::LeaseError> {
    Ok((LogStore::open(&dir.join("log"))?, StateMachineStore::open(&dir.join("sm"))?))
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(io_err(ErrorVerb::Write))?;
            let (log, sm) = open(dir.path()).map_err(|e| io_err(ErrorVerb::Write)(io::Error::other(e)))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    #[test]
    fn crc_bad_tail_is_cut_and_earlier_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut inner = LogInner::open(dir.path()).unwrap();
            inner.write((1..=3).map(|i| LogRecord::Entry(blank(i))).collect()).unwrap();
        }
        let path = dir.path().join("log");
        let mut bytes = std::fs::read(&path).unwrap();
        let good_len = bytes.len();
        // A complete-looking last record whose payload was corrupted on disk.
        let mut extra = Vec::new();
        encode(&LogRecord::Entry(blank(4)), &mut extra).unwrap();
        let last = extra.len() - 3;
        extra[last] ^= 0xff;
        bytes.extend_from_slice(&extra);
        std::fs::write(&path, &bytes).unwrap();

        let inner = LogInner::open(dir.path()).unwrap();
        assert_eq!(inner.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good_len);
    }

    /// A flipped byte in an acknowledged record with intact records after it: cutting there
    /// would drop acknowledged entries, so opening fails, names file and offset, and leaves the
    /// file as it was.
    #[test]
    fn corruption_before_intact_records_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut offsets = Vec::new();
        {
            let mut inner = LogInner::open(dir.path()).unwrap();
            for i in 1..=5 {
                offsets.push(inner.file_len);
                inner.write(vec![LogRecord::Entry(blank(i))]).unwrap();
            }
        }
        let path = dir.path().join("log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offsets[2] as usize + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let err = LogInner::open(dir.path()).expect_err("a corrupt middle record must refuse to open");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("byte offset {}", offsets[2])), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut");
    }

    /// The shapes a crash mid-append leaves: a partial header, a partial payload, zeros.
    #[test]
    fn every_kind_of_torn_tail_is_cut() {
        for tail in [vec![7u8, 0, 0], vec![0u8; 64], {
            let mut half = Vec::new();
            encode(&LogRecord::Entry(blank(4)), &mut half).unwrap();
            half.truncate(half.len() / 2);
            half
        }] {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut inner = LogInner::open(dir.path()).unwrap();
                inner.write((1..=3).map(|i| LogRecord::Entry(blank(i))).collect()).unwrap();
            }
            let path = dir.path().join("log");
            let good_len = std::fs::metadata(&path).unwrap().len();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).unwrap();
            let inner = LogInner::open(dir.path()).unwrap();
            assert_eq!(inner.entries.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "tail {tail:?}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        }
    }

    #[test]
    fn truncate_purge_and_compaction_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut inner = LogInner::open(dir.path()).unwrap();
            inner.write((1..=10).map(|i| LogRecord::Entry(blank(i))).collect()).unwrap();
            inner.write(vec![LogRecord::TruncateFrom(8)]).unwrap();
            inner.write(vec![LogRecord::Purge(blank(3).log_id)]).unwrap();
        }
        let mut inner = LogInner::open(dir.path()).unwrap();
        assert_eq!(inner.entries.keys().copied().collect::<Vec<_>>(), vec![4, 5, 6, 7]);
        assert_eq!(inner.last_purged.map(|l| l.index), Some(3));
        inner.compact().unwrap();
        inner.write(vec![LogRecord::Entry(blank(8))]).unwrap();
        drop(inner);
        let inner = LogInner::open(dir.path()).unwrap();
        assert_eq!(inner.entries.keys().copied().collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);
        assert_eq!(inner.last_purged.map(|l| l.index), Some(3));
    }
}
