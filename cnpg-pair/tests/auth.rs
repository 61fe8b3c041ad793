//! The driver's sessions over TLS with passwords, against a pair that accepts nothing else over
//! TCP (`hostssl ... scram-sha-256`, trust on the Unix socket only): the right settings observe
//! and drive it; a wrong password or a server certificate from another CA is a typed error that
//! names the node and changes nothing; the observation role cannot promote.

#[allow(dead_code)] // shared with the other tests; this one needs no upstream
mod common;

use std::path::{Path, PathBuf};

use cnpg_pair::{Error, Observed, PairDriver, PgAuth, PlainDriver, PlainNodeConfig, PromoteRequest, SslMode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use testkit::{PgPair, PgPairBuilder};

const OBSERVER: &str = "continuum_observer";

/// A CA in `dir` (`<name>-ca.pem`) and, when `server` is set, a server certificate for
/// 127.0.0.1 and localhost signed by it.
fn ca(dir: &Path, name: &str) -> (PathBuf, Option<(PathBuf, PathBuf)>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_path, cert.pem()).unwrap();
    let issuer = Issuer::new(params, key);
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}-server.pem")), dir.join(format!("{name}-server.key")));
    std::fs::write(&cert_path, server_cert.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
    (ca_path, Some((cert_path, key_path)))
}

struct Secured {
    pair: PgPair,
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Secured {
    async fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let (ca_path, server) = ca(dir.path(), "pair");
        let (other_ca, _) = ca(dir.path(), "other");
        let (server_cert, server_key) = server.unwrap();
        let security = testkit::pg::PgSecurity {
            server_cert,
            server_key,
            admin_password: "admin-secret".into(),
            observer_user: OBSERVER.into(),
            observer_password: "observer-secret".into(),
        };
        let pair = PgPairBuilder::default().secure(security).start().await.expect("secured pair");
        Secured { pair, dir, ca: ca_path, other_ca }
    }

    fn secret(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{contents}\n")).unwrap();
        path
    }

    /// The standby's driver with `auth`.
    fn standby(&self, auth: PgAuth) -> PlainDriver {
        let (b, a) = (&self.pair.standby, &self.pair.primary);
        PlainDriver::new(PlainNodeConfig { auth, ..common::node_config(b, a) }).expect("valid driver config")
    }

    fn good_auth(&self) -> PgAuth {
        PgAuth {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some(self.ca.clone()),
            password_file: Some(self.secret("admin.password", "admin-secret")),
            observer_user: Some(OBSERVER.into()),
            observer_password_file: Some(self.secret("observer.password", "observer-secret")),
            ..PgAuth::default()
        }
    }

    /// Over the Unix socket (trust): whether the standby is still one.
    async fn standby_in_recovery(&self) -> bool {
        let client = self.pair.standby.connect_local().await.unwrap();
        client.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0)
    }
}

#[tokio::test]
async fn tls_with_passwords_observes_as_the_observer_role_and_without_them_nothing_gets_in() {
    let s = Secured::start().await;
    let b = s.standby(s.good_auth());
    match b.observe().await {
        Observed::Standby(standby) => assert!(standby.streaming, "{standby:?}"),
        other => panic!("verify-full with the pair's CA and the observer role: {other:?}"),
    }
    // The session really is encrypted and runs as the observer role.
    let client = s.pair.standby.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND usename = $1",
            &[&OBSERVER],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "one encrypted observation session as {OBSERVER}");

    // Without TLS or without a password, TCP is refused.
    for (what, auth) in [
        ("no TLS", PgAuth { sslmode: SslMode::Disable, ..s.good_auth() }),
        (
            "no password",
            PgAuth { password_file: None, observer_user: None, observer_password_file: None, ..s.good_auth() },
        ),
    ] {
        let observed = s.standby(auth).observe().await;
        assert!(matches!(observed, Observed::Unreachable { .. }), "{what}: {observed:?}");
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_credentials_error_naming_the_node_and_changes_nothing() {
    let s = Secured::start().await;
    let wrong = PgAuth { password_file: Some(s.secret("wrong.password", "not-the-password")), ..s.good_auth() };
    let wrong_observer = PgAuth { observer_password_file: Some(s.secret("wrong-observer", "nope")), ..s.good_auth() };
    let b = s.standby(wrong);
    match b.promote(&PromoteRequest { epoch: 7, handover_token: None }).await {
        Err(e @ Error::Auth { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("b: PostgreSQL refused the credentials"), "{text}");
            assert!(text.contains("password authentication failed for user \"postgres\""), "{text}");
            assert_eq!(e.class(), cnpg_pair::ErrorClass::NeedsOperator);
        }
        other => panic!("expected Error::Auth, got {other:?}"),
    }
    match s.standby(wrong_observer).observe().await {
        Observed::Unreachable { error, .. } => {
            assert!(error.starts_with("b: PostgreSQL refused the credentials"), "{error}");
            assert!(error.contains(OBSERVER), "{error}");
        }
        other => panic!("a refused observer is unknown, not {other:?}"),
    }
    assert!(s.standby_in_recovery().await, "nothing was promoted");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_under_verify_full() {
    let s = Secured::start().await;
    let b = s.standby(PgAuth { sslrootcert: Some(s.other_ca.clone()), ..s.good_auth() });
    match b.promote(&PromoteRequest { epoch: 7, handover_token: None }).await {
        Err(e @ Error::Tls { .. }) => {
            let text = e.to_string();
            assert!(text.starts_with("b: TLS with PostgreSQL failed"), "{text}");
            assert!(text.contains("certificate"), "{text}");
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    match b.observe().await {
        Observed::Unreachable { error, .. } => assert!(error.starts_with("b: TLS with PostgreSQL failed"), "{error}"),
        other => panic!("an unverified server is unknown, not {other:?}"),
    }
    assert!(s.standby_in_recovery().await, "nothing was promoted");
    // `require` encrypts without verifying: the same CA mismatch gets through.
    let require =
        s.standby(PgAuth { sslmode: SslMode::Require, sslrootcert: Some(s.other_ca.clone()), ..s.good_auth() });
    assert!(matches!(require.observe().await, Observed::Standby(_)));
}

#[tokio::test]
async fn the_observer_role_cannot_promote() {
    let s = Secured::start().await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={OBSERVER} password=observer-secret dbname=postgres sslmode=require",
        s.pair.standby.port
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, testkit::tls::client()).await.unwrap();
    tokio::spawn(connection);
    let refused = client.query_one("SELECT pg_promote(false)", &[]).await.expect_err("the observer promoted");
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused}");
    assert!(s.standby_in_recovery().await, "still a standby");
}
