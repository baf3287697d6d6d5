//! Message templates: minijinja in strict mode. A template may use only the variables listed here
//! (refused at save, naming the unknown one); rendering with a variable missing fails rather than
//! sending a message with a hole in it.
//!
//! The shipped defaults are written for patients, and their SMS bodies carry no clinical detail: no
//! procedure names or diagnoses, only "your treatment plan" and the link, because a text message can be
//! read by anyone who picks up the phone.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{Environment, UndefinedBehavior, Value};

use super::Channel;
use super::gsm::{self, SmsCost};

/// A variable templates may use.
#[derive(Clone, Copy, Debug)]
pub struct Variable {
    pub name: &'static str,
    pub description: &'static str,
    pub example: &'static str,
    /// Present only when the request carries it (e.g. the portal link of a plan follow-up).
    pub request_supplied: bool,
}

const fn var(name: &'static str, description: &'static str, example: &'static str) -> Variable {
    Variable {
        name,
        description,
        example,
        request_supplied: false,
    }
}

const fn req(name: &'static str, description: &'static str, example: &'static str) -> Variable {
    Variable {
        name,
        description,
        example,
        request_supplied: true,
    }
}

pub const VARIABLES: &[Variable] = &[
    var(
        "patient_first_name",
        "The patient's preferred or given name",
        "Maria",
    ),
    var("patient_name", "The patient's full name", "Maria Silva"),
    var(
        "clinic_name",
        "The clinic's name (delivery settings)",
        "Smile Dental",
    ),
    var(
        "clinic_phone",
        "The clinic's phone (delivery settings)",
        "+15125550100",
    ),
    var("owner_name", "The case's accountable owner", "Dr Ana Lima"),
    var(
        "staff_name",
        "The staff member a staff message is for",
        "Dr Ana Lima",
    ),
    var(
        "unsubscribe_url",
        "One-click unsubscribe link of the message's category (email)",
        "https://notify.example/unsubscribe/…",
    ),
    req(
        "portal_url",
        "The patient's link to their treatment plan",
        "https://portal.example/p/…",
    ),
    req(
        "appointment_time",
        "The appointment's start, in the patient's time zone",
        "Tue 3 Dec, 14:30",
    ),
    req(
        "slot_claim_url",
        "The link that claims an offered slot",
        "https://portal.example/claim/…",
    ),
    req(
        "case_title",
        "The case's title (staff messages only)",
        "Implant plan",
    ),
    req(
        "patient_reply",
        "What the patient wrote (staff reply alerts)",
        "Can I come on Friday?",
    ),
    req("task_title", "A task's title", "Call Maria about her plan"),
    req(
        "task_description",
        "A task's details",
        "Viewed twice, no reply for 6 days",
    ),
    req("digest_date", "The day of a digest", "2026-11-23"),
    req(
        "digest_entries",
        "The top of an owner's queue (list of rank, patient_name, title, status, value, reason)",
        "[…]",
    ),
    req("open_case_count", "The owner's open cases", "12"),
    req(
        "waiting_for_response_count",
        "Cases waiting for the patient's response",
        "4",
    ),
];

