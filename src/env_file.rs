//! `--env-file` / `env_file=`: credentials for a mount started by fstab or a unit, which must
//! never carry them on a command line (`ps` shows it) or in /etc/fstab (world-readable).
//!
//! The file holds `KEY=VALUE` lines, as systemd's EnvironmentFile and Docker's `--env-file`
//! do: blank lines and `#` comments are skipped, an `export ` prefix and one pair of matching
//! quotes around the value are allowed. It must be a regular file owned by root or by the user
//! mounting, and neither readable nor writable by anyone else: a secret others can read is a
//! leak, one others can write lets them point the mount at their own bucket.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("cannot read env file {0}: {1}")]
    Read(PathBuf, io::Error),
    #[error("env file {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("env file {path} has mode {mode:04o}: others may read or change it; chmod 600 {path}")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("env file {path} is owned by uid {owner}; it must be owned by root or by uid {user}")]
    Owner { path: PathBuf, owner: u32, user: u32 },
    #[error("env file {path}, line {line}: expected KEY=VALUE")]
    Syntax { path: PathBuf, line: usize },
}

/// The variables of the file at `path`, in order, after its checks.
pub fn load(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let metadata = std::fs::metadata(path).map_err(|e| EnvFileError::Read(path.to_owned(), e))?;
    if !metadata.is_file() {
        return Err(EnvFileError::NotAFile(path.to_owned()));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(EnvFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid cannot fail.
    let user = unsafe { libc::geteuid() };
    if metadata.uid() != 0 && metadata.uid() != user {
        return Err(EnvFileError::Owner {
            path: path.to_owned(),
            owner: metadata.uid(),
            user,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| EnvFileError::Read(path.to_owned(), e))?;
    parse(&text).map_err(|line| EnvFileError::Syntax {
        path: path.to_owned(),
        line,
    })
}

/// The variables of `text`; `Err(line number)` for the first line that is not one.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut variables = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, value) = line.split_once('=').ok_or(index + 1)?;
        let key = key.trim_end();
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(index + 1);
        }
        variables.push((key.to_owned(), unquote(value.trim()).to_owned()));
    }
    Ok(variables)
}

/// `"value"` or `'value'` without its quotes; anything else as it is.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|v| v.strip_suffix(quote)) {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_comments_quotes_and_export() {
        let text = "# credentials\n\nAWS_ACCESS_KEY_ID=AKIA1\nexport AWS_SECRET_ACCESS_KEY = \"s e=c\"\n\
                    AWS_PROFILE='p'\nEMPTY=\n";
        assert_eq!(
            parse(text),
            Ok(vec![
                ("AWS_ACCESS_KEY_ID".into(), "AKIA1".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "s e=c".into()),
                ("AWS_PROFILE".into(), "p".into()),
                ("EMPTY".into(), "".into()),
            ])
        );
        assert_eq!(parse("A=1\nnot a line\n"), Err(2));
        assert_eq!(parse("=x"), Err(1));
        assert_eq!(parse("1A=x"), Err(1));
        assert_eq!(parse("A B=x"), Err(1));
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.env");
        std::fs::write(&path, "AWS_ACCESS_KEY_ID=x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load(&path).unwrap_err();
        assert!(
            matches!(error, EnvFileError::Exposed { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            vec![("AWS_ACCESS_KEY_ID".into(), "x".into())]
        );
        assert!(matches!(load(dir.path()), Err(EnvFileError::NotAFile(_))));
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(EnvFileError::Read(..))
        ));
    }
}
