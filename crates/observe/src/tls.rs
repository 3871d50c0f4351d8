//! TLS for the observer API over TCP: the server side (a PEM certificate and
//! key, and CA certificates to require client certificates from, as Hubble's
//! `--hubble-tls-cert-file`, `--hubble-tls-key-file` and
//! `--hubble-tls-client-ca-files`) and the client side used by `observe`
//! (hubble's `--tls*` flags). PEM files are checked here, so that an error
//! names the file that could not be used.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        /// What the file should hold ("certificate", "private key", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but holds no usable PEM item of the expected kind.
    #[error("the TLS {what} {} is not usable: {reason}", path.display())]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it is not usable.
        reason: String,
    },
    /// A client certificate was given without its key, or the other way round.
    #[error("a TLS client certificate needs both --tls-client-cert-file and --tls-client-key-file")]
    IncompleteIdentity,
}

/// TLS settings of the observer's TCP listener. The unix socket stays
/// plaintext (its file permissions guard it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain of the server, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the server certificate.
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to. Empty:
    /// no client certificate is asked for; otherwise every client must
    /// present one (mutual TLS, as Hubble does with client CA files).
    pub client_ca_files: Vec<PathBuf>,
}

impl ServerTls {
    /// Reads and checks the files and builds tonic's server configuration.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = read_identity(&self.cert_file, &self.key_file)?;
        let mut config = ServerTlsConfig::new().identity(identity);
        if !self.client_ca_files.is_empty() {
            config = config.client_ca_root(read_ca_bundle(&self.client_ca_files)?);
        }
        Ok(config)
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        !self.client_ca_files.is_empty()
    }
}

/// TLS settings of a client of the observer API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates to verify the server with; empty: the system's roots.
    pub ca_files: Vec<PathBuf>,
    /// The client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name to verify the server certificate against, when it is not
    /// the host of the address.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads and checks the files and builds tonic's client configuration.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut config = ClientTlsConfig::new();
        config = if self.ca_files.is_empty() {
            config.with_native_roots()
        } else {
            config.ca_certificate(read_ca_bundle(&self.ca_files)?)
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => config = config.identity(read_identity(cert, key)?),
            (None, None) => {}
            _ => return Err(TlsError::IncompleteIdentity),
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The file's bytes, after checking that it holds at least one certificate
/// and that every certificate in it parses.
fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = read(path, what)?;
    let pem_error = |reason: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let mut count = 0usize;
    for item in CertificateDer::pem_slice_iter(&pem) {
        item.map_err(|e| pem_error(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(pem_error("no PEM CERTIFICATE block in it".to_string()));
    }
    Ok(pem)
}

fn read_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let cert_pem = read_certificates(cert, "certificate")?;
    let what = "private key";
    let key_pem = read(key, what)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what,
        path: key.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM PRIVATE KEY block in it".to_string()
            }
            other => other.to_string(),
        },
    })?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// The CA files concatenated into one PEM bundle.
fn read_ca_bundle(files: &[PathBuf]) -> Result<Certificate, TlsError> {
    let mut bundle = Vec::new();
    for file in files {
        bundle.extend(read_certificates(file, "CA certificate")?);
        bundle.push(b'\n');
    }
    Ok(Certificate::from_pem(bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let tls = ServerTls {
            cert_file: missing.clone(),
            key_file: missing.clone(),
            client_ca_files: Vec::new(),
        };
        let message = tls.load().expect_err("missing file").to_string();
        assert!(
            message.contains("certificate") && message.contains(&missing.display().to_string()),
            "{message}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let tls = ServerTls {
            cert_file: garbage.clone(),
            ..tls
        };
        let message = tls.load().expect_err("no PEM").to_string();
        assert!(
            message.contains(&garbage.display().to_string()) && message.contains("no PEM"),
            "{message}"
        );

        let client = ClientTls {
            cert_file: Some(garbage),
            ..ClientTls::default()
        };
        assert!(matches!(client.load(), Err(TlsError::IncompleteIdentity)));
    }
}
