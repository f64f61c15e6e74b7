//! PEM as the gateway reads certificates, private keys and CRLs (Secrets' data keys,
//! Gateway `tls` files, DestinationRule origination files); each error names `what`.
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject,
};

/// Every `X509 CRL` block of a PEM file; none is an error.
pub fn crls_of(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: bad CRL PEM: {e}"))?;
    if crls.is_empty() {
        return Err(format!("{what}: no X509 CRL found"));
    }
    Ok(crls)
}

/// Every certificate of a PEM file; none is an error.
pub fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let out = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if out.is_empty() {
        return Err(format!("{what}: no PEM certificate found"));
    }
    Ok(out)
}

pub fn key_of(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("{what}: no usable PEM private key: {e}"))
}
