//! Procedure codes: the categories, code rules, the clinic's CSV import and the ranked search.

use std::cmp::Ordering;

use super::money::Currency;

/// The kind of procedure (followup.plans.v1.CodeCategory, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Unspecified = 0,
    Diagnostic = 1,
    Preventive = 2,
    Restorative = 3,
    Endodontics = 4,
    Periodontics = 5,
    ProsthodonticsRemovable = 6,
    MaxillofacialProsthetics = 7,
    ImplantServices = 8,
    ProsthodonticsFixed = 9,
    OralSurgery = 10,
    Orthodontics = 11,
    Adjunctive = 12,
}

impl Category {
    pub const ALL: [Category; 13] = [
        Category::Unspecified,
        Category::Diagnostic,
        Category::Preventive,
        Category::Restorative,
        Category::Endodontics,
        Category::Periodontics,
        Category::ProsthodonticsRemovable,
        Category::MaxillofacialProsthetics,
        Category::ImplantServices,
        Category::ProsthodonticsFixed,
        Category::OralSurgery,
        Category::Orthodontics,
        Category::Adjunctive,
    ];

    pub fn from_i32(value: i32) -> Option<Self> {
        Category::ALL.into_iter().find(|c| *c as i32 == value)
    }

    /// The CDT range a "Dnnnn" code falls in; Unspecified for other codes.
    pub fn of_code(code: &str) -> Category {
        let Some(n) = code
            .strip_prefix('D')
            .filter(|digits| digits.len() == 4)
            .and_then(|digits| digits.parse::<u32>().ok())
        else {
            return Category::Unspecified;
        };
        match n {
            0..=999 => Category::Diagnostic,
            1000..=1999 => Category::Preventive,
            2000..=2999 => Category::Restorative,
            3000..=3999 => Category::Endodontics,
            4000..=4999 => Category::Periodontics,
            5000..=5899 => Category::ProsthodonticsRemovable,
            5900..=5999 => Category::MaxillofacialProsthetics,
            6000..=6199 => Category::ImplantServices,
            6200..=6999 => Category::ProsthodonticsFixed,
            7000..=7999 => Category::OralSurgery,
            8000..=8999 => Category::Orthodontics,
            _ => Category::Adjunctive,
        }
    }
}

pub const MAX_CODE: usize = 16;
pub const MAX_NAME: usize = 200;

/// A code as the clinic's list keeps it: upper case, 1–16 of A–Z 0–9 . -
pub fn normalize_code(code: &str) -> Result<String, String> {
    let code = code.trim().to_ascii_uppercase();
    if code.is_empty() {
        return Err("a code is required, e.g. D2740".into());
    }
    if code.len() > MAX_CODE
        || !code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!(
            "`{code}` is not a procedure code (1-{MAX_CODE} letters, digits, '.' or '-', e.g. D2740)"
        ));
    }
    Ok(code)
}

pub fn validate_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("a name is required".into());
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!("at most {MAX_NAME} characters"));
    }
    Ok(name.to_string())
}

/// A valid row of a clinic's CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    pub line: usize,
    pub code: String,
    pub name: String,
    pub default_fee: Option<i64>,
}

/// Valid rows, and (line, message) for each invalid one.
pub type ParsedCsv = (Vec<ImportRow>, Vec<(usize, String)>);

/// The rows of a clinic's code list: header `code,name,default_fee`, then one row per code. Returns the
/// valid rows and (line, message) for the others. `currency` reads the fees; None ignores them.
pub fn parse_csv(text: &str, currency: Option<Currency>) -> Result<ParsedCsv, String> {
    let text = text.trim_start_matches('\u{feff}');
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    // csv's own line count skips blank lines; count newlines before the record's first byte instead.
    let line_at = |byte: u64| {
        let mut end = usize::try_from(byte).unwrap_or(text.len()).min(text.len());
        // A record's position may be the blank lines skipped before it.
        while end < text.len() && matches!(text.as_bytes()[end], b'\n' | b'\r') {
            end += 1;
        }
        text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    };
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("line 1: {e}"))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (Some(code_col), Some(name_col)) = (column("code"), column("name")) else {
        return Err(format!(
            "line 1: the header must be `code,name,default_fee` (found `{}`)",
            headers.join(",")
        ));
    };
    let fee_col = column("default_fee");
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (index, record) in reader.records().enumerate() {
        let line = record
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map(|p| line_at(p.byte()))
            .unwrap_or(index + 2);
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                errors.push((line, format!("not a CSV row: {err}")));
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        let mut problems = Vec::new();
        if record.len() > headers.len() {
            problems.push(format!(
                "{} columns where the header has {} (quote a name or fee that contains a comma)",
                record.len(),
                headers.len()
            ));
        }
        let code = match normalize_code(record.get(code_col).unwrap_or_default()) {
            Ok(code) => Some(code),
            Err(e) => {
                problems.push(format!("code: {e}"));
                None
            }
        };
        let name = match validate_name(record.get(name_col).unwrap_or_default()) {
            Ok(name) => Some(name),
            Err(e) => {
                problems.push(format!("name: {e}"));
                None
            }
        };
        let fee_text = fee_col.and_then(|c| record.get(c)).unwrap_or_default();
        let mut default_fee = None;
        if let (false, Some(currency)) = (fee_text.is_empty(), currency) {
            match currency.parse_amount(fee_text) {
                Ok(minor) => default_fee = Some(minor),
                Err(e) => problems.push(format!("default_fee: {e}")),
            }
        }
        if let Some(code) = &code
            && let Some(first) = seen.get(code)
        {
            problems.push(format!("code: {code} already appears on line {first}"));
        }
        match (code, name) {
            (Some(code), Some(name)) if problems.is_empty() => {
                seen.insert(code.clone(), line);
                rows.push(ImportRow {
                    line,
                    code,
                    name,
                    default_fee,
                });
            }
            _ => errors.push((line, problems.join("; "))),
        }
    }
    Ok((rows, errors))
}

