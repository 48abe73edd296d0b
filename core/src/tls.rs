//! TLS material of a client connection (to RabbitMQ or Redis): a CA to trust instead of the
//! system's roots, and a certificate of the client's own for servers that require one (mutual
//! TLS). Both are PEM files, as Kubernetes Secrets of type `kubernetes.io/tls` and cert-manager
//! mount them.

use std::path::{Path, PathBuf};

/// A TLS file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading {key} `{}`: {source}", .path.display())]
pub struct TlsFileError {
    /// The configuration key that names the file (`bus.tls_ca_file`, ...).
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// Why it could not be read.
    #[source]
    pub source: std::io::Error,
}

/// A client certificate with its private key, both PEM.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate (and any intermediates), PEM.
    pub cert_pem: Vec<u8>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"***")
            .finish()
    }
}

/// What a TLS client trusts and presents; the default trusts the system's roots and presents
/// no certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM certificate(s) of the CA that signed the server's certificate, trusted instead of
    /// the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The client's own certificate, for servers that verify clients.
    pub identity: Option<ClientIdentity>,
}

/// The configured paths of one connection's TLS files.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// The section the keys are in (`bus`, `store`), for errors.
    pub section: &'a str,
    /// `tls_ca_file`.
    pub ca_file: Option<&'a Path>,
    /// `tls_cert_file`.
    pub cert_file: Option<&'a Path>,
    /// `tls_key_file`.
    pub key_file: Option<&'a Path>,
}

impl TlsFiles<'_> {
    /// Whether any file is configured.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Reads the configured files. A certificate without its key (or the reverse) is refused by
    /// configuration validation before this runs; here either alone is ignored.
    pub fn read(&self) -> Result<ClientTls, TlsFileError> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsFileError {
                key: format!("{}.{name}", self.section),
                path: path.to_owned(),
                source,
            })
        };
        let ca_pem = self.ca_file.map(|p| read("tls_ca_file", p)).transpose()?;
        let identity = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert_pem: read("tls_cert_file", cert)?,
                key_pem: read("tls_key_file", key)?,
            }),
            _ => None,
        };
        Ok(ClientTls { ca_pem, identity })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_is_configured_and_names_the_key_of_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("sy-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("c.pem"), dir.join("c.key"));
        std::fs::write(&ca, "CA").unwrap();
        std::fs::write(&cert, "CERT").unwrap();
        std::fs::write(&key, "KEY").unwrap();
        let files = TlsFiles {
            section: "bus",
            ca_file: Some(&ca),
            cert_file: Some(&cert),
            key_file: Some(&key),
        };
        let tls = files.read().unwrap();
        assert_eq!(tls.ca_pem.as_deref(), Some(&b"CA"[..]));
        let identity = tls.identity.unwrap();
        assert_eq!(identity.cert_pem, b"CERT");
        assert_eq!(identity.key_pem, b"KEY");
        assert!(
            !format!("{identity:?}").contains("KEY"),
            "the key must not be printed"
        );

        let missing = dir.join("absent.key");
        let err = TlsFiles {
            key_file: Some(&missing),
            ..files
        }
        .read()
        .unwrap_err();
        assert_eq!(err.key, "bus.tls_key_file");
        assert!(err.to_string().contains("absent.key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
