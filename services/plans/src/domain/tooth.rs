//! Teeth as entered on a plan item: Universal (1–32 permanent, A–T primary) or FDI (11–48 permanent,
//! 51–85 primary), with optional surfaces among M O D B L I F.

use crate::error::{PlansError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numbering {
    Universal,
    Fdi,
}

impl Numbering {
    pub fn as_i16(self) -> i16 {
        match self {
            Numbering::Universal => 1,
            Numbering::Fdi => 2,
        }
    }

    pub fn from_i16(value: i16) -> Option<Self> {
        match value {
            1 => Some(Numbering::Universal),
            2 => Some(Numbering::Fdi),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Numbering::Universal => "Universal",
            Numbering::Fdi => "FDI",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tooth {
    pub numbering: Numbering,
    /// Canonical: upper-case letter or digits without leading zeros.
    pub number: String,
    /// Canonical: the letters in M O D B L I F order.
    pub surfaces: String,
}

const SURFACE_ORDER: &str = "MODBLIF";

impl Tooth {
    /// Validates a tooth. `numbering` None means the client left it unspecified.
    pub fn parse(numbering: Option<Numbering>, number: &str, surfaces: &str) -> Result<Self> {
        let number = number.trim();
        let numbering = numbering.ok_or_else(|| {
            PlansError::invalid(
                "tooth.numbering",
                "say which numbering the tooth uses: TOOTH_NUMBERING_UNIVERSAL or TOOTH_NUMBERING_FDI",
            )
        })?;
        let number = match numbering {
            Numbering::Universal => universal(number),
            Numbering::Fdi => fdi(number),
        }
        .ok_or_else(|| {
            PlansError::invalid(
                "tooth.number",
                match numbering {
                    Numbering::Universal => format!(
                        "`{number}` is not a Universal tooth (1-32 permanent, A-T primary)"
                    ),
                    Numbering::Fdi => format!(
                        "`{number}` is not an FDI tooth (11-18, 21-28, 31-38, 41-48 permanent; 51-55, 61-65, 71-75, 81-85 primary)"
                    ),
                },
            )
        })?;
        Ok(Self {
            numbering,
            number,
            surfaces: parse_surfaces(surfaces)?,
        })
    }

    /// "#14 MOD" / "FDI 26 MOD", for people.
    pub fn label(&self) -> String {
        let number = match self.numbering {
            Numbering::Universal => format!("#{}", self.number),
            Numbering::Fdi => format!("FDI {}", self.number),
        };
        if self.surfaces.is_empty() {
            number
        } else {
            format!("{number} {}", self.surfaces)
        }
    }
}

fn universal(number: &str) -> Option<String> {
    if let [letter] = number.as_bytes() {
        let upper = letter.to_ascii_uppercase();
        if (b'A'..=b'T').contains(&upper) {
            return Some((upper as char).to_string());
        }
    }
    if number.is_empty() || number.len() > 2 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = number.parse().ok()?;
    (1..=32).contains(&n).then(|| n.to_string())
}

fn fdi(number: &str) -> Option<String> {
    let bytes = number.as_bytes();
    if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let quadrant = bytes[0] - b'0';
    let tooth = bytes[1] - b'0';
    let valid = match quadrant {
        1..=4 => (1..=8).contains(&tooth),
        5..=8 => (1..=5).contains(&tooth),
        _ => false,
    };
    valid.then(|| number.to_string())
}

fn parse_surfaces(surfaces: &str) -> Result<String> {
    let mut seen = [false; 7];
    for c in surfaces.trim().chars() {
        let upper = c.to_ascii_uppercase();
        let Some(index) = SURFACE_ORDER.find(upper) else {
            return Err(PlansError::invalid(
                "tooth.surfaces",
                format!("`{c}` is not a surface (M, O, D, B, L, I or F)"),
            ));
        };
        if seen[index] {
            return Err(PlansError::invalid(
                "tooth.surfaces",
                format!("surface `{upper}` is given twice"),
            ));
        }
        seen[index] = true;
    }
    Ok(SURFACE_ORDER
        .chars()
        .zip(seen)
        .filter_map(|(c, on)| on.then_some(c))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universal_teeth() {
        for (input, canonical) in [
            ("1", "1"),
            ("32", "32"),
            ("a", "A"),
            ("T", "T"),
            ("08", "8"),
        ] {
            let tooth = Tooth::parse(Some(Numbering::Universal), input, "").expect(input);
            assert_eq!(tooth.number, canonical);
        }
        for bad in ["0", "33", "U", "", "1A", "100", "-1"] {
            assert!(
                Tooth::parse(Some(Numbering::Universal), bad, "").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn fdi_teeth() {
        for good in ["11", "18", "21", "48", "51", "55", "85"] {
            assert!(
                Tooth::parse(Some(Numbering::Fdi), good, "").is_ok(),
                "{good}"
            );
        }
        for bad in ["10", "19", "49", "56", "86", "91", "1", "111", "A"] {
            assert!(
                Tooth::parse(Some(Numbering::Fdi), bad, "").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn surfaces_are_canonical_and_unique() {
        let tooth = Tooth::parse(Some(Numbering::Universal), "14", "dom").expect("valid");
        assert_eq!(tooth.surfaces, "MOD");
        assert_eq!(tooth.label(), "#14 MOD");
        assert!(Tooth::parse(Some(Numbering::Universal), "14", "MM").is_err());
        assert!(Tooth::parse(Some(Numbering::Universal), "14", "X").is_err());
        assert!(Tooth::parse(None, "14", "").is_err());
    }
}
