//! TLS to the store and to the database: `rediss://` against a TLS-only
//! `redis-server` of the test's own, with certificates the test makes
//! (openssl CLI), and a PostgreSQL URL with `sslmode=require` against the
//! shared PostgreSQL (which runs with `ssl = on`, see scripts/services.sh).

use larder_test_support as support;

use larder::store;
use larder::SqlPool;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{unique, RedisServer};

/// A directory of certificates: two CAs, and a server certificate for
/// 127.0.0.1 / localhost signed by the first.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let dir = support::temp_dir("larder_tls");
        let certs = Certs { dir };
        for ca in ["ca", "other_ca"] {
            certs.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=larder test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        certs.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            certs.path("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        certs.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        certs
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("the openssl CLI (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tls_server(&self) -> RedisServer {
        RedisServer::builder()
            .tls(
                &self.path("server.pem"),
                &self.path("server.key"),
                &self.path("ca.pem"),
            )
            .start()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn with_ca(url: &str, ca: &Path) -> String {
    format!("{url}?tls_ca={}&connect_timeout=2s", ca.display())
}

#[tokio::test]
async fn rediss_with_the_servers_ca_reads_and_writes() {
    let certs = Certs::make();
    let server = certs.tls_server();
    assert!(server.url().starts_with("rediss://"), "{}", server.url());
    let url = with_ca(&server.url(), &certs.path("ca.pem"));
    let s = store::connect_checked(&url)
        .await
        .unwrap_or_else(|e| panic!("rediss:// with the server's CA: {e}"));
    let key = format!("{}:tls", unique("t"));
    let lease = format!("{key}:lease");
    s.set(&key, &lease, b"over tls", Duration::from_secs(30))
        .await
        .expect("SET over TLS");
    assert_eq!(
        s.get(&key).await.expect("GET over TLS").as_deref(),
        Some(&b"over tls"[..])
    );
    s.delete(&key, &lease).await.expect("DEL over TLS");
    assert_eq!(s.get(&key).await.expect("GET"), None);
    // The server has no plain port: a client that skips TLS gets nowhere.
    let plain = server.url().replacen("rediss://", "redis://", 1);
    let plain = format!("{plain}?connect_timeout=500ms&response_timeout=500ms");
    assert!(store::connect_checked(&plain).await.is_err());
}

#[tokio::test]
async fn a_wrong_ca_is_refused_with_a_clear_error() {
    let certs = Certs::make();
    let server = certs.tls_server();
    for url in [
        with_ca(&server.url(), &certs.path("other_ca.pem")),
        // The system's roots do not know the test's CA either.
        format!("{}?connect_timeout=2s", server.url()),
    ] {
        let err = match store::connect_checked(&url).await {
            Ok(_) => panic!("{url}: a certificate the CA did not sign was accepted"),
            Err(e) => e,
        };
        eprintln!("{url}: refused: {err}");
        assert!(err.is_store_unavailable(), "{url}: {err:?}");
        let text = format!("{err} {:?}", err);
        assert!(
            text.contains("certificate") && text.contains("UnknownIssuer"),
            "{url}: the error should name the certificate problem: {text}"
        );
    }
}

#[tokio::test]
async fn tls_options_are_checked() {
    for (url, needle) in [
        (
            "redis://127.0.0.1:1/0?tls_ca=/x.pem",
            "need a rediss:// URL",
        ),
        ("rediss://127.0.0.1:1/0?tls_cert=/x.pem", "together"),
        (
            "rediss://127.0.0.1:1/0?tls_ca=/nonexistent/ca.pem",
            "cannot read /nonexistent/ca.pem",
        ),
    ] {
        let err = match store::connect(url).await {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{url}: {err}");
    }
}

#[tokio::test]
async fn postgres_with_sslmode_require_is_encrypted() {
    let base = support::pg_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}sslmode=require");
    let pool = SqlPool::connect(&url, 1)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let SqlPool::Postgres(pg) = &pool else {
        panic!("not PostgreSQL: {url}");
    };
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pg)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the connection of {url} is not encrypted");
    pg.close().await;
}
