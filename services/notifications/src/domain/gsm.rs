//! What an SMS body costs: GSM 03.38 7-bit when every character is in its alphabet (extension
//! characters count twice), else UCS-2; and how many segments the provider bills.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmsCost {
    pub encoding: Encoding,
    /// Septets for GSM-7 (extensions count two), UTF-16 code units for UCS-2.
    pub characters: usize,
    pub segments: usize,
}

const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

fn gsm_width(c: char) -> Option<usize> {
    if c != '\u{1b}' && BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

pub fn cost(body: &str) -> SmsCost {
    let gsm: Option<usize> = body.chars().map(gsm_width).sum();
    let (encoding, characters, single, multi) = match gsm {
        Some(septets) => (Encoding::Gsm7, septets, 160, 153),
        None => (Encoding::Ucs2, body.encode_utf16().count(), 70, 67),
    };
    let segments = if characters <= single {
        1
    } else {
        characters.div_ceil(multi)
    };
    SmsCost {
        encoding,
        characters,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_segments_per_encoding() {
        let table: &[(&str, Encoding, usize, usize)] = &[
            ("Hi Maria, your plan is ready", Encoding::Gsm7, 28, 1),
            (&"a".repeat(160), Encoding::Gsm7, 160, 1),
            (&"a".repeat(161), Encoding::Gsm7, 161, 2),
            (&"a".repeat(306), Encoding::Gsm7, 306, 2),
            (&"a".repeat(307), Encoding::Gsm7, 307, 3),
            ("Price: 50€ [x]", Encoding::Gsm7, 17, 1),
            ("Olá João", Encoding::Ucs2, 8, 1),
            ("See you soon 😀", Encoding::Ucs2, 15, 1),
            (&"ç".repeat(71), Encoding::Ucs2, 71, 2),
            ("", Encoding::Gsm7, 0, 1),
        ];
        for (body, encoding, characters, segments) in table {
            let got = cost(body);
            assert_eq!(
                (got.encoding, got.characters, got.segments),
                (*encoding, *characters, *segments),
                "{body:?}"
            );
        }
    }
}
