//! TLS for PostgreSQL connections (feature `tls`, default): rustls with
//! libpq's `sslmode` semantics.
//!
//! | sslmode | encryption | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow` | only when the server refuses a plain connection | no |
//! | `prefer` | when the server offers it | no |
//! | `require` | always | no (as libpq; with `sslrootcert`, like `verify-ca`) |
//! | `verify-ca` | always | chain against the CA |
//! | `verify-full` | always | chain and host name |
//!
//! The CA comes from `sslrootcert=<file.pem>` in the URL; `sslrootcert=system`
//! is the operating system's trust store (libpq 16: `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` apply, and only `verify-full` is allowed with it); without
//! `sslrootcert`, the Mozilla root set (`webpki-roots`). `sslcert` and
//! `sslkey` name a client certificate and its key (PEM) for `cert`
//! authentication. The stream offers `tls-server-end-point` channel binding,
//! so SCRAM-SHA-256-PLUS is used when the server offers it
//! (`channel_binding=prefer`, tokio-postgres' default) and demanded with
//! `channel_binding=require`.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`, as far as certificate checks go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verification {
    /// Encrypt, but accept any certificate (`prefer`, `require`).
    None,
    /// Check the chain, not the host name (`verify-ca`).
    Chain,
    /// Check the chain and the host name (`verify-full`).
    Full,
}

/// Builds the rustls configuration for a verification level and an optional
/// CA file.
pub(crate) fn client_config(
    verification: Verification,
    root_cert: Option<&Path>,
    client_cert: Option<&ClientCertificate>,
) -> Result<ClientConfig, String> {
    let provider = crypto_provider()?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match verification {
        Verification::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        Verification::Chain | Verification::Full => {
            let roots = Arc::new(root_store(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            let verifier: Arc<dyn ServerCertVerifier> = match verification {
                Verification::Chain => Arc::new(ChainOnly(webpki)),
                _ => webpki,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
        }
    };
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some(client) => {
            let (chain, key) = client.load()?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("sslcert and sslkey do not make a usable client certificate: {e}")
            })
        }
    }
}

/// The rustls crypto provider: the process default when the application
/// installed one (`CryptoProvider::install_default`, e.g. aws-lc-rs for
/// post-quantum key exchange), else the one rustls's crate features name
/// (*ring*, which the crate enables), installed as the process default by
/// `ClientConfig::builder()` as every rustls user's first config does.
/// rustls 0.23.48 deprecated `crypto::ring::default_provider()`; this path
/// is the non-deprecated one. With both *ring* and aws-lc-rs in a build and
/// no provider installed, rustls cannot choose and panics: that panic is
/// caught and turned into a setup error that says what to do.
fn crypto_provider() -> Result<Arc<CryptoProvider>, String> {
    if let Some(provider) = CryptoProvider::get_default() {
        return Ok(provider.clone());
    }
    let chosen = std::panic::catch_unwind(|| {
        let _ = ClientConfig::builder();
    });
    match (chosen, CryptoProvider::get_default()) {
        (Ok(()), Some(provider)) => Ok(provider.clone()),
        _ => Err(
            "TLS setup failed: rustls cannot choose a crypto provider (both ring and \
             aws-lc-rs are in the build): install one at start-up with \
             rustls::crypto::CryptoProvider::install_default"
                .into(),
        ),
    }
}

/// A client certificate and its private key (`sslcert`, `sslkey`), read
/// when the pool is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCertificate {
    /// Both files, or neither; one without the other is a mistake libpq
    /// would only notice at the handshake.
    pub(crate) fn from_params(
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<Option<Self>, String> {
        match (path_param(cert), path_param(key)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(ClientCertificate { cert, key })),
            (Some(_), None) => Err("has sslcert without sslkey: give both".into()),
            (None, Some(_)) => Err("has sslkey without sslcert: give both".into()),
        }
    }

    /// The certificate chain and the key. Messages name the files, never
    /// what the key file holds.
    fn load(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("sslcert {} cannot be read as PEM: {e}", self.cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "sslcert {} holds no certificate",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            format!(
                "sslkey {} cannot be read as a PEM private key: {}",
                self.key.display(),
                key_problem(&e)
            )
        })?;
        Ok((chain, key))
    }
}

/// What went wrong reading a key, in words that cannot quote the key.
fn key_problem(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match error {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no private key in it".into(),
        _ => "it is not a valid PEM private key".into(),
    }
}

fn root_store(root_cert: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) if is_system(path) => {
            // libpq 16 loads OpenSSL's default locations, which
            // SSL_CERT_FILE and SSL_CERT_DIR override; rustls-native-certs
            // reads the same (and the platform store on macOS and Windows).
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "sslrootcert=system found no trusted certificate in the operating system's store{}",
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", errors.join("; "))
                    }
                ));
            }
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {} cannot be read: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("sslrootcert {} is not PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "sslrootcert {} holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// Accepts any server certificate, but still checks the handshake
/// signatures: encryption without authentication, as libpq's `require`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain against the roots but not the host name, as libpq's
/// `verify-ca`.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connector handed to tokio-postgres.
#[derive(Clone)]
pub(crate) struct PgTls {
    config: Arc<ClientConfig>,
}

impl PgTls {
    pub(crate) fn new(config: ClientConfig) -> Self {
        PgTls {
            config: Arc::new(config),
        }
    }
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgTls")
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PgTlsConnect> {
        // tokio-postgres asks for a connector before every connection, also
        // over a Unix socket or to a bare `hostaddr`, where the name is
        // empty and TLS is never negotiated (the server declines it on a
        // socket). So a name that is no TLS server name fails the handshake,
        // not the connection.
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{domain}` is not a TLS server name: {e}"),
            )
        });
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub(crate) struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: io::Result<ServerName<'static>>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name?, stream).await?;
            Ok(PgTlsStream(Box::new(stream)))
        })
    }
}

/// An encrypted connection.
pub(crate) struct PgTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point (RFC 5929): the hash of the server's
        // certificate, which SCRAM-SHA-256-PLUS mixes into the proof, so a
        // man in the middle holding another certificate cannot relay the
        // authentication. None when the certificate's signature names no
        // usable hash; tokio-postgres then uses plain SCRAM-SHA-256 (and
        // fails under channel_binding=require).
        let (_, connection) = self.0.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| super::channel_binding::tls_server_end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// Whether `sslrootcert` names the operating system's trust store.
pub(crate) fn is_system(path: &Path) -> bool {
    path.as_os_str() == "system"
}

/// The file a path parameter (`sslrootcert`, `sslcert`, `sslkey`) names, if any.
pub(crate) fn path_param(value: Option<String>) -> Option<PathBuf> {
    value.filter(|v| !v.is_empty()).map(PathBuf::from)
}
