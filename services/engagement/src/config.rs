//! The engagement service's own configuration keys (`FOLLOWUP_ENGAGEMENT__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    /// PEM public keys that verify portal link tokens (the plans service signs them); several during a
    /// key rotation.
    pub portal_public_keys: Vec<String>,
}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
