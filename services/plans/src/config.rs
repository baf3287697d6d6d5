//! The plans service's own configuration keys (`FOLLOWUP_PLANS__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use std::net::SocketAddr;

use followup_platform::config::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Ed25519 private key (PKCS#8 PEM) that signs patients' portal link tokens. Engagement verifies
    /// them with the matching public key (`FOLLOWUP_ENGAGEMENT__PORTAL_PUBLIC_KEYS`). Required.
    pub portal_signing_key: Secret,
    /// Public keys (PEM) of earlier signing keys whose links the portal still accepts during a key
    /// rotation.
    pub portal_previous_public_keys: Vec<String>,
    /// Where the patient portal (JSON API, reference page, print view) listens.
    pub portal_addr: SocketAddr,
    /// The portal's public base URL, used in the links patients get (`<base>/p/<token>`); empty =
    /// `http://localhost:<portal port>` (the dev stack).
    pub portal_base_url: String,
    /// The engagement service's beacon script, loaded by the reference page.
    pub beacon_script_url: String,
    /// How long a portal link is valid when SendPlan does not say (days).
    pub portal_link_ttl_days: u32,
    /// The currency of plans in a clinic that has no fee schedule yet.
    pub default_currency: String,
    /// Read the patient's IP (consent evidence) from the first `X-Forwarded-For` address: set it only
    /// behind a proxy that sets that header.
    pub portal_trust_forwarded_for: bool,
    /// Origins besides the portal's own (`portal_base_url`) whose pages may approve a plan from the
    /// patient's browser, e.g. a clinic's own front-end calling the JSON API: `https://clinic.example`.
    /// Any other cross-site approval is refused (403).
    pub portal_allowed_origins: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            portal_signing_key: Secret::default(),
            portal_previous_public_keys: Vec::new(),
            portal_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            portal_base_url: String::new(),
            beacon_script_url: "http://localhost:8080/v1/beacon.js".into(),
            portal_link_ttl_days: 30,
            default_currency: "USD".into(),
            portal_trust_forwarded_for: false,
            portal_allowed_origins: Vec::new(),
        }
    }
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
