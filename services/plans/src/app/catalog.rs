//! Catalogue use cases: the clinic's codes and fee schedules.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::App;
use crate::domain::catalog::{self, Category, MatchRank};
use crate::domain::master::{self, MASTER_CODES};
use crate::domain::money::Currency;
use crate::error::{PlansError, Result};
use crate::storage::catalog::{self as db, CodeRow, NewCode, ScheduleRow};

pub const MAX_CSV_BYTES: usize = 2 * 1024 * 1024;

pub struct CopyOutcome {
    pub copied: usize,
    pub skipped: Vec<String>,
}

pub struct ImportRequest<'a> {
    pub csv: &'a str,
    pub fee_schedule_id: Option<Uuid>,
    pub validate_only: bool,
    pub all_or_nothing: bool,
}

#[derive(Default)]
pub struct ImportOutcome {
    pub added: usize,
    pub updated: usize,
    pub fees: usize,
    pub errors: Vec<(usize, String)>,
}

pub struct SearchHit {
    pub code: CodeRow,
    pub fee: Option<(i64, Currency)>,
}

/// UpdateCode's changes: None = unchanged.
#[derive(Default)]
pub struct CodeChanges {
    pub name: Option<String>,
    pub category: Option<Category>,
    pub tooth_expected: Option<bool>,
    pub active: Option<bool>,
}

