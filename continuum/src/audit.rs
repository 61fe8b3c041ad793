//! The audit trail: every lease change and switchover step as one JSON line.
//!
//! Records go first to a local append-only log, written by a single writer thread and fsynced
//! before [`Audit::append`] returns (several waiting records share one fsync). When NATS is
//! configured, a publisher task ships the log to JetStream (`audit.nats_subject`), one record
//! at a time and in order, each with `Nats-Msg-Id` = the record id so JetStream drops
//! re-sends. Its position in the log (`<log>.nats-offset`) only advances after JetStream acked,
//! so a NATS outage or a restart never loses the backlog, and never blocks an append.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Error;
use crate::config::AuditConfig;
use crate::metrics::Metrics;

/// Appends waiting for the writer before `append` itself waits (backpressure, not loss).
const QUEUE_DEPTH: usize = 1024;
/// First retry delay after a NATS failure; doubles up to `audit.nats_max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How much of the log's end is read at start to find the last record; longer records are refused.
const TAIL_WINDOW: u64 = 1024 * 1024;
/// Longest audit line written (README "Limits"). Far below NATS' default 1 MiB payload limit and
/// [`TAIL_WINDOW`], so every record can be published and the log always reopens. A longer
/// entry keeps its kind, pair, epoch and actor; its detail is replaced by a marker with the
/// original size and a prefix.
pub const MAX_AUDIT_LINE: usize = 64 * 1024;
/// Records read from the log per publishing round, so a long backlog is not held in memory at once.
const PUBLISH_BATCH: usize = 512;
/// How often the publisher looks at the log even without a nudge (e.g. after a clock jump).
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// What a caller records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Dotted event name, e.g. `lease.acquired`, `switchover.step`.
    pub kind: String,
    pub pair: Option<String>,
    pub epoch: Option<u64>,
    /// Who caused it: a token name, or `continuum` for the daemon's own decisions.
    pub actor: Option<String>,
    pub detail: serde_json::Value,
}

impl AuditEntry {
    pub fn new(kind: impl Into<String>, detail: serde_json::Value) -> Self {
        Self { kind: kind.into(), pair: None, epoch: None, actor: None, detail }
    }
}

/// A record as written: the entry plus identity, order and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique id; also the JetStream `Nats-Msg-Id`.
    pub id: Uuid,
    /// Position in this daemon's log, from 1, without gaps.
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub time: SystemTime,
    /// Region of the daemon that wrote it.
    pub region: String,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

struct AppendRequest {
    entry: AuditEntry,
    done: oneshot::Sender<Result<AuditRecord, Error>>,
}

/// Handle to the audit trail. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    queue: mpsc::Sender<AppendRequest>,
}

/// The running writer and publisher; [`AuditTasks::shutdown`] stops them after the queue drained.
pub struct AuditTasks {
    writer: std::thread::JoinHandle<()>,
    publisher: Option<tokio::task::JoinHandle<()>>,
    stop_publisher: CancellationToken,
}

fn audit_io(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::Audit { message: format!("{what} {}", path.display()), source: Some(source) }
}

impl Audit {
    /// Opens (or creates) the log, repairs a torn last line left by a crash, and starts the
    /// writer and, with `nats_url`, the publisher. Needs a Tokio runtime.
    pub fn open(config: &AuditConfig, region: &str, metrics: Metrics) -> Result<(Audit, AuditTasks), Error> {
        let (file, next_seq) = open_log(&config.log)?;
        let (queue, requests) = mpsc::channel(QUEUE_DEPTH);
        let appended = Arc::new(Notify::new());
        let written = Arc::new(AtomicU64::new(next_seq - 1));
        let writer = {
            let region = region.to_string();
            let path = config.log.clone();
            let notify = Written { appended: appended.clone(), seq: written.clone() };
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || write_loop(file, path, region, next_seq, requests, notify))
                .map_err(|e| audit_io(&config.log, "start writer for", e))?
        };
        let stop_publisher = CancellationToken::new();
        let publisher = config.nats_url.as_ref().map(|url| {
            let publisher = Publisher {
                url: url.clone(),
                config: config.clone(),
                cursor_path: cursor_path(&config.log),
                appended,
                written,
                metrics,
                stop: stop_publisher.clone(),
            };
            tokio::spawn(publisher.run())
        });
        Ok((Audit { queue }, AuditTasks { writer, publisher, stop_publisher }))
    }

    /// Writes `entry` durably (fsynced) and returns the record as written. Never waits for NATS.
    pub async fn append(&self, entry: AuditEntry) -> Result<AuditRecord, Error> {
        let (done, written) = oneshot::channel();
        self.queue.send(AppendRequest { entry, done }).await.map_err(|_| Error::AuditClosed)?;
        written.await.map_err(|_| Error::AuditClosed)?
    }
}

