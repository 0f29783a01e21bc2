//! TLS on the public listener (`[tls] cert`, `key`): Pingora's rustls
//! listener does the handshake and hands the decrypted stream to the front
//! app, so every check of the plain listener runs on HTTPS and WSS too.
//!
//! Pingora's `TlsSettings::build` panics on a file it cannot use, at the
//! moment the listener starts. So the files are read and checked here
//! first, the way rustls will use them (a certificate, a private key, and
//! the key belonging to the leaf), and a bad one stops the start with an
//! error that names it.
//!
//! No ALPN is offered: clients speak HTTP/1.1, the protocol the front reads
//! (an HTTP/2 connection would go to `HttpProxy` whole, past the edge
//! checks).

use anyhow::{bail, Context};
use pingora::listeners::tls::TlsSettings;
use pingora::tls::{
    install_default_crypto_provider, load_certs_and_key_files, load_pem_file_ca,
    load_pem_file_private_key, version, ServerConfig,
};
use std::path::{Path, PathBuf};

use roompin_shared::config::TlsConfig;

/// A PEM file bigger than this is not a certificate chain or a key.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The cert and key of `tls`, relative paths taken from `base` (the config
/// file's folder), checked; then the listener's settings.
pub fn settings(tls: &TlsConfig, base: &Path) -> anyhow::Result<TlsSettings> {
    let cert = resolve(&tls.cert, base);
    let key = resolve(&tls.key, base);
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    readable(&cert, "cert")?;
    readable(&key, "key")?;
    let found =
        load_pem_file_ca(&cert_s).map_err(|e| anyhow::anyhow!("[tls] cert {cert_s}: {e}"))?;
    if found.is_empty() {
        bail!("[tls] cert {cert_s}: no PEM certificate in it");
    }
    let found =
        load_pem_file_private_key(&key_s).map_err(|e| anyhow::anyhow!("[tls] key {key_s}: {e}"))?;
    if found.is_empty() {
        bail!("[tls] key {key_s}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)");
    }
    let Some((certs, private)) = load_certs_and_key_files(&cert_s, &key_s)
        .map_err(|e| anyhow::anyhow!("[tls] cert {cert_s} or key {key_s}: {e}"))?
    else {
        bail!("[tls] cert {cert_s} or key {key_s}: no certificate or key of a usable kind");
    };
    // What `TlsSettings::build` will do, with an error instead of a panic.
    install_default_crypto_provider();
    ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| anyhow::anyhow!("[tls] key {key_s} does not fit cert {cert_s}: {e}"))?;
    TlsSettings::intermediate(&cert_s, &key_s)
        .map_err(|e| anyhow::anyhow!("[tls] cert {cert_s}, key {key_s}: {e}"))
}

fn resolve(path: &Path, base: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// A file that exists, can be opened, and is not huge.
fn readable(path: &Path, what: &str) -> anyhow::Result<()> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("[tls] {what} {shown}"))?;
    if !meta.is_file() {
        bail!("[tls] {what} {shown}: not a file");
    }
    if meta.len() > MAX_PEM_BYTES {
        bail!("[tls] {what} {shown}: over {MAX_PEM_BYTES} bytes, not a PEM file");
    }
    std::fs::File::open(path).with_context(|| format!("[tls] {what} {shown}"))?;
    Ok(())
}
