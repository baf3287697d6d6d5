//! The small vocabulary the case domain shares with its edges: money, channels, portal sections.
//!
//! These mirror `followup.common.v1` but stay plain Rust, so the domain is testable without protobuf;
//! the numbers are the proto enum numbers, which is how storage and the edges convert.

use serde::{Deserialize, Serialize};

/// Integer minor units of one ISO 4217 currency. Amounts of different currencies are never added.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

impl Money {
    pub fn new(amount_minor: i64, currency: impl Into<String>) -> Self {
        Self {
            amount_minor,
            currency: currency.into(),
        }
    }

    /// "1,234.50 EUR": minor units shown with two decimals (the common case; zero-decimal currencies such
    /// as JPY are shown with their own exponent).
    pub fn display(&self) -> String {
        let exponent = currency_exponent(&self.currency);
        let negative = self.amount_minor < 0;
        let abs = self.amount_minor.unsigned_abs();
        let scale = 10u64.pow(exponent);
        let major = abs / scale;
        let minor = abs % scale;
        let grouped = group_thousands(major);
        let sign = if negative { "-" } else { "" };
        if exponent == 0 {
            format!("{sign}{grouped} {}", self.currency)
        } else {
            format!(
                "{sign}{grouped}.{minor:0width$} {}",
                self.currency,
                width = exponent as usize
            )
        }
    }
}

/// Decimal places of a currency's minor unit (ISO 4217); 2 unless the currency is known otherwise.
pub fn currency_exponent(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "CLP" | "ISK" | "VND" | "XAF" | "XOF" | "UGX" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

fn group_thousands(mut n: u64) -> String {
    let mut parts = Vec::new();
    loop {
        if n < 1000 {
            parts.push(n.to_string());
            break;
        }
        parts.push(format!("{:03}", n % 1000));
        n /= 1000;
    }
    parts.reverse();
    parts.join(",")
}

/// Is `code` an ISO 4217 alphabetic code in form (three upper-case letters)?
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// A way of reaching a person (followup.common.v1.Channel numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    Unspecified,
    Sms,
    Email,
    Chat,
    Task,
    Webhook,
}

impl Channel {
    pub fn from_number(n: i32) -> Self {
        match n {
            1 => Channel::Sms,
            2 => Channel::Email,
            3 => Channel::Chat,
            4 => Channel::Task,
            5 => Channel::Webhook,
            _ => Channel::Unspecified,
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Channel::Unspecified => 0,
            Channel::Sms => 1,
            Channel::Email => 2,
            Channel::Chat => 3,
            Channel::Task => 4,
            Channel::Webhook => 5,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Channel::Unspecified => "message",
            Channel::Sms => "SMS",
            Channel::Email => "email",
            Channel::Chat => "portal message",
            Channel::Task => "staff task",
            Channel::Webhook => "webhook",
        }
    }

    /// A message that reaches the patient (a reminder), as opposed to a staff task or a webhook.
    pub fn reaches_patient(self) -> bool {
        matches!(self, Channel::Sms | Channel::Email | Channel::Chat)
    }
}

/// A section of the portal page (followup.common.v1.PortalSection numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Section {
    Cover,
    TreatmentDetails,
    Images,
    Models3d,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Cover,
        Section::TreatmentDetails,
        Section::Images,
        Section::Models3d,
    ];

    pub fn from_number(n: i32) -> Option<Self> {
        match n {
            1 => Some(Section::Cover),
            2 => Some(Section::TreatmentDetails),
            3 => Some(Section::Images),
            4 => Some(Section::Models3d),
            _ => None,
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Section::Cover => 1,
            Section::TreatmentDetails => 2,
            Section::Images => 3,
            Section::Models3d => 4,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Section::Cover => "cover page",
            Section::TreatmentDetails => "treatment details",
            Section::Images => "images",
            Section::Models3d => "3D models",
        }
    }
}

/// Visible time on one section, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionTime {
    pub section: Section,
    pub millis: i64,
}

/// "14 min", "45 s", "2 h 5 min": a length a person reads at a glance.
pub fn human_duration(millis: i64) -> String {
    let secs = millis.max(0) / 1000;
    if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", (secs + 30) / 60)
    } else {
        let minutes = (secs % 3600) / 60;
        if minutes == 0 {
            format!("{} h", secs / 3600)
        } else {
            format!("{} h {minutes} min", secs / 3600)
        }
    }
}

/// "6 days", "1 day", "5 h", "20 min": an age a person reads at a glance.
pub fn human_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let days = seconds / 86_400;
    if days >= 1 {
        return if days == 1 {
            "1 day".into()
        } else {
            format!("{days} days")
        };
    }
    let hours = seconds / 3600;
    if hours >= 1 {
        return format!("{hours} h");
    }
    format!("{} min", (seconds / 60).max(1))
}

/// "once", "twice", "3 times".
pub fn times(n: i32) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_shown_with_the_currency_exponent() {
        assert_eq!(Money::new(123_450, "EUR").display(), "1,234.50 EUR");
        assert_eq!(Money::new(5, "USD").display(), "0.05 USD");
        assert_eq!(
            Money::new(-100_000_000, "GBP").display(),
            "-1,000,000.00 GBP"
        );
        assert_eq!(Money::new(1500, "JPY").display(), "1,500 JPY");
        assert_eq!(Money::new(1500, "KWD").display(), "1.500 KWD");
    }

    #[test]
    fn lengths_and_ages_read_at_a_glance() {
        assert_eq!(human_duration(45_000), "45 s");
        assert_eq!(human_duration(14 * 60_000), "14 min");
        assert_eq!(human_duration(125 * 60_000), "2 h 5 min");
        assert_eq!(human_age(6 * 86_400 + 5), "6 days");
        assert_eq!(human_age(86_400), "1 day");
        assert_eq!(human_age(5 * 3600), "5 h");
        assert_eq!(human_age(10), "1 min");
        assert_eq!(times(2), "twice");
    }

    #[test]
    fn currency_codes_are_three_capitals() {
        assert!(is_currency_code("EUR"));
        assert!(!is_currency_code("eur"));
        assert!(!is_currency_code("EURO"));
    }
}
