//! End to end: memgate terminating TLS with a certificate made by rcgen.

mod support;

use std::time::Duration;

use support::*;

struct Cert {
    pem: String,
    key: String,
}

fn self_signed() -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        pem: made.cert.pem(),
        key: made.signing_key.serialize_pem(),
    }
}

fn client_trusting(cert: &Cert) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem.as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Whether an OpenSSL client completes a handshake offering only `version`.
fn openssl_handshake(port: u16, version: &str) -> Option<bool> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)"))
}

/// memgate serving `cert` from files in a temporary directory.
struct TlsGate {
    gate: Memgate,
    upstream: Upstream,
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    _db: TestDb,
    _dir: tempfile::TempDir,
}

impl TlsGate {
    async fn start(cert: &Cert) -> TlsGate {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, &cert.pem).unwrap();
        std::fs::write(&key_path, &cert.key).unwrap();
        let db = TestDb::new(Backend::Sqlite).await;
        let upstream = Upstream::start().await;
        let mut cfg = MemgateConfig::new(&db.url, &upstream.url());
        cfg.extra = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        );
        let gate = Memgate::start(cfg).await;
        TlsGate {
            gate,
            upstream,
            cert_path,
            key_path,
            _db: db,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_security_headers_and_no_tls_1_1() {
    let cert = self_signed();
    let served = TlsGate::start(&cert).await;
    let (gate, upstream) = (&served.gate, &served.upstream);
    let token = gate.create_token("alice", &[]);
    let client = client_trusting(&cert);

    let url = format!("https://localhost:{}/memories", gate.mem0.port());
    let resp = client
        .get(&url)
        .header("X-MCP-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "HTTP/2 is offered by ALPN"
    );
    let h = resp.headers();
    assert_eq!(h["strict-transport-security"], "max-age=31536000");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-mcp-userid").as_deref(), Some("alice"));
    // Refusals carry the headers too.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("strict-transport-security"));
    let mcp = format!("https://localhost:{}/mcp", gate.mcp.port());
    assert_eq!(
        client
            .get(&mcp)
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Plain HTTP on a TLS port gets nowhere.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/memories", gate.mem0.port())).await;
    assert!(
        plain.is_err(),
        "plain HTTP must not be served on a TLS listener"
    );

    if let Some(ok12) = openssl_handshake(gate.mem0.port(), "-tls1_2") {
        assert!(
            ok12,
            "the OpenSSL probe cannot complete TLS 1.2, so its TLS 1.1 result would prove nothing"
        );
        assert_eq!(
            openssl_handshake(gate.mem0.port(), "-tls1_1"),
            Some(false),
            "TLS 1.1 must be refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_dropping_connections() {
    let (old, new) = (self_signed(), self_signed());
    let served = TlsGate::start(&old).await;
    let (gate, cert_path, key_path) = (&served.gate, &served.cert_path, &served.key_path);
    let token = gate.create_token("alice", &[]);
    let url = format!("https://localhost:{}/memories", gate.mem0.port());
    let kept = client_trusting(&old);
    assert_eq!(
        kept.get(&url)
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        client_trusting(&new).get(&url).send().await.is_err(),
        "the new certificate is not served yet"
    );

    // Key first, then the certificate: a half-written pair is never loaded.
    std::fs::write(key_path, &new.key).unwrap();
    std::fs::write(cert_path, &new.pem).unwrap();
    let served = within(Duration::from_secs(8), || async {
        client_trusting(&new)
            .get(&url)
            .header("X-MCP-Token", &token)
            .send()
            .await
            .is_ok()
    })
    .await;
    assert!(
        served.is_some(),
        "the replaced certificate was not picked up"
    );
    // The connection opened with the old certificate is still served.
    assert_eq!(
        kept.get(&url)
            .header("X-MCP-Token", &token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
