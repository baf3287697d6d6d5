//! Money: integer minor units of an ISO 4217 currency. Amounts of two currencies are never added.

use std::fmt;

use crate::error::{PlansError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// An ISO 4217 alphabetic code: three upper-case ASCII letters.
    pub fn parse(code: &str) -> Result<Self> {
        let bytes = code.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([bytes[0], bytes[1], bytes[2]]))
        } else {
            Err(PlansError::invalid(
                "currency",
                format!("`{code}` is not an ISO 4217 code (three upper-case letters, e.g. USD)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        // Built only from ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Digits after the decimal point (ISO 4217 minor units); 2 unless the currency is known otherwise.
    pub fn minor_digits(&self) -> u32 {
        match self.as_str() {
            "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF"
            | "UGX" | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
            "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
            "CLF" | "UYW" => 4,
            _ => 2,
        }
    }

    /// Parses a decimal in major units ("125.50", "125", "0.5") into minor units. At most the
    /// currency's minor digits; no sign, no thousands separators, no exponent.
    pub fn parse_amount(&self, text: &str) -> std::result::Result<i64, String> {
        let text = text.trim();
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = self.minor_digits();
        let well_formed = !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && !(text.contains('.') && fraction.is_empty());
        if !well_formed {
            return Err(format!(
                "`{text}` is not a decimal amount (write e.g. 125.50, without sign or separators)"
            ));
        }
        if fraction.len() > digits as usize {
            return Err(format!(
                "`{text}` has more than {digits} decimal digits for {}",
                self.as_str()
            ));
        }
        let scale = 10_i64.pow(digits);
        let whole: i64 = whole
            .parse()
            .map_err(|_| format!("`{text}` is too large"))?;
        let mut fraction_minor: i64 = 0;
        if !fraction.is_empty() {
            fraction_minor = fraction
                .parse::<i64>()
                .map_err(|_| format!("`{text}` is not a decimal amount"))?
                * 10_i64.pow(digits - fraction.len() as u32);
        }
        whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(fraction_minor))
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// The amount in major units for people: "125.50 USD" is written "$125.50" for the common symbols.
    pub fn display(&self) -> String {
        let digits = self.currency.minor_digits();
        let scale = 10_i64.pow(digits);
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        let whole = abs / scale as u64;
        let fraction = abs % scale as u64;
        let number = if digits == 0 {
            group(whole)
        } else {
            format!(
                "{}.{:0width$}",
                group(whole),
                fraction,
                width = digits as usize
            )
        };
        match self.currency.as_str() {
            "USD" | "CAD" | "AUD" | "NZD" => format!("{sign}${number}"),
            "GBP" => format!("{sign}£{number}"),
            "EUR" => format!("{sign}€{number}"),
            other => format!("{sign}{number} {other}"),
        }
    }
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD")
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert!(Currency::parse("USD").is_ok());
        for bad in ["usd", "US", "USDX", "", "U$D"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_parse_to_minor_units() {
        let cases = [("125.50", 12550), ("125", 12500), ("0.5", 50), ("0.05", 5)];
        for (text, minor) in cases {
            assert_eq!(usd().parse_amount(text), Ok(minor), "{text}");
        }
        let jpy = Currency::parse("JPY").expect("JPY");
        assert_eq!(jpy.parse_amount("1200"), Ok(1200));
        assert!(jpy.parse_amount("1200.5").is_err());
        let kwd = Currency::parse("KWD").expect("KWD");
        assert_eq!(kwd.parse_amount("1.234"), Ok(1234));
        for bad in [
            "12,50",
            "-1",
            "1.",
            ".5",
            "1.234",
            "1e3",
            "",
            "abc",
            "99999999999999999999",
        ] {
            assert!(usd().parse_amount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(Money::new(1_234_550, usd()).display(), "$12,345.50");
        assert_eq!(Money::new(-500, usd()).display(), "-$5.00");
        let chf = Currency::parse("CHF").expect("CHF");
        assert_eq!(Money::new(100, chf).display(), "1.00 CHF");
        let jpy = Currency::parse("JPY").expect("JPY");
        assert_eq!(Money::new(1200, jpy).display(), "1,200 JPY");
    }
}