pub fn is_known(name: &str) -> bool {
    VARIABLES.iter().any(|v| v.name == name)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{field}: unknown variable `{name}`; templates may use: {known}")]
    UnknownVariable {
        field: &'static str,
        name: String,
        known: String,
    },
    #[error("{field}: syntax error on line {line}: {detail}")]
    Syntax {
        field: &'static str,
        line: usize,
        detail: String,
    },
    #[error("rendering {field}: {detail}")]
    Render { field: &'static str, detail: String },
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Texts and emails are plain text (the HTML part is the clinic's own markup); escaping would put
    // entities into an SMS.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// The parts of a template, as saved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateText {
    pub subject: String,
    pub body: String,
    pub html_body: String,
}

/// Checks every part and returns the variables used, sorted. Refuses syntax errors (with the line) and
/// unknown variables (by name).
pub fn validate(text: &TemplateText) -> Result<Vec<String>, TemplateError> {
    let env = environment();
    let mut used = BTreeSet::new();
    for (field, source) in [
        ("subject", &text.subject),
        ("body", &text.body),
        ("html_body", &text.html_body),
    ] {
        if source.is_empty() {
            continue;
        }
        let template = env
            .template_from_str(source)
            .map_err(|e| TemplateError::Syntax {
                field,
                line: e.line().unwrap_or(1),
                detail: e.detail().unwrap_or("invalid template").to_string(),
            })?;
        let mut names: Vec<String> = template.undeclared_variables(false).into_iter().collect();
        names.sort();
        for name in names {
            if !is_known(&name) {
                return Err(TemplateError::UnknownVariable {
                    field,
                    name,
                    known: VARIABLES
                        .iter()
                        .map(|v| v.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            used.insert(name);
        }
    }
    Ok(used.into_iter().collect())
}

/// A rendered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub body: String,
    pub html_body: String,
    /// SMS only.
    pub sms: Option<SmsCost>,
}

/// Renders for `channel` with `vars`. A variable the template uses and `vars` lacks is an error.
pub fn render(
    channel: Channel,
    text: &TemplateText,
    vars: &BTreeMap<String, Value>,
) -> Result<Rendered, TemplateError> {
    let env = environment();
    let ctx = Value::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let one = |field: &'static str, source: &str| -> Result<String, TemplateError> {
        if source.is_empty() {
            return Ok(String::new());
        }
        env.render_str(source, ctx.clone())
            .map_err(|e| TemplateError::Render {
                field,
                detail: match e.detail() {
                    Some(detail) => format!("{}: {detail}", e.kind()),
                    None => e.kind().to_string(),
                },
            })
    };
    let subject = one("subject", &text.subject)?;
    let body = one("body", &text.body)?;
    let html_body = one("html_body", &text.html_body)?;
    let sms = (channel == Channel::Sms).then(|| gsm::cost(&body));
    Ok(Rendered {
        subject: subject.trim().to_string(),
        body: body.trim().to_string(),
        html_body,
        sms,
    })
}

/// A JSON value (request variables, digest entries) as a template value.
pub fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(n.to_string()),
        },
        serde_json::Value::String(s) => Value::from(s.clone()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(json_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_value(v))))
        }
    }
}

/// A shipped default template.
#[derive(Clone, Debug)]
pub struct DefaultTemplate {
    pub key: &'static str,
    pub channel: Channel,
    pub name: &'static str,
    pub category: &'static str,
    pub subject: &'static str,
    pub body: &'static str,
}

struct Default2 {
    key: &'static str,
    name: &'static str,
    category: &'static str,
    /// SMS and chat text: no clinical detail.
    sms: &'static str,
    subject: &'static str,
    email: &'static str,
}

const FOOTER: &str =
    "\n\n{{ clinic_name }} · {{ clinic_phone }}\nTo stop these emails: {{ unsubscribe_url }}";

