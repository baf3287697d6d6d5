//! What an inbound message means: a consent keyword (carriers' STOP/START/HELP vocabulary), a revocation
//! in plain words, or a reply for staff.
//!
//! Keywords are matched on the whole message, case- and whitespace-insensitive, ignoring trailing
//! punctuation. The plain-words classifier is a handful of rules that err toward opt-out: wrongly
//! stopping reminders is an inconvenience staff can fix (the message is flagged for them), wrongly
//! texting someone who asked us to stop is a breach of trust and, in many places, of law.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Text,
    Affirmative,
    Negative,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// STOP and friends: SMS revoked for every category, at once.
    OptOutKeyword,
    /// Revocation in plain words ("please stop texting me"): treated as STOP, shown to staff.
    OptOutClassified,
    /// START, UNSTOP, or YES from a contact who opted out.
    OptIn,
    /// HELP: answered with the clinic's help reply.
    Help,
    Reply(ReplyKind),
}

const OPT_OUT: [&str; 11] = [
    "stop",
    "stopall",
    "stop all",
    "unsubscribe",
    "cancel",
    "end",
    "quit",
    "revoke",
    "optout",
    "opt out",
    "opt-out",
];
const OPT_IN: [&str; 2] = ["start", "unstop"];
const HELP: [&str; 2] = ["help", "info"];
const AFFIRMATIVE: [&str; 5] = ["yes", "y", "yes please", "yep", "yeah"];
const NEGATIVE: [&str; 4] = ["no", "n", "no thanks", "no thank you"];

/// Lower case, single spaces, no surrounding spaces or trailing punctuation.
pub fn normalize(text: &str) -> String {
    let lowered = text.to_lowercase();
    let words: Vec<&str> = lowered.split_whitespace().collect();
    words
        .join(" ")
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .replace(['\u{2019}', '\u{2018}'], "'")
}

/// Classifies `text`; `sms_opted_out` says whether the sender currently has SMS withdrawn (then YES
/// re-subscribes, as carriers expect).
pub fn classify(text: &str, sms_opted_out: bool) -> Inbound {
    let n = normalize(text);
    if OPT_OUT.contains(&n.as_str()) {
        return Inbound::OptOutKeyword;
    }
    if OPT_IN.contains(&n.as_str()) {
        return Inbound::OptIn;
    }
    if HELP.contains(&n.as_str()) {
        return Inbound::Help;
    }
    if AFFIRMATIVE.contains(&n.as_str()) {
        return if sms_opted_out {
            Inbound::OptIn
        } else {
            Inbound::Reply(ReplyKind::Affirmative)
        };
    }
    if NEGATIVE.contains(&n.as_str()) {
        return Inbound::Reply(ReplyKind::Negative);
    }
    if revokes_in_plain_words(&n) {
        return Inbound::OptOutClassified;
    }
    Inbound::Reply(ReplyKind::Text)
}

/// Things people say when they mean STOP.
const PHRASES: [&str; 24] = [
    "unsubscribe",
    "opt me out",
    "opt out",
    "take me off",
    "remove me from",
    "remove my number",
    "remove my details",
    "delete my number",
    "no more messages",
    "no more texts",
    "no more text",
    "no more emails",
    "no more reminders",
    "no more sms",
    "don't text",
    "dont text",
    "do not text",
    "don't message",
    "do not message",
    "don't contact",
    "dont contact",
    "do not contact",
    "leave me alone",
    "wrong number",
];

/// Words that make "stop …" about our messages.
const MESSAGING: [&str; 14] = [
    "text", "texting", "texts", "messag", "contact", "email", "sms", "sending", "send", "remind",
    "calling", "call", "spam", "bother",
];

fn revokes_in_plain_words(n: &str) -> bool {
    if PHRASES.iter().any(|p| n.contains(p)) {
        return true;
    }
    let words: Vec<&str> = n
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    let Some(stop_at) = words.iter().position(|w| *w == "stop" || *w == "stopp") else {
        return false;
    };
    // "stop" in a short message ("please stop", "stop it now") is a stop.
    if words.len() <= 4 {
        return true;
    }
    // "stop texting me", "stop sending me these messages": a messaging word soon after "stop".
    words
        .iter()
        .skip(stop_at + 1)
        .take(4)
        .any(|w| MESSAGING.iter().any(|m| w.starts_with(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_and_space_insensitive() {
        let table: &[(&str, bool, Inbound)] = &[
            ("STOP", false, Inbound::OptOutKeyword),
            ("  stop  ", false, Inbound::OptOutKeyword),
            ("Stop.", false, Inbound::OptOutKeyword),
            ("STOPALL", false, Inbound::OptOutKeyword),
            ("Unsubscribe", false, Inbound::OptOutKeyword),
            ("cancel", false, Inbound::OptOutKeyword),
            ("END", false, Inbound::OptOutKeyword),
            ("quit", false, Inbound::OptOutKeyword),
            ("REVOKE", false, Inbound::OptOutKeyword),
            ("optout", false, Inbound::OptOutKeyword),
            ("Opt   Out", false, Inbound::OptOutKeyword),
            ("START", true, Inbound::OptIn),
            ("unstop", true, Inbound::OptIn),
            ("start", false, Inbound::OptIn),
            ("YES", true, Inbound::OptIn),
            ("yes", false, Inbound::Reply(ReplyKind::Affirmative)),
            (" Yes! ", false, Inbound::Reply(ReplyKind::Affirmative)),
            ("HELP", false, Inbound::Help),
            ("no", false, Inbound::Reply(ReplyKind::Negative)),
        ];
        for (text, opted_out, expected) in table {
            assert_eq!(classify(text, *opted_out), *expected, "{text:?}");
        }
    }

    /// The classifier's own table: what must be read as revocation, and what must not.
    #[test]
    fn plain_words_revocation_table() {
        let revocations = [
            "please stop texting me",
            "Please stop",
            "stop it",
            "Stop sending me these messages please",
            "can you stop messaging me",
            "No more messages",
            "no more texts thanks",
            "take me off your list",
            "Take me off the list please",
            "remove me from your mailing list",
            "Please remove my number",
            "I want to unsubscribe",
            "how do I unsubscribe from this",
            "don't text me again",
            "Do not contact me",
            "leave me alone",
            "wrong number",
            "opt me out",
            "I'd like to opt out of these",
            "STOP TEXTING ME!!!",
            "I asked you to stop calling and texting",
            "no more reminders please",
            "Don\u{2019}t text me",
        ];
        for text in revocations {
            assert_eq!(
                classify(text, false),
                Inbound::OptOutClassified,
                "{text:?} should be read as a revocation"
            );
        }
        let replies = [
            "Can I move my appointment to Thursday?",
            "I'll stop by the clinic on Tuesday to sign the forms",
            "Thanks, see you tomorrow",
            "What time does the clinic open?",
            "I have a question about my treatment plan",
            "Is the payment plan still available?",
            "Yes please book me in",
            "Sorry I missed the appointment, can we rebook",
            "The pain has stopped, do I still need to come?",
            "ok",
        ];
        for text in replies {
            assert_eq!(
                classify(text, false),
                Inbound::Reply(ReplyKind::Text),
                "{text:?} should be a reply"
            );
        }
    }
}
