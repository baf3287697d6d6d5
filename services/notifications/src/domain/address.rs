//! Addresses: E.164 phone numbers, email addresses and IANA zones, checked before they are stored.
//!
//! Phone numbers get a strict structural check rather than a full numbering-plan library (which would
//! add a large metadata crate for one check): "+" then 8 to 15 digits (ITU-T E.164's maximum), no
//! leading zero, starting with a country calling code that ITU has assigned. A number the provider
//! still cannot reach comes back as a permanent failure and is reported as such.

use chrono_tz::Tz;

/// ITU-T assigned country calling codes (1 to 3 digits).
const CALLING_CODES: &[u16] = &[
    1, 7, 20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54,
    55, 56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98, 211,
    212, 213, 216, 218, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234,
    235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253,
    254, 255, 256, 257, 258, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 290, 291, 297, 298,
    299, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 370, 371, 372, 373, 374, 375, 376, 377,
    378, 379, 380, 381, 382, 383, 385, 386, 387, 389, 420, 421, 423, 500, 501, 502, 503, 504, 505,
    506, 507, 508, 509, 590, 591, 592, 593, 594, 595, 596, 597, 598, 599, 670, 672, 673, 674, 675,
    676, 677, 678, 679, 680, 681, 682, 683, 685, 686, 687, 688, 689, 690, 691, 692, 800, 808, 850,
    852, 853, 855, 856, 870, 878, 880, 881, 882, 883, 886, 888, 960, 961, 962, 963, 964, 965, 966,
    967, 968, 970, 971, 972, 973, 974, 975, 976, 977, 979, 992, 993, 994, 995, 996, 997, 998,
];

/// Why a phone number is refused, in words for the person who typed it.
pub fn check_e164(phone: &str) -> Result<(), String> {
    let Some(digits) = phone.strip_prefix('+') else {
        return Err(format!(
            "`{}` is not in E.164 form: it must start with + and the country code, e.g. +447700900123",
            redact_phone(phone)
        ));
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("an E.164 number has only digits after the +, no spaces or punctuation".into());
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(format!(
            "an E.164 number has 8 to 15 digits after the +, this one has {}",
            digits.len()
        ));
    }
    if digits.starts_with('0') {
        return Err("an E.164 number starts with a country code, never 0".into());
    }
    let known = (1..=3).any(|n| {
        digits[..n]
            .parse::<u16>()
            .is_ok_and(|code| CALLING_CODES.contains(&code))
    });
    if !known {
        return Err("the number does not start with an assigned country calling code".into());
    }
    Ok(())
}

/// The last two digits only, for messages that may be logged.
pub fn redact_phone(phone: &str) -> String {
    let tail: String = phone
        .chars()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

pub fn check_email(email: &str) -> Result<(), String> {
    let invalid = || Err("not a valid email address (expected name@example.com)".to_string());
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid();
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return invalid();
    };
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || local.contains(['<', '>', ',', ';'])
    {
        return invalid();
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return invalid();
    }
    Ok(())
}

pub fn parse_zone(zone: &str) -> Result<Tz, String> {
    zone.parse::<Tz>().map_err(|_| {
        format!("`{zone}` is not an IANA time zone (e.g. Europe/London, America/Chicago)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_table() {
        for good in [
            "+447700900123",
            "+15125550100",
            "+5511987654321",
            "+35312345678",
            "+8613812345678",
        ] {
            assert!(check_e164(good).is_ok(), "{good}");
        }
        for bad in [
            "07700900123",
            "+44 7700 900123",
            "+0447700900",
            "+1234",
            "+1234567890123456",
            "+2591234567",
            "447700900123",
            "",
            "+",
        ] {
            assert!(check_e164(bad).is_err(), "{bad}");
        }
        // The refusal never repeats the whole number (it may be logged).
        let message = check_e164("07700900123").expect_err("refused");
        assert!(!message.contains("07700900123"));
    }

    #[test]
    fn email_table() {
        for good in [
            "maria@example.com",
            "a.b+c@mail.example.co.uk",
            "x@xn--bcher-kva.example",
        ] {
            assert!(check_email(good).is_ok(), "{good}");
        }
        for bad in [
            "maria",
            "maria@",
            "@example.com",
            "maria@example",
            "a b@example.com",
            "a@b@example.com",
            "a@-x.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zones() {
        assert!(parse_zone("Europe/London").is_ok());
        assert!(parse_zone("Mars/Olympus").is_err());
    }
}
