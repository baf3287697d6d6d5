//! The platform master list: CDT-style procedure codes with Followup's own short plain-language names.
//! The ADA's descriptors are copyrighted, so none are used here; a clinic that holds a licence imports
//! its own list (CatalogService.ImportCodes). Compiled in: every clinic copies from the same list, and a
//! new release of Followup brings its additions without a data migration.

use super::catalog::Category;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasterCode {
    pub code: &'static str,
    pub name: &'static str,
    /// Usually done on one tooth (a plan item then asks for one).
    pub tooth_expected: bool,
}

impl MasterCode {
    pub fn category(&self) -> Category {
        Category::of_code(self.code)
    }
}

const fn c(code: &'static str, name: &'static str, tooth_expected: bool) -> MasterCode {
    MasterCode {
        code,
        name,
        tooth_expected,
    }
}

/// Ordered by code.
pub const MASTER_CODES: &[MasterCode] = &[
    // Diagnostic
    c("D0120", "Routine check-up exam", false),
    c("D0140", "Emergency exam, one problem", false),
    c("D0145", "Exam for a child under three", false),
    c("D0150", "New patient full exam", false),
    c("D0160", "In-depth exam for a complex problem", false),
    c("D0170", "Follow-up exam of one problem", false),
    c("D0180", "Full gum exam", false),
    c("D0210", "Full-mouth X-ray series", false),
    c("D0220", "Single X-ray, first image", true),
    c("D0230", "Single X-ray, each extra image", true),
    c("D0272", "Bitewing X-rays, two images", false),
    c("D0274", "Bitewing X-rays, four images", false),
    c("D0330", "Panoramic X-ray", false),
    c("D0340", "Head and jaw profile X-ray", false),
    c("D0367", "3D cone-beam scan, both jaws", false),
    c("D0431", "Oral cancer screening with a light aid", false),
    c("D0460", "Tooth nerve vitality test", true),
    c("D0470", "Study models of the teeth", false),
    c("D0801", "3D intraoral digital scan", false),
    // Preventive
    c("D1110", "Adult cleaning", false),
    c("D1120", "Child cleaning", false),
    c("D1206", "Fluoride varnish", false),
    c("D1208", "Fluoride treatment", false),
    c("D1330", "Oral hygiene coaching", false),
    c("D1351", "Sealant on a back tooth", true),
    c("D1354", "Cavity-arresting medicine on a tooth", true),
    c("D1510", "Space keeper, one side", false),
    c("D1516", "Space keeper, both sides upper", false),
    c("D1517", "Space keeper, both sides lower", false),
    // Restorative
    c("D2140", "Silver filling, one surface", true),
    c("D2150", "Silver filling, two surfaces", true),
    c("D2160", "Silver filling, three surfaces", true),
    c("D2161", "Silver filling, four or more surfaces", true),
    c(
        "D2330",
        "Tooth-coloured filling, front tooth, one surface",
        true,
    ),
    c(
        "D2331",
        "Tooth-coloured filling, front tooth, two surfaces",
        true,
    ),
    c(
        "D2332",
        "Tooth-coloured filling, front tooth, three surfaces",
        true,
    ),
    c(
        "D2335",
        "Tooth-coloured filling, front tooth, large or edge",
        true,
    ),
    c(
        "D2391",
        "Tooth-coloured filling, back tooth, one surface",
        true,
    ),
    c(
        "D2392",
        "Tooth-coloured filling, back tooth, two surfaces",
        true,
    ),
    c(
        "D2393",
        "Tooth-coloured filling, back tooth, three surfaces",
        true,
    ),
    c(
        "D2394",
        "Tooth-coloured filling, back tooth, four or more surfaces",
        true,
    ),
    c("D2510", "Metal inlay, one surface", true),
    c("D2610", "Porcelain inlay, one surface", true),
    c("D2642", "Porcelain onlay, two surfaces", true),
    c("D2740", "Porcelain crown", true),
    c("D2750", "Porcelain crown on precious metal", true),
    c("D2790", "Full gold crown", true),
    c("D2920", "Re-cement a crown", true),
    c("D2930", "Ready-made steel crown, baby tooth", true),
    c("D2931", "Ready-made steel crown, adult tooth", true),
    c("D2940", "Temporary protective filling", true),
    c("D2950", "Core build-up under a crown", true),
    c("D2954", "Ready-made post and core", true),
    c("D2962", "Porcelain veneer", true),
    c("D2980", "Crown repair", true),
    // Endodontics
    c("D3110", "Direct pulp cap", true),
    c("D3220", "Baby tooth nerve removal", true),
    c("D3310", "Root canal, front tooth", true),
    c("D3320", "Root canal, premolar", true),
    c("D3330", "Root canal, molar", true),
    c("D3346", "Redo root canal, front tooth", true),
    c("D3347", "Redo root canal, premolar", true),
    c("D3348", "Redo root canal, molar", true),
    c("D3410", "Root tip surgery, front tooth", true),
    // Periodontics
    c("D4210", "Gum reshaping surgery, quadrant", false),
    c("D4249", "Crown lengthening", true),
    c("D4266", "Guided gum tissue regrowth", true),
    c("D4273", "Gum graft from the palate", true),
    c(
        "D4341",
        "Deep cleaning, four or more teeth per quadrant",
        false,
    ),
    c(
        "D4342",
        "Deep cleaning, one to three teeth per quadrant",
        false,
    ),
    c("D4346", "Cleaning of inflamed gums", false),
    c("D4355", "Full-mouth debridement", false),
    c("D4381", "Antibiotic placed in a gum pocket", true),
    c("D4910", "Gum maintenance cleaning", false),
    // Prosthodontics, removable
    c("D5110", "Full upper denture", false),
    c("D5120", "Full lower denture", false),
    c("D5130", "Immediate full upper denture", false),
    c("D5140", "Immediate full lower denture", false),
    c("D5211", "Partial upper denture, resin base", false),
    c("D5212", "Partial lower denture, resin base", false),
    c("D5213", "Partial upper denture, metal frame", false),
    c("D5214", "Partial lower denture, metal frame", false),
    c("D5410", "Denture adjustment, upper", false),
    c("D5511", "Denture base repair", false),
    c("D5750", "Denture reline, upper, lab", false),
    c("D5820", "Temporary partial denture, upper", false),
    c("D5863", "Implant-held full upper denture", false),
    // Maxillofacial prosthetics
    c("D5982", "Surgical stent", false),
    c("D5986", "Fluoride carrier tray", false),
    c("D5988", "Surgical splint", false),
    // Implant services
    c("D6010", "Implant placement", true),
    c("D6013", "Mini implant placement", true),
    c("D6056", "Ready-made implant abutment", true),
    c("D6057", "Custom implant abutment", true),
    c("D6058", "Porcelain crown on an implant abutment", true),
    c("D6065", "Porcelain crown on an implant", true),
    c("D6080", "Implant maintenance cleaning", false),
    c("D6100", "Implant removal", true),
    c("D6104", "Bone graft at implant placement", true),
    c("D6190", "Implant position guide X-ray", false),
    // Prosthodontics, fixed
    c("D6240", "Bridge tooth, porcelain on precious metal", true),
    c("D6245", "Bridge tooth, porcelain", true),
    c("D6545", "Resin-bonded bridge wing", true),
    c("D6740", "Bridge crown, porcelain", true),
    c("D6750", "Bridge crown, porcelain on precious metal", true),
    c("D6930", "Re-cement a bridge", false),
    c("D6980", "Bridge repair", false),
    // Oral surgery
    c("D7111", "Extraction of a baby tooth remnant", true),
    c("D7140", "Simple extraction", true),
    c("D7210", "Surgical extraction", true),
    c("D7220", "Wisdom tooth removal, soft tissue", true),
    c("D7230", "Wisdom tooth removal, partly in bone", true),
    c("D7240", "Wisdom tooth removal, fully in bone", true),
    c("D7250", "Root tip removal", true),
    c("D7286", "Soft tissue biopsy", false),
    c("D7310", "Bone smoothing with extractions, quadrant", false),
    c("D7510", "Drain an abscess through the mouth", true),
    c("D7953", "Bone graft to save an extraction site", true),
    c("D7960", "Frenum release", false),
    // Orthodontics
    c("D8010", "Limited braces, baby teeth", false),
    c("D8070", "Full braces, teen", false),
    c("D8080", "Full braces, adolescent", false),
    c("D8090", "Full braces, adult", false),
    c("D8660", "Orthodontic consultation visit", false),
    c("D8670", "Orthodontic adjustment visit", false),
    c("D8680", "Retainers at the end of braces", false),
    c("D8703", "Replacement retainer, upper", false),
    // Adjunctive
    c("D9110", "Emergency pain relief", false),
    c("D9222", "Deep sedation, first 15 minutes", false),
    c("D9230", "Laughing gas", false),
    c("D9239", "IV sedation, first 15 minutes", false),
    c("D9310", "Second-opinion consultation", false),
    c("D9440", "Office visit after hours", false),
    c("D9910", "Desensitizing medicine", false),
    c("D9940", "Night guard", false),
    c("D9944", "Hard night guard, full arch", false),
    c("D9972", "Tooth whitening in the office, per arch", false),
    c("D9975", "Take-home whitening, per arch", false),
    c("D9986", "Missed appointment", false),
    c("D9999", "Unlisted procedure, by report", false),
];

pub fn find(code: &str) -> Option<&'static MasterCode> {
    MASTER_CODES
        .binary_search_by(|m| m.code.cmp(code))
        .ok()
        .map(|i| &MASTER_CODES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_unique_and_covers_every_category() {
        for pair in MASTER_CODES.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} before {}",
                pair[0].code,
                pair[1].code
            );
        }
        for category in Category::ALL.into_iter().skip(1) {
            assert!(
                MASTER_CODES.iter().any(|m| m.category() == category),
                "{category:?} has codes"
            );
        }
        assert_eq!(find("D6010").map(|m| m.name), Some("Implant placement"));
        assert!(find("D0000").is_none());
        assert!(MASTER_CODES.len() >= 100);
    }
}