/// How well a code matches a search, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchRank {
    ExactCode,
    CodePrefix,
    /// Every word of the query starts a word of the name.
    AllWordStarts,
    /// Some words found in the name; fewer missing words rank higher.
    Words {
        missing: usize,
    },
}

/// The words of a search or a name: lower case, split on anything not a letter or digit.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// How `code`/`name` match `query`, or None.
pub fn rank(query: &str, code: &str, name: &str) -> Option<MatchRank> {
    let q = query.trim();
    if q.is_empty() {
        return None;
    }
    if q.eq_ignore_ascii_case(code) {
        return Some(MatchRank::ExactCode);
    }
    if code.len() > q.len()
        && code[..q.len()].eq_ignore_ascii_case(q)
        && code.is_char_boundary(q.len())
    {
        return Some(MatchRank::CodePrefix);
    }
    let query_words = words(q);
    if query_words.is_empty() {
        return None;
    }
    let name_words = words(name);
    let lower_name = name.to_lowercase();
    if query_words
        .iter()
        .all(|qw| name_words.iter().any(|nw| nw.starts_with(qw.as_str())))
    {
        return Some(MatchRank::AllWordStarts);
    }
    let found = query_words
        .iter()
        .filter(|qw| lower_name.contains(qw.as_str()))
        .count();
    (found > 0).then_some(MatchRank::Words {
        missing: query_words.len() - found,
    })
}

/// Orders (rank, code) pairs: best rank first, then by code.
pub fn compare(a: (MatchRank, &str), b: (MatchRank, &str)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_the_code_ranges() {
        assert_eq!(Category::of_code("D0120"), Category::Diagnostic);
        assert_eq!(Category::of_code("D2740"), Category::Restorative);
        assert_eq!(
            Category::of_code("D5986"),
            Category::MaxillofacialProsthetics
        );
        assert_eq!(Category::of_code("D6010"), Category::ImplantServices);
        assert_eq!(Category::of_code("D6750"), Category::ProsthodonticsFixed);
        assert_eq!(Category::of_code("D9999"), Category::Adjunctive);
        assert_eq!(Category::of_code("X123"), Category::Unspecified);
    }

    #[test]
    fn codes_are_normalized() {
        assert_eq!(normalize_code(" d2740 "), Ok("D2740".into()));
        assert!(normalize_code("").is_err());
        assert!(normalize_code("D 27").is_err());
        assert!(normalize_code("D27401234567890123").is_err());
    }

    #[test]
    fn csv_rows_and_errors_with_line_numbers() {
        let usd = Currency::parse("USD").ok();
        let csv = "code,name,default_fee\nD2740,Porcelain crown,1250.50\nD7140,\"Extraction, simple\",\nbad code,x,1\nD0120,Exam,12,50\nD2740,Again,1\n\nD1110,Cleaning,95\n";
        let (rows, errors) = parse_csv(csv, usd).expect("parses");
        assert_eq!(
            rows.iter()
                .map(|r| (r.line, r.code.as_str(), r.default_fee))
                .collect::<Vec<_>>(),
            vec![
                (2, "D2740", Some(125050)),
                (3, "D7140", None),
                (8, "D1110", Some(9500))
            ]
        );
        assert_eq!(rows[1].name, "Extraction, simple");
        let lines: Vec<usize> = errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![4, 5, 6]);
        assert!(
            errors[1].1.contains("4 columns where the header has 3"),
            "{errors:?}"
        );
        assert!(
            errors[2].1.contains("already appears on line 2"),
            "{errors:?}"
        );
        assert!(parse_csv("foo,bar\n1,2\n", usd).is_err());
    }

    #[test]
    fn a_fee_with_a_comma_is_refused_when_quoted() {
        let usd = Currency::parse("USD").ok();
        let (rows, errors) =
            parse_csv("code,name,default_fee\nD0120,Exam,\"12,50\"\n", usd).expect("parses");
        assert!(rows.is_empty());
        assert!(
            errors[0]
                .1
                .contains("default_fee: `12,50` is not a decimal amount"),
            "{errors:?}"
        );
    }

    #[test]
    fn search_ranks_code_then_words() {
        assert_eq!(
            rank("d2740", "D2740", "Porcelain crown"),
            Some(MatchRank::ExactCode)
        );
        assert_eq!(
            rank("D27", "D2740", "Porcelain crown"),
            Some(MatchRank::CodePrefix)
        );
        assert_eq!(
            rank("crown porc", "D2740", "Porcelain crown"),
            Some(MatchRank::AllWordStarts)
        );
        assert_eq!(
            rank("CROWN", "D2740", "Porcelain crown"),
            Some(MatchRank::AllWordStarts)
        );
        assert_eq!(
            rank("crown gold", "D2790", "Full gold crown"),
            Some(MatchRank::AllWordStarts)
        );
        assert_eq!(
            rank("crown zirconia", "D2740", "Porcelain crown"),
            Some(MatchRank::Words { missing: 1 })
        );
        assert_eq!(
            rank("own", "D2740", "Porcelain crown"),
            Some(MatchRank::Words { missing: 0 })
        );
        assert_eq!(rank("implant", "D2740", "Porcelain crown"), None);
        assert!(MatchRank::CodePrefix < MatchRank::AllWordStarts);
        assert!(MatchRank::Words { missing: 0 } < MatchRank::Words { missing: 1 });
    }
}
