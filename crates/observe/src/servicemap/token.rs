//! The secret the service map page requires, Jupyter-style: a random token
//! kept in a file only root reads. A browser opens `/?token=...` once and
//! keeps it as an HttpOnly cookie; the CLI sends it as a bearer token.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// The cookie the page's token is kept in.
pub const TOKEN_COOKIE: &str = "myelin-servicemap-token";

/// Random bytes in a token (hex-encoded: twice as many characters).
const TOKEN_BYTES: usize = 24;

/// The token file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading, creating or writing the file failed.
    #[error("service map token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("service map token file {path} is empty; remove it and a new token is created")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The secret a request must carry to read the map.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

impl AccessToken {
    /// The token in `path`; when the file does not exist, a new random
    /// token is written to it (mode 0600, created exclusively, so two
    /// agents sharing the file agree on one token).
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.display().to_string(),
            source,
        };
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut file) => {
                let token = Self::random().map_err(io)?;
                file.write_all(token.0.as_bytes())
                    .and_then(|()| file.write_all(b"\n"))
                    .map_err(io)?;
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read(path),
            Err(e) => Err(io(e)),
        }
    }

    /// The token in `path`, which must exist.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.display().to_string(),
            });
        }
        Ok(Self(token.to_string()))
    }

    /// A token given on the command line or in the environment.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    fn random() -> std::io::Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the token, compared in constant time so that
    /// the answer's timing does not tell how much of a guess was right.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_root_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let token = AccessToken::load_or_create(&path).expect("created");
        assert_eq!(token.as_str().len(), 2 * TOKEN_BYTES);
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(AccessToken::load_or_create(&path).expect("read"), token);
        assert!(token.matches(token.as_str()));
        assert!(!token.matches(&token.as_str()[1..]));
        assert!(!token.matches(""));
        std::fs::write(&path, "\n").expect("write");
        assert!(matches!(
            AccessToken::read(&path),
            Err(TokenError::Empty { .. })
        ));
    }
}
