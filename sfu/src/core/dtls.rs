//! str0m's crypto provider with one DTLS configuration per node.
//!
//! str0m's aws-lc-rs backend builds a fresh `dimpl::Config` for every `Rtc`,
//! and dimpl validates its crypto provider on each build: a key exchange
//! round trip for every group (P-256, P-384, X25519), ≈ 1 ms on the media
//! thread per join. The configuration does not depend on the peer, so the
//! node builds it once per MTU and shares it (`Arc`, as dimpl intends). The
//! rest of the provider (SRTP, hashes) is the backend's, unchanged.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use str0m::config::CryptoProvider;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::CryptoError;

static SHARED: OnceLock<SharedConfigDtls> = OnceLock::new();

/// The backend's provider with `SharedConfigDtls` for DTLS.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let base = str0m::crypto::from_feature_flags();
            let dtls: &'static SharedConfigDtls = SHARED.get_or_init(|| SharedConfigDtls {
                backend: base.dtls_provider,
                configs: Mutex::new(Vec::new()),
            });
            Arc::new(CryptoProvider {
                dtls_provider: dtls,
                ..base
            })
        })
        .clone()
}

/// One DTLS certificate for every peer this process makes, made on first use
/// (a key pair and a self-signed certificate, ≈ 2 ms): a node presents one
/// certificate to all its peers (as mediasoup and Janus do), and a process
/// of many clients (`meridian load`) one to all its connections, as a
/// browser does for the connections of one page. `None` if the backend
/// could not make one; each peer then makes its own.
pub fn shared_certificate() -> Option<DtlsCert> {
    static CERT: OnceLock<Option<DtlsCert>> = OnceLock::new();
    CERT.get_or_init(|| crypto_provider().dtls_provider.generate_certificate())
        .clone()
}

/// dimpl DTLS with its configuration built once per MTU.
#[derive(Debug)]
pub struct SharedConfigDtls {
    /// Certificates still come from the backend.
    backend: &'static dyn DtlsProvider,
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
}

impl SharedConfigDtls {
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        let mut configs = self
            .configs
            .lock()
            .map_err(|_| CryptoError::Other("DTLS config cache poisoned".into()))?;
        if let Some((_, c)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(c.clone());
        }
        // As str0m's aws-lc-rs backend configures it: ICE has already
        // checked return routability, so no server cookie.
        let mut builder = dimpl::Config::builder().use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {e}")))?,
        );
        configs.push((mtu, config.clone()));
        Ok(config)
    }
}

impl DtlsProvider for SharedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.backend.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            v => return Err(CryptoError::Other(format!("unsupported DTLS version: {v}"))),
        };
        Ok(Box::new(Instance(dtls)))
    }
}

struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfigDtls::Instance").finish()
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_share_one_config_per_mtu() {
        let p = crypto_provider();
        let cert = p
            .dtls_provider
            .generate_certificate()
            .expect("a certificate");
        let now = Instant::now();
        // An MTU no other test uses.
        let mtu = Some(1111);
        let instances: Vec<_> = (0..3)
            .map(|_| {
                p.dtls_provider
                    .new_dtls(&cert, now, DtlsVersion::Dtls12, mtu)
                    .expect("a DTLS instance")
            })
            .collect();
        let shared = SHARED.get().expect("the provider is initialised");
        let configs = shared.configs.lock().expect("not poisoned");
        let cached: Vec<_> = configs.iter().filter(|(m, _)| *m == mtu).collect();
        assert_eq!(cached.len(), 1, "one config for the MTU");
        assert!(
            Arc::strong_count(&cached[0].1) > instances.len(),
            "every instance holds the cached config"
        );
    }
}
