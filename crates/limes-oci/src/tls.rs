//! The TLS crypto provider of every registry client: ring.
//!
//! reqwest and oci-client are built without a provider of their own
//! (`rustls-no-provider`): their default, aws-lc, would be a second crypto
//! library beside the ring that Wasmtime's outbound HTTP client uses, and
//! aws-lc's static constructor runs in every process of the loader, a
//! one-shot `limes run` included, probing the CPU with `CPUID` (a trap to
//! the hypervisor on a virtual machine). reqwest panics when it builds a
//! client with no provider installed, so every client constructor in this
//! crate calls [`install_provider`] first.

/// Make ring the process's default rustls provider, once. Installing can
/// only fail when another provider is already the default; then that one
/// stays (a host program chose it), which is what a library should do.
pub(crate) fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    /// A registry client builds without a panic, and the default provider
    /// afterwards is ring's (its key provider, by its debug name).
    #[test]
    fn clients_build_with_ring() {
        let creds = crate::Credentials::default();
        crate::Registry::new("127.0.0.1:5000/limes/noop:1", true, &creds).expect("registry client");
        crate::Puller::new("127.0.0.1:5000/limes/noop:1", true, &creds, crate::Timeouts::default()).expect("puller");
        let provider = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(format!("{:?}", provider.key_provider), format!("{:?}", ring.key_provider));
    }
}