const PATIENT_DEFAULTS: &[Default2] = &[
    Default2 {
        key: "plan_follow_up_1",
        name: "Plan follow-up, first reminder",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, it's {{ clinic_name }}. Your treatment plan is ready whenever you are: {{ portal_url }} Questions? Call {{ clinic_phone }}. Reply STOP to opt out.",
        subject: "Your treatment plan from {{ clinic_name }}",
        email: "Hi {{ patient_first_name }},\n\nYour treatment plan is ready for you to look at whenever suits you:\n{{ portal_url }}\n\nIf you have any questions, reply to this email or call us on {{ clinic_phone }}.",
    },
    Default2 {
        key: "plan_follow_up_2",
        name: "Plan follow-up, second reminder",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, just checking in from {{ clinic_name }} about your treatment plan: {{ portal_url }} Happy to answer questions on {{ clinic_phone }}. Reply STOP to opt out.",
        subject: "Any questions about your treatment plan?",
        email: "Hi {{ patient_first_name }},\n\nWe wanted to check whether you had a chance to look at your treatment plan:\n{{ portal_url }}\n\nWe are happy to talk it through: call {{ clinic_phone }} or reply here.",
    },
    Default2 {
        key: "plan_follow_up_3",
        name: "Plan follow-up, third reminder",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, {{ clinic_name }} here. When you're ready to book the next step of your plan, it's here: {{ portal_url }} or call {{ clinic_phone }}. Reply STOP to opt out.",
        subject: "Ready for the next step?",
        email: "Hi {{ patient_first_name }},\n\nWhenever you are ready to book the next step of your treatment plan, you can see it here:\n{{ portal_url }}\n\nOr call us on {{ clinic_phone }}.",
    },
    Default2 {
        key: "plan_follow_up_4",
        name: "Plan follow-up, last reminder",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, a last note from {{ clinic_name }}: your treatment plan stays here for you: {{ portal_url }} Call {{ clinic_phone }} any time. Reply STOP to opt out.",
        subject: "Your treatment plan is still here for you",
        email: "Hi {{ patient_first_name }},\n\nThis is our last reminder: your treatment plan is still here for you whenever you want it:\n{{ portal_url }}\n\nCall {{ clinic_phone }} any time.",
    },
    Default2 {
        key: "plan_viewed_no_response",
        name: "Plan viewed, no response",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, thanks for looking at your treatment plan. Any questions? Reply here or call {{ clinic_name }} on {{ clinic_phone }}. Reply STOP to opt out.",
        subject: "Questions about your treatment plan?",
        email: "Hi {{ patient_first_name }},\n\nThank you for taking a look at your treatment plan. If anything is unclear, or you would like to book, reply to this email or call {{ clinic_phone }}.\n\n{{ portal_url }}",
    },
    Default2 {
        key: "quote_unanswered",
        name: "Quote unanswered",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, {{ clinic_name }} here about the plan we sent you: {{ portal_url }} Call {{ clinic_phone }} with any questions. Reply STOP to opt out.",
        subject: "About the plan we sent you",
        email: "Hi {{ patient_first_name }},\n\nWe sent you a treatment plan a little while ago and wanted to make sure it reached you:\n{{ portal_url }}\n\nCall {{ clinic_phone }} with any questions.",
    },
    Default2 {
        key: "new_enquiry",
        name: "New enquiry",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, thanks for getting in touch with {{ clinic_name }}. We'll call you shortly, or reach us on {{ clinic_phone }}. Reply STOP to opt out.",
        subject: "Thanks for contacting {{ clinic_name }}",
        email: "Hi {{ patient_first_name }},\n\nThank you for getting in touch. One of our team will call you shortly; you can also reach us on {{ clinic_phone }}.",
    },
    Default2 {
        key: "no_show",
        name: "Missed appointment",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, we missed you today at {{ clinic_name }}. Call {{ clinic_phone }} to find a new time. Reply STOP to opt out.",
        subject: "We missed you today",
        email: "Hi {{ patient_first_name }},\n\nWe missed you at your appointment today. No problem: call us on {{ clinic_phone }} or reply here and we will find a new time.",
    },
    Default2 {
        key: "cancellation",
        name: "Cancelled appointment",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, {{ clinic_name }} here. Your appointment was cancelled; call {{ clinic_phone }} to rebook when it suits you. Reply STOP to opt out.",
        subject: "Let's find you a new appointment",
        email: "Hi {{ patient_first_name }},\n\nYour appointment was cancelled. When it suits you, call {{ clinic_phone }} or reply here to book a new time.",
    },
    Default2 {
        key: "consultation_no_next_visit",
        name: "Consultation, no next visit booked",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, thanks for visiting {{ clinic_name }}. Call {{ clinic_phone }} to book your next visit. Reply STOP to opt out.",
        subject: "Booking your next visit",
        email: "Hi {{ patient_first_name }},\n\nThank you for coming in. When you are ready to book your next visit, call {{ clinic_phone }} or reply to this email.",
    },
    Default2 {
        key: "lapsed_patient",
        name: "Lapsed patient recall",
        category: "recall",
        sms: "Hi {{ patient_first_name }}, it's been a while! {{ clinic_name }} would love to see you. Call {{ clinic_phone }} to book. Reply STOP to opt out.",
        subject: "It's been a while",
        email: "Hi {{ patient_first_name }},\n\nIt has been a while since your last visit. Call {{ clinic_phone }} or reply to book a check-up.",
    },
    Default2 {
        key: "care_case_expiring",
        name: "Referral expiring",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, {{ clinic_name }} here: your referral is due to expire soon. Call {{ clinic_phone }} to book your remaining visits. Reply STOP to opt out.",
        subject: "Your referral expires soon",
        email: "Hi {{ patient_first_name }},\n\nYour referral is due to expire soon. Call {{ clinic_phone }} to book your remaining visits before it does.",
    },
    Default2 {
        key: "care_case_sessions_reached",
        name: "Sessions milestone",
        category: "treatment_follow_up",
        sms: "Hi {{ patient_first_name }}, {{ clinic_name }} here: time for a quick check on your progress. Call {{ clinic_phone }} to book. Reply STOP to opt out.",
        subject: "Checking in on your progress",
        email: "Hi {{ patient_first_name }},\n\nYou have reached an important point in your course of care. Call {{ clinic_phone }} to book a progress check.",
    },
    Default2 {
        key: "appointment_reminder",
        name: "Appointment reminder",
        category: "appointment_reminders",
        sms: "Hi {{ patient_first_name }}, a reminder of your appointment at {{ clinic_name }} on {{ appointment_time }}. To change it call {{ clinic_phone }}. Reply STOP to opt out.",
        subject: "Your appointment on {{ appointment_time }}",
        email: "Hi {{ patient_first_name }},\n\nThis is a reminder of your appointment on {{ appointment_time }}. To change it, call {{ clinic_phone }}.",
    },
    Default2 {
        key: "slot_offer",
        name: "Earlier slot offer",
        category: "slot_offers",
        sms: "Hi {{ patient_first_name }}, {{ clinic_name }} has an earlier appointment on {{ appointment_time }}. Reply YES to take it or claim it here: {{ slot_claim_url }} Reply STOP to opt out.",
        subject: "An earlier appointment on {{ appointment_time }}",
        email: "Hi {{ patient_first_name }},\n\nAn earlier appointment is free on {{ appointment_time }}. The first to claim it gets it:\n{{ slot_claim_url }}",
    },
    Default2 {
        key: "slot_taken",
        name: "Slot already taken",
        category: "slot_offers",
        sms: "Hi {{ patient_first_name }}, sorry, that earlier slot at {{ clinic_name }} has been taken. We'll let you know if another comes up.",
        subject: "That slot has been taken",
        email: "Hi {{ patient_first_name }},\n\nSorry, the earlier appointment has already been taken. We will let you know if another one comes up.",
    },
];

