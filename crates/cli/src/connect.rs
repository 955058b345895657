//! The connection: a libpq-style connection string (URL or keyword form), TLS with rustls as
//! libpq's `sslmode` and `sslrootcert` describe it, and password or SCRAM authentication
//! (tokio-postgres negotiates SCRAM-SHA-256, with channel binding over TLS).
//!
//! tokio-postgres knows `sslmode` disable, prefer and require only, and no `sslrootcert`: both
//! are taken out of the string here and the rest is left to tokio-postgres' own parser, which
//! refuses what it does not know by name.

use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use postgres::config::SslMode as WireSslMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// libpq's `allow` and `prefer`: TLS if the server offers it, certificate unchecked.
    Prefer,
    /// TLS, certificate unchecked (checked against `sslrootcert` when one is named, as libpq).
    Require,
    /// TLS, certificate signed by a trusted root, any host name.
    VerifyCa,
    /// TLS, certificate signed by a trusted root and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str, var: &'static str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(Error::ConnectionString {
                    var,
                    reason: format!(
                        "sslmode \"{value}\" is not one of disable, allow, prefer, require, verify-ca, verify-full"
                    ),
                })
            }
        })
    }
}

/// A connection string with the TLS options taken out.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query string, leaving every other
/// parameter as written.
fn split_url(url: &str) -> Split {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut sslmode, mut sslrootcert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "sslmode" => sslmode = Some(decoded()),
            "sslrootcert" => sslrootcert = Some(decoded()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Split {
        rest,
        sslmode,
        sslrootcert,
    }
}

/// The keyword form `host=… sslmode=… password='a b'`: pairs split as libpq splits them
/// (spaces around `=`, single quotes with backslash escapes), the TLS ones taken out and the
/// others written back quoted.
fn split_keywords(text: &str) -> std::result::Result<Split, String> {
    let mut chars = text.chars().peekable();
    let (mut sslmode, mut sslrootcert, mut kept) = (None, None, Vec::new());
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("\"{key}\" has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = Zeroizing::new(String::new());
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("the value of \"{key}\" has no closing quote")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        match key.as_str() {
            "sslmode" => sslmode = Some(value.to_string()),
            "sslrootcert" => sslrootcert = Some(value.to_string()),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok(Split {
        rest: kept.join(" "),
        sslmode,
        sslrootcert,
    })
}

/// A parsed connection string: tokio-postgres' configuration and the TLS set-up.
pub struct Target {
    pub config: postgres::Config,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
}

/// Parses the connection string of `var`. `PGPASSWORD`, `PGUSER`, `PGSSLMODE` and
/// `PGSSLROOTCERT` fill in what the string leaves out, as they do for libpq.
pub fn parse(text: &str, var: &'static str) -> Result<Target> {
    let bad = |reason: String| Error::ConnectionString { var, reason };
    let split = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        split_url(text)
    } else {
        split_keywords(text).map_err(bad)?
    };
    // tokio-postgres' errors name the offending option, never the password.
    let mut config = postgres::Config::from_str(&split.rest).map_err(|e| bad(e.to_string()))?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.get_password().is_none() {
        if let Some(password) = env("PGPASSWORD").map(Zeroizing::new) {
            config.password(password.as_bytes());
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = env("PGUSER").or_else(|| env("USER")) {
            config.user(&user);
        }
    }
    if config.get_application_name().is_none() {
        config.application_name("credential-rotate");
    }
    let sslmode = match split.sslmode.or_else(|| env("PGSSLMODE")) {
        Some(mode) => SslMode::parse(&mode, var)?,
        None => SslMode::Prefer,
    };
    let sslrootcert = split.sslrootcert.or_else(|| env("PGSSLROOTCERT"));
    config.ssl_mode(match sslmode {
        SslMode::Disable => WireSslMode::Disable,
        SslMode::Prefer => WireSslMode::Prefer,
        _ => WireSslMode::Require,
    });
    Ok(Target {
        config,
        sslmode,
        sslrootcert,
    })
}

/// The trusted roots of `sslrootcert`: a PEM file, or `system` for the operating system's
/// store; without one, libpq's default `~/.postgresql/root.crt`.
fn roots(sslrootcert: Option<&str>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if sslrootcert == Some("system") {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(Error::Tls(
                "sslrootcert=system: the system has no trusted roots".into(),
            ));
        }
        return Ok(store);
    }
    let path = match sslrootcert {
        Some(path) => path.to_owned(),
        None => {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.postgresql/root.crt")
        }
    };
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::Tls(format!(
                "cannot read the root certificates of sslrootcert {path}: {e} (sslrootcert=system trusts the system's roots)"
            ))
        })?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Tls(format!("{path} holds no usable certificate")));
    }
    Ok(store)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for a mode.
fn tls_config(sslmode: SslMode, sslrootcert: Option<&str>) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    // As libpq: require checks the certificate when a root certificate is named.
    let mode = match (sslmode, sslrootcert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let config = match mode {
        SslMode::VerifyFull => builder
            .with_root_certificates(roots(sslrootcert)?)
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(sslrootcert)?),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName { inner }))
                .with_no_client_auth()
        }
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked { provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Connects. A refused certificate, a wrong password or an unreachable server is an error that
/// names the cause; nothing has been done on the server.
pub fn connect(target: Target) -> Result<postgres::Client> {
    let tls = MakeRustlsConnect::new(tls_config(target.sslmode, target.sslrootcert.as_deref())?);
    target
        .config
        .connect(tls)
        .map_err(|e| Error::Connect(connect_error(&e)))
}

/// The error and its causes, in one line (a TLS refusal is in the cause).
fn connect_error(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not
/// checked, as libpq does not check it in this mode.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, but the server's certificate
/// is not checked (libpq's behaviour; it protects against eavesdropping, not impersonation).
/// The handshake signature is still verified, so the session key belongs to the certificate.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out_and_the_rest_kept_as_written() {
        let s = split_url(
            "postgresql://u:p%40ss@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca%20b.pem",
        );
        assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/tmp/ca b.pem"));
        assert_eq!(
            s.rest,
            "postgresql://u:p%40ss@db.example:5432/app?application_name=x"
        );
        let s = split_url("postgres://h/db?sslmode=require");
        assert_eq!(s.rest, "postgres://h/db");
    }

    #[test]
    fn keyword_options_are_taken_out_and_the_rest_quoted() {
        let s =
            split_keywords("host=h  port = 5 sslmode=verify-ca password='a \\'b' sslrootcert=/c")
                .unwrap();
        assert_eq!(s.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(s.sslrootcert.as_deref(), Some("/c"));
        assert_eq!(s.rest, "host='h' port='5' password='a \\'b'");
        let config = postgres::Config::from_str(&s.rest).unwrap();
        assert_eq!(config.get_password(), Some(&b"a 'b"[..]));
        assert!(split_keywords("host='h").is_err());
        assert!(split_keywords("host").is_err());
    }

    #[test]
    fn modes_are_libpq_s() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(SslMode::parse(text, "X").unwrap(), mode);
        }
        let err = SslMode::parse("verify", "DATABASE_URL").unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
    }

    #[test]
    fn a_missing_root_certificate_is_a_set_up_error() {
        let err = tls_config(SslMode::VerifyFull, Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(tls_config(SslMode::Require, None).is_ok());
    }
}
