//! The engagement service's own configuration keys (`FOLLOWUP_ENGAGEMENT__<KEY>`), beside the platform's
//! [`followup_platform::CommonConfig`].

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {}

pub type Config = followup_platform::service::ServiceConfig<Settings>;
