//! TLS on the observer's TCP listener: a CA, server and client certificates
//! generated here (rcgen), the real server on 127.0.0.1:0, and the client of
//! `myelin observe` with hubble's `--tls*` flags. The unix socket stays
//! plaintext.

use std::path::{Path, PathBuf};
use std::time::Duration;

use myelin_observe::cli::{self, TlsArgs};
use myelin_observe::proto::observer::{GetNodesRequest, ServerStatusRequest};
use myelin_observe::{Observer, ObserverConfig, ServeConfig, ServeError, ServerTls, bind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::oneshot;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Bounds every connection attempt, so that a hang fails instead of waiting.
const WAIT: Duration = Duration::from_secs(10);

/// A CA and what it signed, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write CA");
        Self {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `names`; returns (certificate, key) paths.
    fn issue(
        &self,
        file: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    fn server(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        self.issue("server", names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self) -> (PathBuf, PathBuf) {
        self.issue("client", &["client"], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

struct Running {
    tcp: String,
    unix: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), ServeError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(tls: ServerTls) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let observer = Observer::new(ObserverConfig::new("tls-node"));
        let config = ServeConfig {
            unix_socket: Some(dir.path().join("hubble.sock")),
            tcp: Some("127.0.0.1:0".parse().expect("addr")),
        };
        let bound = bind(observer, &config)
            .await
            .expect("bind")
            .with_tls(&tls)
            .expect("TLS files");
        let tcp = bound.tcp_addr.expect("tcp address").to_string();
        let unix = bound.unix_path.clone().expect("unix path");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(bound.run(async move {
            let _ = stopped.await;
        }));
        Self {
            tcp,
            unix,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server ran cleanly");
    }
}

fn tls_args(ca: &Path) -> TlsArgs {
    TlsArgs {
        tls: true,
        tls_ca_cert_files: vec![ca.to_path_buf()],
        ..TlsArgs::default()
    }
}

/// ServerStatus over a fresh connection: the number of flows, or the error.
async fn status(server: &str, tls: &TlsArgs) -> anyhow::Result<u64> {
    let attempt = async {
        let mut client = cli::connect_with(server, tls).await?;
        let status = client.server_status(ServerStatusRequest {}).await?;
        anyhow::Ok(status.into_inner().max_flows)
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| anyhow::bail!("timed out"))
}

#[tokio::test]
async fn tls_listener_serves_tls_clients_only() {
    let pki = Pki::new("myelin test CA");
    let (cert, key) = pki.server(&["localhost", "127.0.0.1"]);
    let running = Running::start(ServerTls {
        cert_file: cert,
        key_file: key,
        client_ca_files: Vec::new(),
    })
    .await;
    let tls = tls_args(&pki.ca());

    // --tls with the CA; and tls:// names TLS by itself.
    assert_eq!(
        status(&running.tcp, &tls)
            .await
            .expect("ServerStatus over TLS"),
        4095
    );
    let by_scheme = TlsArgs {
        tls: false,
        ..tls.clone()
    };
    assert_eq!(
        status(&format!("tls://{}", running.tcp), &by_scheme)
            .await
            .expect("ServerStatus over tls://"),
        4095
    );

    // The health service is on the TLS listener too, and GetNodes says TLS.
    let channel = cli::channel(&running.tcp, &tls).await.expect("channel");
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "hubble.server.Observer".to_string(),
        })
        .await
        .expect("health check over TLS")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    let nodes = cli::connect_with(&running.tcp, &tls)
        .await
        .expect("connect")
        .get_nodes(GetNodesRequest {})
        .await
        .expect("GetNodes")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].tls.as_ref().map(|t| t.enabled), Some(true));

    // A plaintext client gets nothing from the TLS port.
    let plain = status(&running.tcp, &TlsArgs::default()).await;
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");

    // A client that trusts another CA refuses the server.
    let other = Pki::new("another CA");
    let untrusted = status(&running.tcp, &tls_args(&other.ca())).await;
    assert!(
        untrusted.is_err(),
        "an untrusted server was accepted: {untrusted:?}"
    );

    // The unix socket stays plaintext, and says so.
    let unix = format!("unix://{}", running.unix.display());
    assert_eq!(
        status(&unix, &TlsArgs::default())
            .await
            .expect("unix socket"),
        4095
    );
    let message = status(&unix, &tls)
        .await
        .expect_err("TLS on a unix socket")
        .to_string();
    assert!(message.contains("plaintext"), "{message}");
    running.stop().await;
}

#[tokio::test]
async fn server_name_overrides_the_host() {
    let pki = Pki::new("myelin test CA");
    let (cert, key) = pki.server(&["node1.hubble-grpc.myelin.test"]);
    let running = Running::start(ServerTls {
        cert_file: cert,
        key_file: key,
        client_ca_files: Vec::new(),
    })
    .await;
    // The certificate does not name 127.0.0.1 ...
    let tls = tls_args(&pki.ca());
    assert!(status(&running.tcp, &tls).await.is_err());
    // ... but it names the server name given.
    let named = TlsArgs {
        tls_server_name: Some("node1.hubble-grpc.myelin.test".to_string()),
        ..tls
    };
    assert_eq!(
        status(&running.tcp, &named)
            .await
            .expect("with --tls-server-name"),
        4095
    );
    running.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new("myelin test CA");
    let (cert, key) = pki.server(&["127.0.0.1"]);
    let running = Running::start(ServerTls {
        cert_file: cert,
        key_file: key,
        client_ca_files: vec![pki.ca()],
    })
    .await;
    let tls = tls_args(&pki.ca());
    let anonymous = status(&running.tcp, &tls).await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {anonymous:?}"
    );

    let (client_cert, client_key) = pki.client();
    // A client certificate implies TLS, as in hubble.
    let mutual = TlsArgs {
        tls: false,
        tls_client_cert_file: Some(client_cert),
        tls_client_key_file: Some(client_key),
        ..tls
    };
    assert_eq!(
        status(&running.tcp, &mutual).await.expect("mutual TLS"),
        4095
    );

    // A certificate from another CA is refused.
    let other = Pki::new("another CA");
    let (foreign_cert, foreign_key) = other.client();
    let foreign = TlsArgs {
        tls_client_cert_file: Some(foreign_cert),
        tls_client_key_file: Some(foreign_key),
        ..mutual
    };
    assert!(status(&running.tcp, &foreign).await.is_err());
    running.stop().await;
}