const STAFF_DEFAULTS: &[DefaultTemplate] = &[
    DefaultTemplate {
        key: "approval_alert",
        channel: Channel::Email,
        name: "Plan approved (staff alert)",
        category: "approval_alert",
        subject: "{{ patient_name }} approved their plan",
        body: "Hi {{ staff_name }},\n\n{{ patient_name }} approved {{ case_title }}. Time to book the first visit.",
    },
    DefaultTemplate {
        key: "reply_alert",
        channel: Channel::Email,
        name: "Patient replied (staff alert)",
        category: "reply_alert",
        subject: "{{ patient_name }} replied",
        body: "Hi {{ staff_name }},\n\n{{ patient_name }} wrote:\n\n{{ patient_reply }}\n\nAnswer from the conversation view.",
    },
    DefaultTemplate {
        key: "daily_digest",
        channel: Channel::Email,
        name: "Daily follow-up digest",
        category: "daily_digest",
        subject: "Your follow-ups for {{ digest_date }}",
        body: "Hi {{ staff_name }},\n\nYou have {{ open_case_count }} open cases, {{ waiting_for_response_count }} waiting for a response. Top of your queue:\n{% for e in digest_entries %}\n{{ e.rank }}. {{ e.patient_name }}: {{ e.title }} ({{ e.value }}) {{ e.reason }}{% endfor %}",
    },
    DefaultTemplate {
        key: "task",
        channel: Channel::Task,
        name: "Follow-up task",
        category: "",
        subject: "{{ task_title }}",
        body: "{{ task_description }}",
    },
];

/// Every shipped default: each patient template on SMS, chat (the SMS text) and email; staff alerts by
/// email; the generic task.
fn defaults() -> Vec<DefaultTemplate> {
    let mut out = Vec::new();
    for d in PATIENT_DEFAULTS {
        out.push(DefaultTemplate {
            key: d.key,
            channel: Channel::Sms,
            name: d.name,
            category: d.category,
            subject: "",
            body: d.sms,
        });
        out.push(DefaultTemplate {
            key: d.key,
            channel: Channel::Chat,
            name: d.name,
            category: d.category,
            subject: "",
            body: d.sms,
        });
        out.push(DefaultTemplate {
            key: d.key,
            channel: Channel::Email,
            name: d.name,
            category: d.category,
            subject: d.subject,
            body: leak_footer(d.email),
        });
    }
    out.extend(STAFF_DEFAULTS.iter().cloned());
    out
}

fn leak_footer(body: &'static str) -> &'static str {
    // Built once per process (all_defaults caches the list).
    Box::leak(format!("{body}{FOOTER}").into_boxed_str())
}

/// The shipped default for (key, channel), if any.
pub fn default_for(key: &str, channel: Channel) -> Option<&'static DefaultTemplate> {
    all_defaults()
        .iter()
        .find(|d| d.key == key && d.channel == channel)
}

