//! Signed claim links: `<base>/slots/<tenant>/<offer id>/<signature>`, the signature a truncated
//! HMAC-SHA256 of the tenant and offer id under the service's key. Short enough for an SMS, and it
//! proves the link came from an offer we sent; the offer's own state decides whether it still claims.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// 128 bits of the MAC: ample against forgery, 22 characters in the link.
const SIGNATURE_BYTES: usize = 16;

#[derive(Clone)]
pub struct ClaimLinks {
    base_url: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for ClaimLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimLinks")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ClaimLinks {
    pub fn new(base_url: &str, key: &[u8]) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            key: key.to_vec(),
        }
    }

    fn mac(&self, tenant: &str, offer_id: Uuid) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) else {
            return Vec::new();
        };
        mac.update(tenant.as_bytes());
        mac.update(b"/");
        mac.update(offer_id.as_bytes());
        let mut bytes = mac.finalize().into_bytes().to_vec();
        bytes.truncate(SIGNATURE_BYTES);
        bytes
    }

    /// The link of an offer (personal: it claims the slot for the offer's patient; never logged).
    pub fn url(&self, tenant: &str, offer_id: Uuid) -> String {
        format!(
            "{}/slots/{tenant}/{offer_id}/{}",
            self.base_url,
            URL_SAFE_NO_PAD.encode(self.mac(tenant, offer_id))
        )
    }

    /// Whether `signature` is this service's for the offer (compared in constant time).
    pub fn verify(&self, tenant: &str, offer_id: Uuid, signature: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) else {
            return false;
        };
        mac.update(tenant.as_bytes());
        mac.update(b"/");
        mac.update(offer_id.as_bytes());
        given.len() == SIGNATURE_BYTES && mac.verify_truncated_left(&given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_only_for_its_tenant_and_offer() {
        let links = ClaimLinks::new("https://clinic.example/", b"key-0123456789");
        let offer = Uuid::now_v7();
        let url = links.url("clinic-a", offer);
        let signature = url.rsplit('/').next().unwrap_or("");
        assert!(url.starts_with(&format!("https://clinic.example/slots/clinic-a/{offer}/")));
        assert!(links.verify("clinic-a", offer, signature));
        assert!(!links.verify("clinic-b", offer, signature));
        assert!(!links.verify("clinic-a", Uuid::now_v7(), signature));
        assert!(!links.verify("clinic-a", offer, "AAAA"));
        let other = ClaimLinks::new("https://clinic.example", b"another-key");
        assert!(!other.verify("clinic-a", offer, signature));
    }
}
