//! TLS at the edge (issue 11): with `[tls] cert` and `key`, the balancer's
//! public listener speaks WSS. A client that trusts a test CA (made here
//! with rcgen) connects, chats and resumes through it; a client that does
//! not trust it, and a plain-HTTP request to the TLS port, fail cleanly and
//! cost the balancer nothing; a missing or bad file is refused at start,
//! naming the file.

use roompin_tests::edge::{balancer, balancer_toml, nodes, refused_start, scratch};
use roompin_tests::{get, PATIENCE};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::Connector;

use roompin_tests::WsClient;

/// A CA, and a certificate for 127.0.0.1 signed by it, as PEM files in
/// `dir`; returns the CA's DER and the cert and key paths.
fn test_ca(dir: &Path) -> (Vec<u8>, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "roompin test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let mut leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "roompin balancer");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf cert");

    let cert = dir.join("balancer.crt");
    let key = dir.join("balancer.key");
    std::fs::write(&cert, leaf_cert.pem()).expect("write cert");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
    (ca_cert.der().to_vec(), cert, key)
}

fn trusting(ca: &[u8]) -> Connector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.to_vec()))
        .expect("add the test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Connector::Rustls(Arc::new(config))
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn wss_through_the_balancer_chats_and_resumes() {
    let dir = scratch("tls");
    let (ca, cert, key) = test_ca(&dir);
    let ns = nodes(&["node-a", "node-b"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let b = balancer(&refs, "", &tls_section(&cert, &key)).await;
    let wss = |q: &str| format!("wss://127.0.0.1:{}/websocket?{q}", b.public.port());
    let m = "over-tls";

    let mut ann = WsClient::connect_with(
        &wss(&format!("meeting_id={m}&user=ann")),
        Some(trusting(&ca)),
    )
    .await
    .expect("ann joins over wss");
    let mut bob = WsClient::connect_with(
        &wss(&format!("meeting_id={m}&user=bob")),
        Some(trusting(&ca)),
    )
    .await
    .expect("bob joins over wss");
    ann.expect_next("join").await;
    ann.send_text("hello over tls").await.expect("send");
    let said = bob.recv_type("message").await.expect("bob gets it");
    assert_eq!(
        (&said["from"], &said["text"]),
        (&json!("ann"), &json!("hello over tls"))
    );

    // Bob drops; ann goes on; bob resumes from his last seq and misses nothing.
    let (since, room) = (
        bob.last_seq,
        bob.welcome["room"].as_str().unwrap_or_default().to_owned(),
    );
    drop(bob);
    ann.send_text("while bob was away").await.expect("send");
    let mut back = WsClient::connect_with(
        &wss(&format!(
            "meeting_id={m}&user=bob&since={since}&since_room={room}"
        )),
        Some(trusting(&ca)),
    )
    .await
    .expect("bob resumes over wss");
    assert_eq!(back.welcome["recovered"], json!(true), "{}", back.welcome);
    let missed = back.recv_type("message").await.expect("the missed message");
    assert_eq!(missed["text"], "while bob was away");

    // A client that does not trust the CA: the handshake fails, nothing hangs.
    let untrusted = WsClient::connect(&wss(&format!("meeting_id={m}&user=eve"))).await;
    assert!(untrusted.is_err(), "a client without the CA got in");

    // Plain HTTP to the TLS port fails cleanly: no HTTP answer, closed soon.
    let mut tcp = tokio::net::TcpStream::connect(b.public)
        .await
        .expect("connect");
    tcp.write_all(b"GET /websocket?meeting_id=m HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the TLS port kept a plain-HTTP connection open"
    );
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {got:?}"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{}/", b.public))
        .timeout(PATIENCE)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");

    // The balancer is none the worse: a new client joins, the admin
    // listener (plain HTTP, never public) answers.
    let c = WsClient::connect_with(
        &wss(&format!("meeting_id={m}&user=cy")),
        Some(trusting(&ca)),
    )
    .await
    .expect("a later client joins");
    c.close().await;
    let (status, _) = get(&b.admin_url("/healthz")).await.expect("healthz");
    assert_eq!(status, 200);
    back.close().await;
    ann.close().await;
}

#[tokio::test]
async fn a_missing_or_bad_file_is_refused_at_start_by_name() {
    let dir = scratch("tls-bad");
    let (_, cert, key) = test_ca(&dir);
    let (_, other_cert, _) = test_ca(&scratch("tls-other"));
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").expect("write");
    let missing = dir.join("missing.pem");
    let ns = nodes(&["node-a"], "").await;
    let refs: Vec<_> = ns.iter().collect();
    let cases = [
        ("missing cert", tls_section(&missing, &key), missing.clone()),
        ("missing key", tls_section(&cert, &missing), missing.clone()),
        ("garbage cert", tls_section(&garbage, &key), garbage.clone()),
        ("garbage key", tls_section(&cert, &garbage), garbage.clone()),
        (
            "a key of another cert",
            tls_section(&other_cert, &key),
            other_cert.clone(),
        ),
    ];
    for (name, section, named) in cases {
        let (toml, _, _) = balancer_toml(&refs, "", &section);
        let (code, stderr) = refused_start(&toml, &name.replace(' ', "-"));
        assert_eq!(
            code,
            Some(2),
            "{name}: the balancer did not refuse to start: {stderr}"
        );
        assert!(
            stderr.contains(&named.display().to_string()),
            "{name}: the refusal does not name {}: {stderr}",
            named.display()
        );
    }
    // An unknown key in [tls] is a typo, refused with its line.
    let (toml, _, _) = balancer_toml(
        &refs,
        "",
        &format!("{}certificate = \"x\"\n", tls_section(&cert, &key)),
    );
    let (code, stderr) = refused_start(&toml, "tls-typo");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `certificate`"), "{stderr}");
}
