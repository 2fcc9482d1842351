//! TLS settings for the Redis store (feature `tls`): which CAs to trust, the client
//! certificate to present, and the name to check on nodes a Cluster announces by IP.
//!
//! A `rediss://` URL turns TLS on with the system's roots only: it cannot carry a private CA,
//! a client certificate, or the name a Cluster's nodes should be checked against when
//! `CLUSTER SLOTS` lists them by IP address (as Redis does unless
//! `cluster-announce-hostname` is set). These settings are kept as given (PEM bytes) and
//! checked when the store is built, so a bad bundle is an error from
//! [`connect`](super::RedisStoreBuilder::connect) or
//! [`connect_lazy`](super::RedisStoreBuilder::connect_lazy), never a failure per connection.

use crate::error::{StoreError, StoreErrorKind};
use fred::types::config::{HostMapping, TlsConfig, TlsConnector, TlsHostMapping};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::sync::Arc;

/// TLS settings for a [`RedisStore`](super::RedisStore); see
/// [`RedisStoreBuilder::tls`](super::RedisStoreBuilder::tls).
///
/// ```no_run
/// # async fn run() -> Result<(), tower_redis_cache::StoreError> {
/// use tower_redis_cache::store::RedisTls;
/// use tower_redis_cache::RedisStore;
/// let ca = std::fs::read("ca.pem").expect("ca");
/// let store = RedisStore::builder("rediss://cache:secret@redis.internal:6380")?
///     .tls(RedisTls::new().ca_pem(ca))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct RedisTls {
    ca_pem: Vec<Vec<u8>>,
    system_roots: bool,
    client: Option<(Vec<u8>, Vec<u8>)>,
    ip_server_name: Option<String>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key stays out of logs.
        f.debug_struct("RedisTls")
            .field("ca_bundles", &self.ca_pem.len())
            .field("system_roots", &self.system_roots)
            .field("client_certificate", &self.client.is_some())
            .field("ip_server_name", &self.ip_server_name)
            .finish()
    }
}

impl RedisTls {
    /// No trusted CA yet: add [`ca_pem`](Self::ca_pem) or
    /// [`system_roots`](Self::system_roots).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in a PEM bundle (may be called more than once).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem.push(pem.into());
        self
    }

    /// Trusts the operating system's roots too.
    pub fn system_roots(mut self) -> Self {
        self.system_roots = true;
        self
    }

    /// Presents a client certificate (PEM chain, leaf first) with its PEM private key, for
    /// servers that set `tls-auth-clients yes`.
    pub fn client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((chain_pem.into(), key_pem.into()));
        self
    }

    /// The name checked against the certificate of every node a Cluster announces by IP
    /// address (the seed nodes are checked against the URL's host).
    pub fn cluster_server_name(mut self, name: impl Into<String>) -> Self {
        self.ip_server_name = Some(name.into());
        self
    }

    /// fred's TLS configuration, or why these settings cannot work.
    pub(super) fn to_fred(&self) -> Result<TlsConfig, StoreError> {
        let invalid = |what: &str, error: &dyn std::fmt::Display| {
            StoreError::new(
                StoreErrorKind::Connection,
                format!("invalid Redis TLS settings: {what}: {error}"),
            )
        };
        let mut roots = rustls::RootCertStore::empty();
        for pem in &self.ca_pem {
            let mut any = false;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid("CA bundle", &e))?;
                roots.add(cert).map_err(|e| invalid("CA certificate", &e))?;
                any = true;
            }
            if !any {
                return Err(invalid("CA bundle", &"no certificate in the PEM"));
            }
        }
        if self.system_roots {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
        if roots.is_empty() {
            return Err(invalid(
                "trust",
                &"no CA to trust: add ca_pem or system_roots",
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("protocol versions", &e))?
        .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid("client certificate", &e))?;
                if chain.is_empty() {
                    return Err(invalid("client certificate", &"no certificate in the PEM"));
                }
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("client key", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid("client certificate", &e))?
            }
        };
        let hostnames = match &self.ip_server_name {
            Some(name) => TlsHostMapping::Custom(Arc::new(FixedName(name.clone()))),
            None => TlsHostMapping::None,
        };
        Ok(TlsConfig {
            connector: TlsConnector::from(config),
            hostnames,
        })
    }
}

/// Checks every node announced by IP against one name.
#[derive(Debug)]
struct FixedName(String);

impl HostMapping for FixedName {
    fn map(&self, _ip: &IpAddr, _default_host: &str) -> Option<String> {
        Some(self.0.clone())
    }
}
