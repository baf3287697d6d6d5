//! The notifications domain, plain Rust: when a message may go (consent, then quiet hours and the
//! frequency cap, whose rules are `followup_platform::pacing`, shared with the scheduler's preview),
//! what an inbound text means, how templates render and what an SMS costs, how deliveries are retried
//! and how calls are signed. No database, no gRPC, no NATS: the adapters around it do that.

pub mod address;
pub mod consent;
pub mod gsm;
pub mod inbound;
pub mod policy;
pub mod retry;
pub mod signing;
pub mod templates;

/// A way of reaching someone; the numbers are `followup.common.v1.Channel`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Sms = 1,
    Email = 2,
    Chat = 3,
    Task = 4,
    Webhook = 5,
}

impl Channel {
    pub const PATIENT: [Channel; 3] = [Channel::Sms, Channel::Email, Channel::Chat];

    pub fn from_i32(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::Sms),
            2 => Some(Self::Email),
            3 => Some(Self::Chat),
            4 => Some(Self::Task),
            5 => Some(Self::Webhook),
            _ => None,
        }
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
            Self::Chat => "chat",
            Self::Task => "task",
            Self::Webhook => "webhook",
        }
    }

    /// Whether messages on it reach a patient (and so consent, quiet hours and the cap apply).
    pub fn reaches_patient(self) -> bool {
        matches!(self, Self::Sms | Self::Email | Self::Chat)
    }
}