impl AuditTasks {
    /// Waits until every queued append is written (all [`Audit`] handles must be dropped first,
    /// or this waits for them), then stops the publisher. Unpublished records stay in the log
    /// for the next start.
    pub async fn shutdown(self) {
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        self.stop_publisher.cancel();
        if let Some(publisher) = self.publisher {
            let _ = publisher.await;
        }
    }
}

fn cursor_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".nats-offset");
    log.with_file_name(name)
}

/// Opens the log for appending and finds the next sequence number. A last line without its
/// newline was never acknowledged to anyone (the fsync did not return), so it is cut off.
fn open_log(path: &Path) -> Result<(File, u64), Error> {
    let created = !path.exists();
    let mut file =
        OpenOptions::new().read(true).append(true).create(true).open(path).map_err(|e| audit_io(path, "open", e))?;
    if created && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The new file's directory entry must be durable too, or a crash can lose the whole log.
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| audit_io(dir, "sync directory", e))?;
    }
    // Only the tail matters (the torn record, the last sequence number): the log may be large.
    let len = file.metadata().map_err(|e| audit_io(path, "stat", e))?.len();
    let window_start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(window_start)).map_err(|e| audit_io(path, "seek", e))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| audit_io(path, "read", e))?;
    let too_long = || Error::Audit {
        message: format!("last record of {} is longer than {TAIL_WINDOW} bytes", path.display()),
        source: None,
    };
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if window_start == 0 => 0,
        None => return Err(too_long()),
    };
    if complete < tail.len() {
        tracing::warn!(path = %path.display(), bytes = tail.len() - complete, "cutting off a torn last audit record");
        file.set_len(window_start + complete as u64).map_err(|e| audit_io(path, "truncate", e))?;
        file.sync_all().map_err(|e| audit_io(path, "sync", e))?;
    }
    let last_seq = if complete == 0 {
        0
    } else {
        let body = &tail[..complete - 1];
        let line_start = match body.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if window_start == 0 => 0,
            None => return Err(too_long()),
        };
        serde_json::from_slice::<AuditRecord>(&body[line_start..]).map(|r| r.seq).map_err(|e| Error::Audit {
            message: format!("last record of {} is not an audit record: {e}", path.display()),
            source: None,
        })?
    };
    file.seek(SeekFrom::End(0)).map_err(|e| audit_io(path, "seek", e))?;
    Ok((file, last_seq + 1))
}

/// What an over-long entry's detail becomes: the original size and a bounded prefix of it.
fn truncated_detail(detail: &serde_json::Value, line_bytes: usize) -> serde_json::Value {
    let text = detail.to_string();
    // JSON escaping can grow the prefix up to 6-fold (`\u0000`): an eighth stays under the limit.
    let mut end = text.len().min(MAX_AUDIT_LINE / 8);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    serde_json::json!({ "truncated": true, "line_bytes": line_bytes, "detail_prefix": &text[..end] })
}

/// How the writer tells the publisher about new durable records.
struct Written {
    appended: Arc<Notify>,
    seq: Arc<AtomicU64>,
}

fn write_loop(
    mut file: File,
    path: PathBuf,
    region: String,
    mut next_seq: u64,
    mut requests: mpsc::Receiver<AppendRequest>,
    written: Written,
) {
    // After a failed write or fsync the file's state is unknown (fsyncgate): refuse everything
    // after it rather than append behind a possibly lost record.
    let mut failed: Option<String> = None;
    while let Some(first) = requests.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = requests.try_recv() {
            batch.push(more);
        }
        if let Some(reason) = &failed {
            for request in batch {
                let _ = request.done.send(Err(Error::Audit { message: reason.clone(), source: None }));
            }
            continue;
        }
        let mut text = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        for request in &batch {
            let mut record = AuditRecord {
                id: Uuid::new_v4(),
                seq: next_seq + records.len() as u64,
                time: SystemTime::now(),
                region: region.clone(),
                entry: request.entry.clone(),
            };
            let mut line = serde_json::to_vec(&record).expect("an audit record always serializes");
            if line.len() > MAX_AUDIT_LINE {
                record.entry.detail = truncated_detail(&record.entry.detail, line.len());
                line = serde_json::to_vec(&record).expect("an audit record always serializes");
            }
            text.extend_from_slice(&line);
            text.push(b'\n');
            records.push(record);
        }
        match file.write_all(&text).and_then(|()| file.sync_data()) {
            Ok(()) => {
                next_seq += records.len() as u64;
                written.seq.store(next_seq - 1, Ordering::Release);
                for (request, record) in batch.into_iter().zip(records) {
                    let _ = request.done.send(Ok(record));
                }
                written.appended.notify_one();
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "audit log write failed; refusing further records");
                let reason = format!("audit log {} failed earlier ({e}); restart the daemon", path.display());
                for request in batch {
                    let _ = request.done.send(Err(audit_io(
                        &path,
                        "append to",
                        std::io::Error::new(e.kind(), e.to_string()),
                    )));
                }
                failed = Some(reason);
            }
        }
    }
}

