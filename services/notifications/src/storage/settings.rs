//! A clinic's delivery settings and message categories.

use std::time::Duration;

use chrono_tz::Tz;
use sqlx::PgConnection;

use followup_platform::pacing::{QuietHours, format_hhmm, parse_hhmm};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SettingsRow {
    pub tenant_id: String,
    pub time_zone: String,
    pub quiet_hours_start: String,
    pub quiet_hours_end: String,
    pub weekly_cap: i32,
    pub cap_deferral_limit_secs: i64,
    pub clinic_name: String,
    pub clinic_phone: String,
    pub help_reply: String,
    pub default_task_owner_staff_id: String,
    pub email_from: String,
    /// UnknownOutcomePolicy numbers, per channel (1 at-most-once, 2 at-least-once).
    pub sms_unknown_outcome: i32,
    pub email_unknown_outcome: i32,
    pub webhook_unknown_outcome: i32,
}

impl SettingsRow {
    pub fn defaults(tenant: &str, default_zone: &str) -> Self {
        let quiet = QuietHours::default();
        Self {
            tenant_id: tenant.to_string(),
            time_zone: default_zone.to_string(),
            quiet_hours_start: format_hhmm(quiet.start),
            quiet_hours_end: format_hhmm(quiet.end),
            weekly_cap: 3,
            cap_deferral_limit_secs: 7 * 86400,
            clinic_name: String::new(),
            clinic_phone: String::new(),
            help_reply: "Reply STOP to stop messages, START to resume. For help call the clinic."
                .into(),
            default_task_owner_staff_id: String::new(),
            email_from: String::new(),
            sms_unknown_outcome: AT_MOST_ONCE,
            email_unknown_outcome: AT_MOST_ONCE,
            webhook_unknown_outcome: AT_MOST_ONCE,
        }
    }

    /// Whether the clinic lets `channel` send again after an attempt whose outcome is unknown (when the
    /// channel cannot make the second try harmless with an idempotency key).
    pub fn resend_when_unknown(&self, channel: crate::domain::Channel) -> bool {
        use crate::domain::Channel;
        let policy = match channel {
            Channel::Sms => self.sms_unknown_outcome,
            Channel::Email => self.email_unknown_outcome,
            Channel::Webhook => self.webhook_unknown_outcome,
            // Stored or created in our own database: never unknown.
            Channel::Chat | Channel::Task => AT_LEAST_ONCE,
        };
        policy == AT_LEAST_ONCE
    }

    pub fn zone(&self) -> Tz {
        self.time_zone.parse().unwrap_or(Tz::UTC)
    }

    pub fn quiet(&self) -> QuietHours {
        let default = QuietHours::default();
        QuietHours {
            start: parse_hhmm(&self.quiet_hours_start).unwrap_or(default.start),
            end: parse_hhmm(&self.quiet_hours_end).unwrap_or(default.end),
        }
    }

    pub fn cap_deferral_limit(&self) -> Duration {
        Duration::from_secs(self.cap_deferral_limit_secs.max(0) as u64)
    }

    /// `{{ clinic_name }}` before the clinic has set one.
    pub fn display_name(&self) -> String {
        if self.clinic_name.is_empty() {
            "your clinic".into()
        } else {
            self.clinic_name.clone()
        }
    }

    /// `{{ clinic_phone }}` before the clinic has set one: still a sentence ("call the clinic").
    pub fn display_phone(&self) -> String {
        if self.clinic_phone.is_empty() {
            "the clinic".into()
        } else {
            self.clinic_phone.clone()
        }
    }

    pub fn help_text(&self) -> String {
        let mut text = self.help_reply.clone();
        if !self.clinic_name.is_empty() && !text.contains(&self.clinic_name) {
            text = format!("{}: {text}", self.clinic_name);
        }
        if !self.clinic_phone.is_empty() && !text.contains(&self.clinic_phone) {
            text = format!("{text} {}", self.clinic_phone);
        }
        text
    }
}

/// UnknownOutcomePolicy numbers.
pub const AT_MOST_ONCE: i32 = 1;
pub const AT_LEAST_ONCE: i32 = 2;

const COLUMNS: &str = "tenant_id, time_zone, quiet_hours_start, quiet_hours_end, weekly_cap, cap_deferral_limit_secs, \
    clinic_name, clinic_phone, help_reply, default_task_owner_staff_id, email_from, sms_unknown_outcome, \
    email_unknown_outcome, webhook_unknown_outcome";

pub async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    default_zone: &str,
) -> Result<SettingsRow, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM delivery_settings WHERE tenant_id = $1");
    Ok(
        sqlx::query_as::<sqlx::Postgres, SettingsRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_optional(conn)
            .await?
            .unwrap_or_else(|| SettingsRow::defaults(tenant, default_zone)),
    )
}