impl App {
    pub async fn copy_master_codes(
        &self,
        tenant: &str,
        codes: &[String],
        categories: &[Category],
        all: bool,
    ) -> Result<CopyOutcome> {
        let mut wanted: BTreeSet<&'static str> = BTreeSet::new();
        let mut unknown = Vec::new();
        for (i, code) in codes.iter().enumerate() {
            let normalized = catalog::normalize_code(code)
                .map_err(|e| PlansError::invalid(format!("codes[{i}]"), e))?;
            match master::find(&normalized) {
                Some(m) => {
                    wanted.insert(m.code);
                }
                None => unknown.push((
                    format!("codes[{i}]"),
                    format!("`{normalized}` is not in the master list (ListMasterCodes shows it)"),
                )),
            }
        }
        if !unknown.is_empty() {
            return Err(PlansError::Invalid(unknown));
        }
        for m in MASTER_CODES {
            if all || categories.contains(&m.category()) {
                wanted.insert(m.code);
            }
        }
        if wanted.is_empty() {
            return Err(PlansError::invalid(
                "codes",
                "name codes, categories, or set all to copy the whole master list",
            ));
        }
        let rows: Vec<NewCode<'_>> = wanted
            .iter()
            .filter_map(|code| master::find(code))
            .map(|m| NewCode {
                code: m.code,
                name: m.name,
                category: m.category() as i16,
                tooth_expected: m.tooth_expected,
                source: "master",
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let added: BTreeSet<String> = db::insert_codes_if_missing(&mut tx, tenant, &rows)
            .await?
            .into_iter()
            .collect();
        tx.commit().await?;
        Ok(CopyOutcome {
            copied: added.len(),
            skipped: wanted
                .iter()
                .filter(|c| !added.contains(**c))
                .map(|c| c.to_string())
                .collect(),
        })
    }

    pub async fn import_codes(
        &self,
        tenant: &str,
        request: ImportRequest<'_>,
    ) -> Result<ImportOutcome> {
        if request.csv.len() > MAX_CSV_BYTES {
            return Err(PlansError::invalid(
                "csv",
                "at most 2 MiB; split the list into several imports",
            ));
        }
        if request.csv.trim().is_empty() {
            return Err(PlansError::invalid(
                "csv",
                "empty: give a header row `code,name,default_fee` and one row per code",
            ));
        }
        let mut tx = self.pool.begin().await?;
        let schedule =
            match request.fee_schedule_id {
                Some(id) => Some(db::get_schedule(&mut tx, tenant, id).await?.ok_or_else(
                    || {
                        PlansError::invalid(
                            "fee_schedule_id",
                            format!("`{id}` is not a fee schedule of this clinic"),
                        )
                    },
                )?),
                None => db::default_schedule(&mut tx, tenant).await?,
            };
        let currency = schedule
            .as_ref()
            .map(|s| Currency::parse(&s.currency))
            .transpose()?;
        let (rows, errors) =
            catalog::parse_csv(request.csv, currency).map_err(|e| PlansError::invalid("csv", e))?;
        let mut outcome = ImportOutcome {
            errors,
            ..Default::default()
        };
        if request.validate_only || (request.all_or_nothing && !outcome.errors.is_empty()) {
            return Ok(outcome);
        }
        let new_codes: Vec<NewCode<'_>> = rows
            .iter()
            .map(|r| {
                let master = master::find(&r.code);
                NewCode {
                    code: &r.code,
                    name: &r.name,
                    category: Category::of_code(&r.code) as i16,
                    tooth_expected: master.is_some_and(|m| m.tooth_expected),
                    source: "import",
                }
            })
            .collect();
        let (added, updated) = db::upsert_codes(&mut tx, tenant, &new_codes).await?;
        outcome.added = added;
        outcome.updated = updated;
        if let Some(schedule) = &schedule {
            let fees: Vec<(String, i64)> = rows
                .iter()
                .filter_map(|r| r.default_fee.map(|fee| (r.code.clone(), fee)))
                .collect();
            outcome.fees =
                db::upsert_fees(&mut tx, tenant, schedule.fee_schedule_id, &fees).await?;
        }
        tx.commit().await?;
        tracing::info!(
            tenant,
            added,
            updated,
            fees = outcome.fees,
            rejected = outcome.errors.len(),
            "codes imported"
        );
        Ok(outcome)
    }

    pub async fn search_codes(
        &self,
        tenant: &str,
        query: &str,
        fee_schedule_id: Option<Uuid>,
        include_inactive: bool,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        let query = query.trim();
        if query.is_empty() || query.chars().count() > 100 {
            return Err(PlansError::invalid(
                "query",
                "1 to 100 characters: a code prefix (D27) or words of the name (crown porcelain)",
            ));
        }
        let mut conn = self.conn().await?;
        let schedule =
            match fee_schedule_id {
                Some(id) => Some(db::get_schedule(&mut conn, tenant, id).await?.ok_or_else(
                    || {
                        PlansError::invalid(
                            "fee_schedule_id",
                            format!("`{id}` is not a fee schedule of this clinic"),
                        )
                    },
                )?),
                None => db::default_schedule(&mut conn, tenant).await?,
            };
        let words = catalog::words(query);
        let candidates = db::search_candidates(
            &mut conn,
            tenant,
            &query.to_ascii_uppercase(),
            &words,
            include_inactive,
        )
        .await?;
        let mut ranked: Vec<(MatchRank, CodeRow)> = candidates
            .into_iter()
            .filter_map(|row| catalog::rank(query, &row.code, &row.name).map(|rank| (rank, row)))
            .collect();
        ranked.sort_by(|a, b| catalog::compare((a.0, &a.1.code), (b.0, &b.1.code)));
        ranked.truncate(limit);
        let fees = match &schedule {
            Some(s) => {
                let codes: Vec<String> = ranked.iter().map(|(_, r)| r.code.clone()).collect();
                db::fees_of(&mut conn, tenant, s.fee_schedule_id, Some(&codes)).await?
            }
            None => Default::default(),
        };
        let currency = schedule
            .as_ref()
            .and_then(|s| Currency::parse(&s.currency).ok());
        Ok(ranked
            .into_iter()
            .map(|(_, code)| SearchHit {
                fee: fees.get(&code.code).copied().zip(currency),
                code,
            })
            .collect())
    }

    pub async fn list_codes(
        &self,
        tenant: &str,
        category: Option<Category>,
        include_inactive: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<CodeRow>, bool)> {
        let mut conn = self.conn().await?;
        let mut rows = db::list_codes(
            &mut conn,
            tenant,
            category.map(|c| c as i16),
            include_inactive,
            after,
            limit as i64 + 1,
        )
        .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    pub async fn get_code(&self, tenant: &str, code: &str) -> Result<CodeRow> {
        let normalized =
            catalog::normalize_code(code).map_err(|e| PlansError::invalid("code", e))?;
        let mut conn = self.conn().await?;
        db::get_code(&mut conn, tenant, &normalized)
            .await?
            .ok_or_else(|| PlansError::not_found("procedure code", normalized))
    }

    pub async fn update_code(
        &self,
        tenant: &str,
        code: &str,
        changes: CodeChanges,
    ) -> Result<CodeRow> {
        let normalized =
            catalog::normalize_code(code).map_err(|e| PlansError::invalid("code.code", e))?;
        let mut tx = self.pool.begin().await?;
        let mut row = db::get_code(&mut tx, tenant, &normalized)
            .await?
            .ok_or_else(|| PlansError::not_found("procedure code", normalized.clone()))?;
        if let Some(name) = changes.name {
            row.name =
                catalog::validate_name(&name).map_err(|e| PlansError::invalid("code.name", e))?;
        }
        if let Some(category) = changes.category {
            row.category = category as i16;
        }
        if let Some(tooth) = changes.tooth_expected {
            row.tooth_expected = tooth;
        }
        if let Some(active) = changes.active {
            row.active = active;
        }
        db::update_code(&mut tx, tenant, &row).await?;
        let row = db::get_code(&mut tx, tenant, &normalized)
            .await?
            .ok_or_else(|| PlansError::not_found("procedure code", normalized))?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn create_schedule(
        &self,
        tenant: &str,
        name: &str,
        currency: &str,
        is_default: bool,
        copy_from: Option<Uuid>,
    ) -> Result<ScheduleRow> {
        let name = validate_schedule_name(name)?;
        let currency = Currency::parse(currency.trim()).map_err(|e| e.in_field("fee_schedule"))?;
        let mut tx = self.pool.begin().await?;
        if db::schedule_name_taken(&mut tx, tenant, &name, None).await? {
            return Err(PlansError::already_exists("fee schedule", name));
        }
        let first = db::list_schedules(&mut tx, tenant, 0, 1).await?.is_empty();
        let source = match copy_from {
            Some(from) => {
                let source = db::get_schedule(&mut tx, tenant, from)
                    .await?
                    .ok_or_else(|| {
                        PlansError::invalid(
                            "copy_fees_from_fee_schedule_id",
                            format!("`{from}` is not a fee schedule of this clinic"),
                        )
                    })?;
                if source.currency != currency.as_str() {
                    return Err(PlansError::invalid(
                        "copy_fees_from_fee_schedule_id",
                        format!(
                            "that schedule is in {}, this one in {currency}",
                            source.currency
                        ),
                    ));
                }
                Some(from)
            }
            None => None,
        };
        let id = Uuid::now_v7();
        db::insert_schedule(
            &mut tx,
            tenant,
            id,
            &name,
            currency.as_str(),
            is_default || first,
        )
        .await?;
        if let Some(from) = source {
            db::copy_fees(&mut tx, tenant, from, id).await?;
        }
        let row = db::get_schedule(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| PlansError::Internal("fee schedule vanished".into()))?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn get_schedule(&self, tenant: &str, id: Uuid) -> Result<ScheduleRow> {
        let mut conn = self.conn().await?;
        db::get_schedule(&mut conn, tenant, id)
            .await?
            .ok_or_else(|| PlansError::not_found("fee schedule", id.to_string()))
    }

    pub async fn list_schedules(
        &self,
        tenant: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<ScheduleRow>, bool)> {
        let mut conn = self.conn().await?;
        let mut rows =
            db::list_schedules(&mut conn, tenant, offset as i64, limit as i64 + 1).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((rows, more))
    }

    pub async fn update_schedule(
        &self,
        tenant: &str,
        id: Uuid,
        name: Option<&str>,
        is_default: Option<bool>,
    ) -> Result<ScheduleRow> {
        let mut tx = self.pool.begin().await?;
        let row = db::get_schedule(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| PlansError::not_found("fee schedule", id.to_string()))?;
        let name = match name {
            Some(name) => {
                let name = validate_schedule_name(name)?;
                if db::schedule_name_taken(&mut tx, tenant, &name, Some(id)).await? {
                    return Err(PlansError::already_exists("fee schedule", name));
                }
                name
            }
            None => row.name.clone(),
        };
        let is_default = match is_default {
            Some(false) if row.is_default => {
                return Err(PlansError::precondition(
                    "DEFAULT_SCHEDULE",
                    id.to_string(),
                    "a clinic always has a default fee schedule: make another one the default instead",
                ));
            }
            Some(true) if !row.is_default => {
                db::clear_default(&mut tx, tenant).await?;
                true
            }
            _ => row.is_default,
        };
        db::update_schedule(&mut tx, tenant, id, &name, is_default).await?;
        let row = db::get_schedule(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| PlansError::Internal("fee schedule vanished".into()))?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn delete_schedule(&self, tenant: &str, id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row = db::get_schedule(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| PlansError::not_found("fee schedule", id.to_string()))?;
        if row.is_default {
            return Err(PlansError::precondition(
                "DEFAULT_SCHEDULE",
                id.to_string(),
                format!(
                    "`{}` is the default fee schedule: make another one the default first",
                    row.name
                ),
            ));
        }
        let drafts = crate::storage::plans::draft_uses_schedule(&mut tx, tenant, id).await?;
        if drafts > 0 {
            return Err(PlansError::precondition(
                "SCHEDULE_IN_USE",
                id.to_string(),
                format!(
                    "{drafts} draft plan(s) price from `{}`: move them to another schedule first",
                    row.name
                ),
            ));
        }
        db::delete_schedule(&mut tx, tenant, id).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_fees(
        &self,
        tenant: &str,
        id: Uuid,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(ScheduleRow, Vec<(String, i64)>, bool)> {
        let mut conn = self.conn().await?;
        let schedule = db::get_schedule(&mut conn, tenant, id)
            .await?
            .ok_or_else(|| PlansError::not_found("fee schedule", id.to_string()))?;
        let mut fees = db::list_fees(&mut conn, tenant, id, after, limit as i64 + 1).await?;
        let more = fees.len() > limit;
        fees.truncate(limit);
        Ok((schedule, fees, more))
    }

    /// `fees` are (code, amount, currency as given).
    pub async fn set_fees(
        &self,
        tenant: &str,
        id: Uuid,
        fees: Vec<(String, i64, String)>,
        remove: Vec<String>,
    ) -> Result<ScheduleRow> {
        if fees.len() > 5000 {
            return Err(PlansError::invalid("fees", "at most 5000 per call"));
        }
        let mut tx = self.pool.begin().await?;
        let schedule = db::get_schedule(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| PlansError::not_found("fee schedule", id.to_string()))?;
        let mut violations = Vec::new();
        let mut normalized = Vec::with_capacity(fees.len());
        for (i, (code, amount, currency)) in fees.into_iter().enumerate() {
            match catalog::normalize_code(&code) {
                Ok(code) => normalized.push((i, code, amount)),
                Err(e) => violations.push((format!("fees[{i}].code"), e)),
            }
            if amount < 0 {
                violations.push((format!("fees[{i}].amount"), "must be 0 or more".into()));
            }
            if !currency.is_empty() && currency != schedule.currency {
                violations.push((
                    format!("fees[{i}].amount.currency"),
                    format!(
                        "`{currency}` is not the schedule's currency ({})",
                        schedule.currency
                    ),
                ));
            }
        }
        let codes: Vec<String> = normalized.iter().map(|(_, c, _)| c.clone()).collect();
        let known: BTreeSet<String> = db::existing_codes(&mut tx, tenant, &codes)
            .await?
            .into_iter()
            .collect();
        for (i, code, _) in &normalized {
            if !known.contains(code) {
                violations.push((
                    format!("fees[{i}].code"),
                    format!("`{code}` is not in the clinic's code list"),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(PlansError::Invalid(violations));
        }
        let remove: Vec<String> = remove
            .iter()
            .map(|c| c.trim().to_ascii_uppercase())
            .collect();
        let fees: Vec<(String, i64)> = normalized.into_iter().map(|(_, c, a)| (c, a)).collect();
        db::upsert_fees(&mut tx, tenant, id, &fees).await?;
        if !remove.is_empty() {
            db::remove_fees(&mut tx, tenant, id, &remove).await?;
        }
        let row = db::get_schedule(&mut tx, tenant, id)
            .await?
            .ok_or_else(|| PlansError::Internal("fee schedule vanished".into()))?;
        tx.commit().await?;
        Ok(row)
    }
}

fn validate_schedule_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(PlansError::invalid(
            "fee_schedule.name",
            "required, e.g. \"Standard\"",
        ));
    }
    if name.chars().count() > 100 {
        return Err(PlansError::invalid(
            "fee_schedule.name",
            "at most 100 characters",
        ));
    }
    Ok(name.to_string())
}
