//! The clinic's scheduling settings: its time zone, closed days and default task owner.

use chrono::{Datelike, NaiveDate, Weekday};
use chrono_tz::Tz;
use followup_proto::followup::scheduler::v1 as pb;
use sqlx::PgConnection;

use crate::domain::schedule::{ClinicCalendar, WeekdayKey};
use crate::error::Result;

/// A clinic that never set its zone schedules in UTC until it does (and the API says so).
pub const DEFAULT_ZONE: Tz = chrono_tz::UTC;

#[derive(Clone, Debug)]
pub struct ClinicSettings {
    pub tz: Tz,
    pub calendar: ClinicCalendar,
    pub closed_weekdays: Vec<i16>,
    pub closed_dates: Vec<NaiveDate>,
    pub default_owner_staff_id: String,
}

impl Default for ClinicSettings {
    fn default() -> Self {
        Self {
            tz: DEFAULT_ZONE,
            calendar: ClinicCalendar::default(),
            closed_weekdays: Vec::new(),
            closed_dates: Vec::new(),
            default_owner_staff_id: String::new(),
        }
    }
}

/// proto Weekday (1 = Monday … 7 = Sunday) to chrono's.
pub fn weekday(n: i16) -> Option<Weekday> {
    match n {
        1 => Some(Weekday::Mon),
        2 => Some(Weekday::Tue),
        3 => Some(Weekday::Wed),
        4 => Some(Weekday::Thu),
        5 => Some(Weekday::Fri),
        6 => Some(Weekday::Sat),
        7 => Some(Weekday::Sun),
        _ => None,
    }
}

pub fn weekday_number(day: Weekday) -> i16 {
    day.number_from_monday() as i16
}

impl ClinicSettings {
    pub fn from_row(
        time_zone: &str,
        closed_weekdays: Vec<i16>,
        closed_dates: Vec<NaiveDate>,
        default_owner_staff_id: String,
    ) -> Self {
        let tz = time_zone.parse::<Tz>().unwrap_or(DEFAULT_ZONE);
        let calendar = ClinicCalendar {
            closed_weekdays: closed_weekdays
                .iter()
                .filter_map(|d| weekday(*d))
                .map(WeekdayKey::from)
                .collect(),
            closed_dates: closed_dates.iter().copied().collect(),
        };
        Self {
            tz,
            calendar,
            closed_weekdays,
            closed_dates,
            default_owner_staff_id,
        }
    }

    pub fn to_proto(&self) -> pb::SchedulerSettings {
        pb::SchedulerSettings {
            time_zone: self.tz.name().to_string(),
            closed_weekdays: self.closed_weekdays.iter().map(|d| i32::from(*d)).collect(),
            closed_dates: self.closed_dates.iter().map(|d| d.to_string()).collect(),
            default_owner_staff_id: self.default_owner_staff_id.clone(),
        }
    }

    /// Whether a weekday is closed (for tests and previews).
    pub fn closed_on(&self, date: NaiveDate) -> bool {
        self.calendar
            .closed_weekdays
            .contains(&date.weekday().into())
            || self.calendar.closed_dates.contains(&date)
    }
}

type Row = (String, Vec<i16>, Vec<NaiveDate>, String);

pub async fn load(conn: &mut PgConnection, tenant: &str) -> Result<ClinicSettings> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT time_zone, closed_weekdays, closed_dates, default_owner_staff_id
         FROM settings WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((zone, weekdays, dates, owner)) => {
            ClinicSettings::from_row(&zone, weekdays, dates, owner)
        }
        None => ClinicSettings::default(),
    })
}

pub async fn save(conn: &mut PgConnection, tenant: &str, settings: &ClinicSettings) -> Result<()> {
    sqlx::query(
        "INSERT INTO settings (tenant_id, time_zone, closed_weekdays, closed_dates, default_owner_staff_id, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (tenant_id) DO UPDATE SET time_zone = EXCLUDED.time_zone,
             closed_weekdays = EXCLUDED.closed_weekdays, closed_dates = EXCLUDED.closed_dates,
             default_owner_staff_id = EXCLUDED.default_owner_staff_id, updated_at = now()",
    )
    .bind(tenant)
    .bind(settings.tz.name())
    .bind(&settings.closed_weekdays)
    .bind(&settings.closed_dates)
    .bind(&settings.default_owner_staff_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The zone an enrollment's local times follow: the patient's when the rule asks and it is known.
pub async fn zone_for(
    conn: &mut PgConnection,
    tenant: &str,
    clinic: Tz,
    patient_zone: bool,
    patient_id: &str,
) -> Result<Tz> {
    if !patient_zone || patient_id.is_empty() {
        return Ok(clinic);
    }
    let zone: Option<String> = sqlx::query_scalar(
        "SELECT time_zone FROM patients WHERE tenant_id = $1 AND patient_id = $2",
    )
    .bind(tenant)
    .bind(patient_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(zone.and_then(|z| z.parse::<Tz>().ok()).unwrap_or(clinic))
}
