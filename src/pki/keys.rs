//! Key generation, random serial numbers and matching a key to a certificate.

use anyhow::{Context, Result};
use rcgen::{KeyPair, RsaKeySize, SerialNumber};
use x509_parser::certificate::X509Certificate;

use crate::config::KeyAlgorithm;

/// Whether `key` is the private half of the certificate's public key.
pub(super) fn key_matches(key: &KeyPair, x509: &X509Certificate<'_>) -> bool {
    // For EC keys both are the encoded point, for RSA both are the PKCS#1 RSAPublicKey.
    key.public_key_raw() == &*x509.public_key().subject_public_key.data
}

pub(super) fn is_rsa(algorithm: KeyAlgorithm) -> bool {
    matches!(algorithm, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096)
}

/// A new key of the configured algorithm (RSA generation needs rcgen's aws_lc_rs backend).
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<KeyPair> {
    let key = match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
        }
    };
    key.with_context(|| format!("generating a {} key", algorithm.as_str()))
}

/// A random positive 16-byte serial (rcgen's default derives it from the key).
pub(super) fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("getting random bytes for a serial number: {e}"))?;
    // Positive, and no leading zero byte, so the DER integer keeps all 16 bytes.
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}