pub fn all_defaults() -> &'static [DefaultTemplate] {
    static DEFAULTS: std::sync::OnceLock<Vec<DefaultTemplate>> = std::sync::OnceLock::new();
    DEFAULTS.get_or_init(defaults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect()
    }

    #[test]
    fn unknown_variables_are_refused_by_name() {
        let text = TemplateText {
            body: "Hi {{ patient_first_name }}, your {{ procedure_name }} is booked".into(),
            ..Default::default()
        };
        match validate(&text) {
            Err(TemplateError::UnknownVariable { field, name, .. }) => {
                assert_eq!((field, name.as_str()), ("body", "procedure_name"));
            }
            other => panic!("expected an unknown variable, got {other:?}"),
        }
        let ok = TemplateText {
            subject: "Hello {{ patient_first_name }}".into(),
            body: "{{ clinic_name }}: {{ portal_url }}".into(),
            ..Default::default()
        };
        assert_eq!(
            validate(&ok).expect("valid"),
            vec!["clinic_name", "patient_first_name", "portal_url"]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let text = TemplateText {
            body: "line one\n{{ patient_first_name ".into(),
            ..Default::default()
        };
        match validate(&text) {
            Err(TemplateError::Syntax { field, line, .. }) => {
                assert_eq!((field, line), ("body", 2))
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn rendering_is_strict_and_plain() {
        let text = TemplateText {
            body: "Hi {{ patient_first_name }} & co: {{ portal_url }}".into(),
            ..Default::default()
        };
        let rendered = render(
            Channel::Sms,
            &text,
            &vars(&[
                ("patient_first_name", "Zoë"),
                ("portal_url", "https://p/x?a=1&b=2"),
            ]),
        )
        .expect("renders");
        assert_eq!(rendered.body, "Hi Zoë & co: https://p/x?a=1&b=2");
        assert!(rendered.sms.is_some());
        let missing = render(Channel::Sms, &text, &vars(&[("patient_first_name", "Zoë")]));
        assert!(matches!(missing, Err(TemplateError::Render { .. })));
    }

    #[test]
    fn defaults_are_valid_and_sms_carries_no_clinical_detail() {
        const CLINICAL: [&str; 16] = [
            "implant",
            "extraction",
            "crown",
            "root canal",
            "filling",
            "caries",
            "diagnos",
            "procedure",
            "surgery",
            "x-ray",
            "radiograph",
            "periodont",
            "cancer",
            "infection",
            "veneer",
            "orthodont",
        ];
        for d in all_defaults() {
            let text = TemplateText {
                subject: d.subject.into(),
                body: d.body.into(),
                html_body: String::new(),
            };
            validate(&text).unwrap_or_else(|e| panic!("default {} {:?}: {e}", d.key, d.channel));
            if d.channel == Channel::Sms {
                let lower = d.body.to_lowercase();
                for word in CLINICAL {
                    assert!(
                        !lower.contains(word),
                        "SMS default {} mentions {word}",
                        d.key
                    );
                }
                assert!(!d.body.contains("unsubscribe_url"), "SMS defaults use STOP");
            }
        }
        assert!(default_for("plan_follow_up_1", Channel::Sms).is_some());
        assert!(default_for("plan_follow_up_1", Channel::Email).is_some());
        assert!(default_for("daily_digest", Channel::Email).is_some());
        assert!(default_for("nope", Channel::Sms).is_none());
    }

    #[test]
    fn a_default_sms_fits_in_two_segments() {
        let mut v = vars(&[
            ("patient_first_name", "Maria"),
            ("clinic_name", "Smile Dental Studio"),
            ("clinic_phone", "+15125550100"),
            (
                "portal_url",
                "https://portal.example/p/0192f0c4-1b2c-7d3e-8f40-123456789abc",
            ),
            ("appointment_time", "Tue 3 Dec, 14:30"),
            ("slot_claim_url", "https://portal.example/claim/0192f0c4"),
        ]);
        v.insert("unsubscribe_url".into(), Value::from("https://x/u"));
        for d in all_defaults().iter().filter(|d| d.channel == Channel::Sms) {
            let text = TemplateText {
                body: d.body.into(),
                ..Default::default()
            };
            let rendered = render(Channel::Sms, &text, &v).expect("renders");
            let cost = rendered.sms.expect("sms cost");
            assert!(
                cost.segments <= 2,
                "{} is {} segments",
                d.key,
                cost.segments
            );
        }
    }
}
