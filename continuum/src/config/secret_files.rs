//! Files that hold secrets (private keys, tokens) must not be open to every local user. A file
//! that others may read or any non-owner may write is refused at start; one its group may read
//! gets a warning only, because Kubernetes mounts Secrets group-readable for `fsGroup` (README
//! "Security model").

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::Config;
use crate::Error;

impl Config {
    /// Checks every secret file the configuration names. Called before anything starts.
    pub fn check_secret_files(&self) -> Result<(), Error> {
        let mut files: Vec<(String, &Path)> = vec![("tls.key".into(), self.tls.key.as_path())];
        if let Some(api) = &self.api {
            files.push(("api.tokens_file".into(), api.tokens_file.as_path()));
            if let Some(key) = &api.tls_key {
                files.push(("api.tls_key".into(), key.as_path()));
            }
        }
        if let Some(pdm) = &self.pdm {
            files.push(("pdm.token_file".into(), pdm.token_file.as_path()));
        }
        for (i, pair) in self.pairs.iter().enumerate() {
            files.extend(pair.postgres.secret_files().map(|(key, path)| (format!("pairs[{i}].postgres.{key}"), path)));
        }
        files.into_iter().try_for_each(|(key, path)| check(&key, path))
    }
}

fn check(key: &str, path: &Path) -> Result<(), Error> {
    let mode = std::fs::metadata(path)
        .map_err(|e| Error::Config { key: key.into(), message: format!("{}: {e}", path.display()) })?
        .permissions()
        .mode();
    if mode & 0o027 != 0 {
        return Err(Error::Config {
            key: key.into(),
            message: format!(
                "{} has mode {:03o}: a secret must not be readable by others or writable by its group \
                 (chmod 600, or 640 for a group that needs it)",
                path.display(),
                mode & 0o777
            ),
        });
    }
    if mode & 0o040 != 0 {
        tracing::warn!(key, path = %path.display(), mode = format!("{:03o}", mode & 0o777), "secret file is group-readable");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_or_group_read_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "secret").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, true), (0o644, false), (0o660, false), (0o606, false)]
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = check("tls.key", &path);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("tls.key") && e.to_string().contains(&format!("{mode:o}")), "{e}");
            }
        }
    }
}