/// Ships the local log to JetStream from a durable position.
struct Publisher {
    url: String,
    config: AuditConfig,
    cursor_path: PathBuf,
    appended: Arc<Notify>,
    /// Sequence number of the last record the writer made durable.
    written: Arc<AtomicU64>,
    metrics: Metrics,
    stop: CancellationToken,
}

impl Publisher {
    async fn run(self) {
        let mut offset = read_cursor(&self.cursor_path);
        let mut backoff = FIRST_BACKOFF;
        let mut jetstream: Option<async_nats::jetstream::Context> = None;
        // Warn once per outage, not on every retry; say when it is over.
        let mut outage = false;
        while !self.stop.is_cancelled() {
            let pending = match pending_records(&self.config.log, &mut offset) {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot read the audit log for publishing");
                    self.pause(&mut backoff).await;
                    continue;
                }
            };
            let backlog = |acked_seq: u64| self.written.load(Ordering::Acquire).saturating_sub(acked_seq);
            match pending.first() {
                Some(first) => self.metrics.set_audit_backlog(backlog(first.seq.saturating_sub(1))),
                None => self.metrics.set_audit_backlog(0),
            }
            if pending.is_empty() {
                tokio::select! {
                    () = self.appended.notified() => {}
                    () = tokio::time::sleep(IDLE_RECHECK) => {}
                    () = self.stop.cancelled() => {}
                }
                continue;
            }
            let context = match &jetstream {
                Some(context) => context.clone(),
                None => match self.connect().await {
                    Ok(context) => {
                        jetstream = Some(context.clone());
                        context
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut outage, true) {
                            tracing::warn!(url = %self.url, error = %e, "NATS unavailable; audit records wait in the local log");
                        } else {
                            tracing::debug!(url = %self.url, error = %e, "NATS still unavailable");
                        }
                        self.pause(&mut backoff).await;
                        continue;
                    }
                },
            };
            for record in pending {
                let seq = record.seq;
                match self.publish(&context, record.id, record.line).await {
                    Ok(()) => {
                        offset = record.end;
                        if let Err(e) = write_cursor(&self.cursor_path, offset) {
                            // Only costs re-sends after a restart, which JetStream deduplicates.
                            tracing::warn!(path = %self.cursor_path.display(), error = %e, "cannot save the audit publish position");
                        }
                        self.metrics.set_audit_backlog(backlog(seq));
                        self.metrics.count_audit_published();
                        backoff = FIRST_BACKOFF;
                        if std::mem::replace(&mut outage, false) {
                            tracing::info!(url = %self.url, "NATS reachable again; publishing the audit backlog");
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut outage, true) {
                            tracing::warn!(error = %e, backlog = backlog(seq.saturating_sub(1)), "publishing an audit record to NATS failed; will retry");
                        }
                        jetstream = None;
                        self.pause(&mut backoff).await;
                        break;
                    }
                }
                if self.stop.is_cancelled() {
                    break;
                }
            }
        }
    }

    async fn pause(&self, backoff: &mut Duration) {
        tokio::select! {
            () = tokio::time::sleep(*backoff) => {}
            () = self.stop.cancelled() => {}
        }
        *backoff = (*backoff * 2).min(self.config.nats_max_backoff.max(FIRST_BACKOFF));
    }

    async fn connect(&self) -> Result<async_nats::jetstream::Context, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(self.config.nats_timeout)
            .connect(self.url.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut context = async_nats::jetstream::new(client);
        context.set_timeout(self.config.nats_timeout);
        let stream = async_nats::jetstream::stream::Config {
            name: self.config.nats_stream.clone(),
            subjects: vec![self.config.nats_subject.clone()],
            ..Default::default()
        };
        tokio::time::timeout(self.config.nats_timeout, context.get_or_create_stream(stream))
            .await
            .map_err(|_| "creating the stream timed out".to_string())?
            .map_err(|e| format!("stream {}: {e}", self.config.nats_stream))?;
        Ok(context)
    }

    async fn publish(&self, context: &async_nats::jetstream::Context, id: String, line: String) -> Result<(), String> {
        let message = async_nats::jetstream::message::PublishMessage::build().payload(line.into()).message_id(id);
        let send = async {
            let ack =
                context.send_publish(self.config.nats_subject.clone(), message).await.map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.config.nats_timeout, send)
            .await
            .map_err(|_| "no acknowledgement in time".to_string())??;
        Ok(())
    }
}

