//! Bearer tokens with roles, in the daemon's tokens-file format (`continuum/src/auth.rs`):
//!
//! ```toml
//! [[tokens]]
//! name = "region-a"     # who: shows up in PDM's logs; the token never does
//! role = "commit"       # commit | admin
//! sha256 = "9f86d0…"    # hex SHA-256 of the token (the file then holds no secret)
//!
//! [[tokens]]
//! name = "ops"
//! role = "admin"
//! token = "a-long-random-string"   # or the token itself (at least 16 characters)
//! ```
//!
//! `commit` (the daemons) may commit records and read zones, records and its own operations;
//! `admin` may also create and delete zones, write delegations and reset epochs.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::PdmError;

/// Shortest plain token accepted from the file: anything shorter is guessable.
const MIN_TOKEN_LEN: usize = 16;

/// What a token may do. Ordered: `admin` may do everything `commit` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Commit,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Commit => "commit",
            Role::Admin => "admin",
        })
    }
}

/// The authenticated caller of a request (a request extension once the token gate let it in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: Option<String>,
    token: Option<String>,
}

/// The tokens PDM accepts.
pub struct TokenStore {
    known: Vec<(Caller, [u8; 32])>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.known.iter().map(|(c, _)| c.name.as_str()).collect();
        f.debug_struct("TokenStore").field("names", &names).finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex SHA-256 of `token`: what goes into a tokens file's `sha256`.
pub fn token_sha256_hex(token: &str) -> String {
    sha256(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Refuses a secret file that group or others may read: such a file leaks its tokens to every
/// local account (refused rather than warned about, so a deployment cannot drift into it).
pub(crate) fn check_private(path: &Path, key: &str) -> Result<(), PdmError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| PdmError::Config(format!("{key} {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(PdmError::Config(format!(
            "{key} {} is accessible by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

impl TokenStore {
    /// Loads a tokens file (which must not be group/other accessible). Errors name the file
    /// and the entry, never a secret.
    pub fn load(path: &Path) -> Result<Self, PdmError> {
        check_private(path, "tokens_file")?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| PdmError::Config(format!("tokens_file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| PdmError::Config(format!("tokens_file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
        if file.tokens.is_empty() {
            return Err("holds no [[tokens]] entry".into());
        }
        let mut known = Vec::with_capacity(file.tokens.len());
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let key = format!("tokens[{i}] ({:?})", entry.name);
            if entry.name.trim().is_empty() {
                return Err(format!("tokens[{i}].name must not be empty"));
            }
            if known.iter().any(|(c, _): &(Caller, _)| c.name == entry.name) {
                return Err(format!("{key}: name is used twice"));
            }
            let digest = match (entry.sha256, entry.token) {
                (Some(hex), None) => {
                    parse_hex_digest(&hex).ok_or_else(|| format!("{key}: sha256 must be 64 hex digits"))?
                }
                (None, Some(token)) if token.len() >= MIN_TOKEN_LEN => sha256(token.as_bytes()),
                (None, Some(_)) => return Err(format!("{key}: token must be at least {MIN_TOKEN_LEN} characters")),
                _ => return Err(format!("{key}: give exactly one of sha256 or token")),
            };
            known.push((Caller { name: entry.name, role: entry.role }, digest));
        }
        Ok(Self { known })
    }

    /// The caller a token belongs to. Every entry is compared without an early exit, so the
    /// time taken says nothing about which entry (or which prefix) matched.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for (caller, digest) in &self.known {
            let diff = digest.iter().zip(&presented).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_by_hash_or_plain() {
        let hash = token_sha256_hex("admin-token-0123456789");
        let store = TokenStore::parse(&format!(
            "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{hash}\"\n\
             [[tokens]]\nname = \"a\"\nrole = \"commit\"\ntoken = \"commit-token-0123456789\"\n"
        ))
        .unwrap();
        assert_eq!(store.authenticate("admin-token-0123456789").unwrap().role, Role::Admin);
        assert_eq!(
            store.authenticate("commit-token-0123456789").unwrap(),
            Caller { name: "a".into(), role: Role::Commit }
        );
        assert_eq!(store.authenticate("admin-token-012345678"), None);
        assert_eq!(store.authenticate(""), None);
        assert!(Role::Commit < Role::Admin);
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_secrets() {
        let cases = [
            ("[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"short-secret\"\n", "at least 16"),
            ("[[tokens]]\nname = \"x\"\nrole = \"owner\"\ntoken = \"0123456789abcdef\"\n", "owner"),
            ("[[tokens]]\nname = \"x\"\nrole = \"admin\"\n", "exactly one"),
            ("", "no [[tokens]]"),
            (
                "[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"0123456789abcdef\"\n\
                 [[tokens]]\nname = \"x\"\nrole = \"commit\"\ntoken = \"0123456789abcdeg\"\n",
                "twice",
            ),
        ];
        for (text, expected) in cases {
            let err = TokenStore::parse(text).err().unwrap();
            assert!(err.contains(expected), "{err:?} does not mention {expected:?}");
            assert!(!err.contains("short-secret"), "{err}");
        }
    }

    #[test]
    fn readable_token_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "[[tokens]]\nname = \"x\"\nrole = \"admin\"\ntoken = \"0123456789abcdef\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = TokenStore::load(&path).unwrap_err().to_string();
        assert!(err.contains("group or others") && err.contains("640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(TokenStore::load(&path).is_ok());
    }
}