pub async fn put(conn: &mut PgConnection, s: &SettingsRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO delivery_settings (tenant_id, time_zone, quiet_hours_start, quiet_hours_end, weekly_cap,
            cap_deferral_limit_secs, clinic_name, clinic_phone, help_reply, default_task_owner_staff_id, email_from,
            sms_unknown_outcome, email_unknown_outcome, webhook_unknown_outcome)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (tenant_id) DO UPDATE SET time_zone = EXCLUDED.time_zone,
            quiet_hours_start = EXCLUDED.quiet_hours_start, quiet_hours_end = EXCLUDED.quiet_hours_end,
            weekly_cap = EXCLUDED.weekly_cap, cap_deferral_limit_secs = EXCLUDED.cap_deferral_limit_secs,
            clinic_name = EXCLUDED.clinic_name, clinic_phone = EXCLUDED.clinic_phone,
            help_reply = EXCLUDED.help_reply, default_task_owner_staff_id = EXCLUDED.default_task_owner_staff_id,
            email_from = EXCLUDED.email_from, sms_unknown_outcome = EXCLUDED.sms_unknown_outcome,
            email_unknown_outcome = EXCLUDED.email_unknown_outcome,
            webhook_unknown_outcome = EXCLUDED.webhook_unknown_outcome, updated_at = now()",
    )
    .bind(&s.tenant_id)
    .bind(&s.time_zone)
    .bind(&s.quiet_hours_start)
    .bind(&s.quiet_hours_end)
    .bind(s.weekly_cap)
    .bind(s.cap_deferral_limit_secs)
    .bind(&s.clinic_name)
    .bind(&s.clinic_phone)
    .bind(&s.help_reply)
    .bind(&s.default_task_owner_staff_id)
    .bind(&s.email_from)
    .bind(s.sms_unknown_outcome)
    .bind(s.email_unknown_outcome)
    .bind(s.webhook_unknown_outcome)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CategoryRow {
    pub key: String,
    pub display_name: String,
    pub description: String,
    /// 1 patient, 2 staff.
    pub audience: i32,
    pub transactional: bool,
}

/// Categories every clinic has.
pub fn built_in() -> Vec<CategoryRow> {
    let c = |key: &str, name: &str, description: &str, audience: i32, transactional: bool| {
        CategoryRow {
            key: key.into(),
            display_name: name.into(),
            description: description.into(),
            audience,
            transactional,
        }
    };
    vec![
        c(
            "treatment_follow_up",
            "Treatment plan reminders",
            "Follow-ups about plans you were sent",
            1,
            false,
        ),
        c(
            "recall",
            "Check-up reminders",
            "When it is time for your next visit",
            1,
            false,
        ),
        c(
            "appointment_reminders",
            "Appointment reminders",
            "Reminders of booked appointments",
            1,
            true,
        ),
        c(
            "slot_offers",
            "Earlier appointment offers",
            "Offers of earlier appointments from the waitlist",
            1,
            true,
        ),
        c(
            "marketing",
            "News and offers",
            "The clinic's news and offers",
            1,
            false,
        ),
        c(
            "approval_alert",
            "Plan approved alerts",
            "An email when a patient approves a plan",
            2,
            false,
        ),
        c(
            "reply_alert",
            "Patient reply alerts",
            "An email when a patient replies",
            2,
            false,
        ),
        c(
            "daily_digest",
            "Daily digest",
            "The daily email of your follow-up queue",
            2,
            false,
        ),
    ]
}

pub async fn list_categories(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Vec<(CategoryRow, bool)>, sqlx::Error> {
    let own = sqlx::query_as::<sqlx::Postgres, CategoryRow>(
        "SELECT key, display_name, description, audience, transactional FROM categories WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    let mut out: Vec<(CategoryRow, bool)> = built_in()
        .into_iter()
        .map(|b| match own.iter().find(|o| o.key == b.key) {
            Some(o) => (o.clone(), true),
            None => (b, true),
        })
        .collect();
    for o in own {
        if !out.iter().any(|(c, _)| c.key == o.key) {
            out.push((o, false));
        }
    }
    out.sort_by(|a, b| (a.0.audience, &a.0.key).cmp(&(b.0.audience, &b.0.key)));
    Ok(out)
}

pub async fn upsert_category(
    conn: &mut PgConnection,
    tenant: &str,
    c: &CategoryRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO categories (tenant_id, key, display_name, description, audience, transactional)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, key) DO UPDATE SET display_name = EXCLUDED.display_name,
           description = EXCLUDED.description, audience = EXCLUDED.audience,
           transactional = EXCLUDED.transactional",
    )
    .bind(tenant)
    .bind(&c.key)
    .bind(&c.display_name)
    .bind(&c.description)
    .bind(c.audience)
    .bind(c.transactional)
    .execute(conn)
    .await?;
    Ok(())
}
