//! Client authentication by token.
//!
//! With `STREAM_MANAGER_AUTHENTICATE_CLIENT=true` (the default) a client's
//! `authToken` must equal one of the tokens in the token file (one per line,
//! blank lines and `#` comments ignored). The genuine server asks Greengrass
//! over IPC instead; weir reads a file that packaging fills. If no file is
//! configured, weir creates `<store root>/auth_token` with a random token
//! (mode 0600) so a local program can export
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN` from it. The file is read again when a
//! token does not match, so tokens can be added without a restart.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the token file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} holds no token")]
    Empty(PathBuf),
    #[error("no random source: {0}")]
    Random(String),
}

pub enum Authenticator {
    /// Any local process may connect.
    Disabled,
    Tokens {
        path: PathBuf,
        tokens: RwLock<Vec<String>>,
    },
}

impl Authenticator {
    /// Loads the token file, creating it with a fresh token first when it
    /// is the default one and does not exist yet.
    pub fn from_file(path: PathBuf, create_if_missing: bool) -> Result<Self, AuthError> {
        if create_if_missing && !path.exists() {
            create_token_file(&path)?;
            tracing::info!(path = %path.display(), "created an authentication token file");
        }
        let tokens = read_tokens(&path)?;
        Ok(Authenticator::Tokens {
            path,
            tokens: RwLock::new(tokens),
        })
    }

    pub fn token_file(&self) -> Option<&Path> {
        match self {
            Authenticator::Disabled => None,
            Authenticator::Tokens { path, .. } => Some(path),
        }
    }

    /// Whether a client presenting `token` may connect.
    pub fn admits(&self, token: Option<&str>) -> bool {
        let Authenticator::Tokens { path, tokens } = self else {
            return true;
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return false;
        };
        let known = |tokens: &[String]| {
            tokens
                .iter()
                .fold(false, |hit, t| hit | constant_time_eq(t, token))
        };
        if known(&tokens.read().expect("token lock")) {
            return true;
        }
        match read_tokens(path) {
            Ok(fresh) => {
                let hit = known(&fresh);
                *tokens.write().expect("token lock") = fresh;
                hit
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the tokens read before");
                false
            }
        }
    }
}

/// Compares without an early exit, so a local peer cannot time its way to a
/// token byte by byte.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn read_tokens(path: &Path) -> Result<Vec<String>, AuthError> {
    let text = fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(AuthError::Empty(path.to_owned()));
    }
    Ok(tokens)
}

fn create_token_file(path: &Path) -> Result<(), AuthError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| AuthError::Random(e.to_string()))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let create = |source| AuthError::Create {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(create)?;
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(create)?;
    file.sync_all().map_err(create)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_admits_only_itself_and_new_lines_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        let auth = Authenticator::from_file(path.clone(), true).unwrap();
        let token = fs::read_to_string(&path).unwrap().trim().to_owned();
        assert_eq!(token.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(auth.admits(Some(&token)));
        assert!(!auth.admits(Some("nope")));
        assert!(!auth.admits(Some("")));
        assert!(!auth.admits(None));
        fs::write(&path, format!("{token}\n# second client\nlater-token\n")).unwrap();
        assert!(auth.admits(Some("later-token")));
        assert!(Authenticator::Disabled.admits(None));
    }
}
