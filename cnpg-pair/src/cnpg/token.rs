//! CNPG's demotion/promotion token: base64 (standard alphabet) of a JSON object with fields of
//! the old primary's `pg_controldata` output, all strings (`PgControldataTokenContent` in CNPG's
//! `pkg/utils/parser.go`). The driver decodes it to check it against the local instance before it
//! sends it, and to know what the target must replay.

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::lsn::{Lsn, WalPosition};

/// The fields of a token this driver relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemotionToken {
    pub system_id: u64,
    /// `Latest checkpoint's TimeLineID` of the old primary's shutdown checkpoint.
    pub timeline: u32,
    /// `Latest checkpoint's REDO location`: for a shutdown checkpoint, where its record starts
    /// (nothing is written between the REDO point and a shutdown checkpoint).
    pub redo: Lsn,
    pub redo_wal_file: String,
    pub operator_version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Content {
    #[serde(rename = "latestCheckpointTimelineID", default)]
    latest_checkpoint_timeline_id: String,
    #[serde(default)]
    redo_wal_file: String,
    #[serde(default)]
    database_system_identifier: String,
    #[serde(rename = "latestCheckpointREDOLocation", default)]
    latest_checkpoint_redo_location: String,
    #[serde(default)]
    time_of_latest_checkpoint: String,
    #[serde(default)]
    operator_version: String,
}

impl DemotionToken {
    /// Decodes a token; every field CNPG's `IsValid` requires must be present.
    pub fn decode(node: &str, token: &str) -> Result<DemotionToken> {
        let bad = |detail: String| Error::BadToken { node: node.to_string(), detail };
        let json = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|e| bad(format!("not base64: {e}")))?;
        let c: Content = serde_json::from_slice(&json).map_err(|e| bad(format!("not CNPG's JSON: {e}")))?;
        for (field, value) in [
            ("latestCheckpointTimelineID", &c.latest_checkpoint_timeline_id),
            ("redoWalFile", &c.redo_wal_file),
            ("databaseSystemIdentifier", &c.database_system_identifier),
            ("latestCheckpointREDOLocation", &c.latest_checkpoint_redo_location),
            ("timeOfLatestCheckpoint", &c.time_of_latest_checkpoint),
            ("operatorVersion", &c.operator_version),
        ] {
            if value.is_empty() {
                return Err(bad(format!("{field} is empty")));
            }
        }
        Ok(DemotionToken {
            system_id: c.database_system_identifier.parse().map_err(|e| bad(format!("system identifier: {e}")))?,
            timeline: c.latest_checkpoint_timeline_id.parse().map_err(|e| bad(format!("timeline: {e}")))?,
            redo: c.latest_checkpoint_redo_location.parse().map_err(|e| bad(format!("REDO location: {e}")))?,
            redo_wal_file: c.redo_wal_file,
            operator_version: c.operator_version,
        })
    }

    /// What the promotion target must have replayed: one byte past the start of the shutdown
    /// checkpoint record, i.e. that record itself (a standby's replay position is the end of the
    /// last record it applied). Everything the old primary acknowledged lies before it.
    pub fn must_replay(&self) -> WalPosition {
        WalPosition { system_id: self.system_id, timeline: self.timeline, lsn: Lsn(self.redo.0 + 1) }
    }
}

/// The first characters of a token, for logs and errors (tokens are not secrets, but long).
pub(crate) fn prefix(token: &str) -> String {
    token.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(json: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    const GOOD: &str = r#"{"latestCheckpointTimelineID":"3","redoWalFile":"000000030000000000000005",
        "databaseSystemIdentifier":"7300000000000000001","latestCheckpointREDOLocation":"0/5000028",
        "timeOfLatestCheckpoint":"Wed 02 Dec 2026 16:00:00 UTC","operatorVersion":"1.27.0"}"#;

    #[test]
    fn decodes_cnpg_format() {
        let token = DemotionToken::decode("b", &encode(GOOD)).unwrap();
        assert_eq!(token.system_id, 7_300_000_000_000_000_001);
        assert_eq!(token.timeline, 3);
        assert_eq!(token.redo, Lsn(0x500_0028));
        assert_eq!(token.must_replay().lsn, Lsn(0x500_0029));
        assert_eq!(token.operator_version, "1.27.0");
    }

    #[test]
    fn rejects_what_cnpg_rejects() {
        let missing = GOOD.replace(r#""operatorVersion":"1.27.0""#, r#""operatorVersion":"""#);
        let cases = [
            ("base64".to_string(), "%%%".to_string()),
            ("JSON".to_string(), encode("[1]")),
            ("operatorVersion".to_string(), encode(&missing)),
            ("timeline".to_string(), encode(&GOOD.replace(r#"TimelineID":"3""#, r#"TimelineID":"x""#))),
        ];
        for (expected, token) in cases {
            match DemotionToken::decode("b", &token) {
                Err(Error::BadToken { detail, .. }) => assert!(detail.contains(&expected), "{expected}: {detail}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
}