fn read_cursor(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

fn write_cursor(path: &Path, offset: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{offset}")?;
    file.sync_data()?;
    std::fs::rename(tmp, path)
}

/// A record in the log that JetStream has not acknowledged yet.
struct Pending {
    /// Log offset just after the record: the publish position once it is acknowledged.
    end: u64,
    id: String,
    seq: u64,
    line: String,
}

/// Up to [`PUBLISH_BATCH`] complete records after `offset`.
fn pending_records(log: &Path, offset: &mut u64) -> Result<Vec<Pending>, Error> {
    let mut file = File::open(log).map_err(|e| audit_io(log, "open", e))?;
    let len = file.metadata().map_err(|e| audit_io(log, "stat", e))?.len();
    if *offset > len {
        tracing::warn!(path = %log.display(), offset = *offset, len, "audit log is shorter than the publish position; starting over");
        *offset = 0;
    }
    file.seek(SeekFrom::Start(*offset)).map_err(|e| audit_io(log, "seek", e))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut position = *offset;
    while out.len() < PUBLISH_BATCH {
        let mut line = String::new();
        let read = reader.read_line(&mut line).map_err(|e| audit_io(log, "read", e))?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        position += read as u64;
        line.pop();
        #[derive(Deserialize)]
        struct Identity {
            id: Uuid,
            seq: u64,
        }
        let identity = serde_json::from_str::<Identity>(&line).map_err(|e| Error::Audit {
            message: format!("record before byte {position} of {}: {e}", log.display()),
            source: None,
        })?;
        out.push(Pending { end: position, id: identity.id.to_string(), seq: identity.seq, line });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_are_durable_numbered_and_survive_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let config = AuditConfig::local(&log);
        let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
        let first = audit.append(AuditEntry::new("lease.acquired", serde_json::json!({"epoch": 1}))).await.unwrap();
        let second = audit.append(AuditEntry::new("lease.renewed", serde_json::json!({}))).await.unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        drop(audit);
        tasks.shutdown().await;

        // A crash in the middle of a write leaves half a line behind.
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"{\"id\":\"half").unwrap();
        let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
        let third = audit.append(AuditEntry::new("switchover.step", serde_json::json!({}))).await.unwrap();
        assert_eq!(third.seq, 3);
        drop(audit);
        tasks.shutdown().await;

        let text = std::fs::read_to_string(&log).unwrap();
        let records: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records, vec![first, second, third]);
    }

    /// A 2 MiB detail (an error text, a reason from an old client) is bounded on write: the log
    /// still reopens and the record keeps what identifies it.
    #[tokio::test]
    async fn an_oversized_entry_is_written_bounded_and_the_log_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let config = AuditConfig::local(&log);
        let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).unwrap();
        let mut entry = AuditEntry::new("switchover.requested", serde_json::json!({ "reason": "x".repeat(2 << 20) }));
        entry.pair = Some("app".into());
        let record = audit.append(entry).await.unwrap();
        assert_eq!(record.entry.detail["truncated"], true);
        assert_eq!(record.entry.pair.as_deref(), Some("app"));
        drop(audit);
        tasks.shutdown().await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.lines().all(|l| l.len() <= MAX_AUDIT_LINE), "a line over the limit");
        let (audit, tasks) = Audit::open(&config, "a", Metrics::new()).expect("reopens after the big entry");
        assert_eq!(audit.append(AuditEntry::new("x", serde_json::json!({}))).await.unwrap().seq, 2);
        drop(audit);
        tasks.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_gapless_sequence_numbers_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let (audit, tasks) = Audit::open(&AuditConfig::local(&log), "a", Metrics::new()).unwrap();
        let mut handles = Vec::new();
        for task in 0..8 {
            let audit = audit.clone();
            handles.push(tokio::spawn(async move {
                let mut written = Vec::new();
                for n in 0..50 {
                    written.push(
                        audit.append(AuditEntry::new("t", serde_json::json!({"task": task, "n": n}))).await.unwrap(),
                    );
                }
                written
            }));
        }
        let mut returned = Vec::new();
        for handle in handles {
            returned.extend(handle.await.unwrap());
        }
        drop(audit);
        tasks.shutdown().await;
        let in_file: Vec<AuditRecord> =
            std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(in_file.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=400).collect::<Vec<u64>>());
        returned.sort_by_key(|r| r.seq);
        assert_eq!(returned, in_file, "what append returned is exactly what is on disk");
    }
}
