//! The plans service's own configuration keys (`FOLLOWUP_PLANS__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use followup_platform::config::Secret;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Ed25519 private key (PKCS#8 PEM) that signs patients' portal link tokens. Engagement verifies
    /// them with the matching public key (`FOLLOWUP_ENGAGEMENT__PORTAL_PUBLIC_KEYS`).
    pub portal_signing_key: Secret,
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
