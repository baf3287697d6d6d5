//! Patient name search: case- and accent-insensitive, word by word.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lower case without accents: "José Ñúñez" → "jose nunez". Stored beside the name and applied to the
/// query, so "jose" finds "José".
pub fn fold(text: &str) -> String {
    text.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The words of a query, folded; LIKE wildcards are escaped so they match themselves.
pub fn query_words(query: &str) -> Vec<String> {
    fold(query)
        .split_whitespace()
        .map(|w| {
            w.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        })
        .collect()
}

/// The display name of a patient from the clinic's record.
pub fn display_name(given: &str, family: &str, preferred: &str) -> String {
    let first = if preferred.trim().is_empty() {
        given.trim()
    } else {
        preferred.trim()
    };
    [first, family.trim()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_drops_case_and_accents() {
        assert_eq!(fold("José Ñúñez-Öztürk"), "jose nunez-ozturk");
        assert_eq!(query_words("  JOSÉ   nu%ñ_ "), vec!["jose", "nu\\%n\\_"]);
    }

    #[test]
    fn the_preferred_name_comes_first() {
        assert_eq!(display_name("Margaret", "Lima", "Peggy"), "Peggy Lima");
        assert_eq!(display_name("Ana", "", ""), "Ana");
    }
}
