//! The lab's observer PKI, made fresh by every `lab up` under its run
//! directory and readable by root only: a CA, the agents' server
//! certificate, and the client certificate the observer's TCP port requires
//! (Hubble requires one by default too). The service map token is created
//! by the first agent that starts, in the file the lab names.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::names::LabNames;

/// The names the agents' server certificate holds: the forwarded port on
/// the host's loopback, and the name Cilium gives a node's Hubble server.
const SERVER_NAMES: [&str; 4] = [
    "localhost",
    "127.0.0.1",
    "::1",
    "*.default.hubble-grpc.cilium.io",
];

/// Writes the lab's observer PKI.
pub fn create_pki(names: &LabNames) -> anyhow::Result<()> {
    let (lab, files) = (&names.lab, &names.observer_tls());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&files.dir)
        .with_context(|| format!("creating {}", files.dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("myelin lab {lab} CA"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    write_private(&files.ca, &ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let issue = |sans: &[&str], purpose, cert: &Path, key: &Path| -> anyhow::Result<()> {
        let key_pair = KeyPair::generate()?;
        let sans: Vec<String> = sans.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("myelin lab {lab} observer {purpose:?}"),
        );
        params.extended_key_usages = vec![purpose];
        write_private(cert, &params.signed_by(&key_pair, &issuer)?.pem())?;
        write_private(key, &key_pair.serialize_pem())
    };
    issue(
        &SERVER_NAMES,
        ExtendedKeyUsagePurpose::ServerAuth,
        &files.server_cert,
        &files.server_key,
    )?;
    issue(
        &["observer-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
        &files.client_cert,
        &files.client_key,
    )
}

/// Writes `text` to a new file only root reads.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