/// What `with_tls` says about `tls`, which must be refused.
async fn tls_error(tls: ServerTls) -> String {
    let config = ServeConfig {
        unix_socket: None,
        tcp: Some("127.0.0.1:0".parse().expect("addr")),
    };
    bind(Observer::new(ObserverConfig::new("n")), &config)
        .await
        .expect("bind")
        .with_tls(&tls)
        .expect_err("unusable TLS files must be refused")
        .to_string()
}

#[tokio::test]
async fn unusable_files_are_named() {
    let pki = Pki::new("myelin test CA");
    let (cert, key) = pki.server(&["127.0.0.1"]);

    let missing = pki.dir.path().join("missing-key.pem");
    let message = tls_error(ServerTls {
        cert_file: cert.clone(),
        key_file: missing.clone(),
        client_ca_files: Vec::new(),
    })
    .await;
    assert!(
        message.contains("private key") && message.contains(&missing.display().to_string()),
        "{message}"
    );

    // A certificate where the key should be.
    let message = tls_error(ServerTls {
        cert_file: cert.clone(),
        key_file: cert.clone(),
        client_ca_files: Vec::new(),
    })
    .await;
    assert!(
        message.contains("private key") && message.contains(&cert.display().to_string()),
        "{message}"
    );

    // A key where a client CA should be.
    let message = tls_error(ServerTls {
        cert_file: cert.clone(),
        key_file: key.clone(),
        client_ca_files: vec![key.clone()],
    })
    .await;
    assert!(
        message.contains("CA certificate") && message.contains(&key.display().to_string()),
        "{message}"
    );

    // The key of another certificate.
    let (_, other_key) = pki.client();
    let message = tls_error(ServerTls {
        cert_file: cert.clone(),
        key_file: other_key.clone(),
        client_ca_files: Vec::new(),
    })
    .await;
    assert!(
        message.contains(&cert.display().to_string())
            && message.contains(&other_key.display().to_string()),
        "{message}"
    );
    assert!(message.contains("keys may not be consistent"), "{message}");
}
