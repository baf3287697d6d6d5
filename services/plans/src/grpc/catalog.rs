//! `followup.plans.v1.CatalogService`.

use followup_platform::auth::{Caller, Role, caller};
use followup_platform::event::timestamp;
use followup_proto::followup::common::v1 as common;
use followup_proto::followup::plans::v1 as pb;
use followup_proto::followup::plans::v1::catalog_service_server::CatalogService;
use tonic::{Request, Response, Status};

use super::convert;
use crate::app::catalog::{CodeChanges, ImportRequest};
use crate::app::{App, parse_id};
use crate::domain::catalog::Category;
use crate::domain::master::MASTER_CODES;
use crate::error::PlansError;
use crate::storage::catalog::{CodeRow, ScheduleRow};

/// Changing codes and fee schedules: owner and admin.
const WRITE: &[Role] = &[Role::Owner, Role::Admin];
const READ: &[Role] = &Role::ALL;

#[derive(Clone)]
pub struct CatalogServiceApi {
    pub app: App,
}

type Reply<T> = Result<Response<T>, Status>;

fn who<T>(request: &Request<T>, allowed: &[Role]) -> Result<Caller, Status> {
    let caller = caller(request)?;
    caller.require(allowed)?;
    Ok(caller)
}

fn category_in(field: &str, value: i32) -> Result<Option<Category>, PlansError> {
    match Category::from_i32(value) {
        Some(Category::Unspecified) => Ok(None),
        Some(c) => Ok(Some(c)),
        None => Err(PlansError::invalid(
            field,
            format!("{value} is not a code category"),
        )),
    }
}

fn code(row: &CodeRow) -> pb::ProcedureCode {
    pb::ProcedureCode {
        code: row.code.clone(),
        name: row.name.clone(),
        category: i32::from(row.category),
        tooth_expected: row.tooth_expected,
        active: row.active,
        source: row.source.clone(),
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
    }
}

fn schedule(row: &ScheduleRow) -> pb::FeeSchedule {
    pb::FeeSchedule {
        fee_schedule_id: row.fee_schedule_id.to_string(),
        name: row.name.clone(),
        currency: row.currency.clone(),
        is_default: row.is_default,
        fee_count: row.fee_count as i32,
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
    }
}

fn optional_id(field: &str, value: &str) -> Result<Option<uuid::Uuid>, PlansError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        parse_id(field, value).map(Some)
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogServiceApi {
    async fn list_master_codes(
        &self,
        request: Request<pb::ListMasterCodesRequest>,
    ) -> Reply<pb::ListMasterCodesResponse> {
        who(&request, READ)?;
        let r = request.into_inner();
        let category = category_in("category", r.category)?;
        let size = convert::page_size(r.page_size, 100, 1000)?;
        let after = convert::page_position(&r.page_token)?;
        let mut codes: Vec<pb::MasterCode> = MASTER_CODES
            .iter()
            .filter(|m| category.is_none_or(|c| m.category() == c))
            .filter(|m| after.as_deref().is_none_or(|a| m.code > a))
            .take(size + 1)
            .map(|m| pb::MasterCode {
                code: m.code.to_string(),
                name: m.name.to_string(),
                category: m.category() as i32,
                tooth_expected: m.tooth_expected,
            })
            .collect();
        let more = codes.len() > size;
        codes.truncate(size);
        let next_page_token = match (more, codes.last()) {
            (true, Some(last)) => convert::page_token(&last.code),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListMasterCodesResponse {
            codes,
            next_page_token,
        }))
    }

    async fn copy_master_codes(
        &self,
        request: Request<pb::CopyMasterCodesRequest>,
    ) -> Reply<pb::CopyMasterCodesResponse> {
        let caller = who(&request, WRITE)?;
        let r = request.into_inner();
        let categories = r
            .categories
            .iter()
            .map(|c| category_in("categories", *c))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        let outcome = self
            .app
            .copy_master_codes(&caller.tenant, &r.codes, &categories, r.all)
            .await?;
        Ok(Response::new(pb::CopyMasterCodesResponse {
            copied_count: outcome.copied as i32,
            skipped_codes: outcome.skipped,
        }))
    }

    async fn import_codes(
        &self,
        request: Request<pb::ImportCodesRequest>,
    ) -> Reply<pb::ImportCodesResponse> {
        let caller = who(&request, WRITE)?;
        let r = request.into_inner();
        let outcome = self
            .app
            .import_codes(
                &caller.tenant,
                ImportRequest {
                    csv: &r.csv,
                    fee_schedule_id: optional_id("fee_schedule_id", &r.fee_schedule_id)?,
                    validate_only: r.validate_only,
                    all_or_nothing: r.all_or_nothing,
                },
            )
            .await?;
        Ok(Response::new(pb::ImportCodesResponse {
            added_count: outcome.added as i32,
            updated_count: outcome.updated as i32,
            fee_count: outcome.fees as i32,
            errors: outcome
                .errors
                .into_iter()
                .map(|(line, message)| pb::ImportRowError {
                    line: line as i32,
                    message,
                })
                .collect(),
        }))
    }

    async fn search_codes(
        &self,
        request: Request<pb::SearchCodesRequest>,
    ) -> Reply<pb::SearchCodesResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let size = convert::page_size(r.page_size, 20, 100)?;
        let hits = self
            .app
            .search_codes(
                &caller.tenant,
                &r.query,
                optional_id("fee_schedule_id", &r.fee_schedule_id)?,
                r.include_inactive,
                size,
            )
            .await?;
        Ok(Response::new(pb::SearchCodesResponse {
            matches: hits
                .iter()
                .map(|hit| pb::CodeMatch {
                    code: Some(code(&hit.code)),
                    fee: hit.fee.map(|(amount, currency)| common::Money {
                        amount_minor: amount,
                        currency: currency.as_str().to_string(),
                    }),
                })
                .collect(),
        }))
    }

    async fn list_codes(
        &self,
        request: Request<pb::ListCodesRequest>,
    ) -> Reply<pb::ListCodesResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let size = convert::page_size(r.page_size, 100, 1000)?;
        let after = convert::page_position(&r.page_token)?;
        let (rows, more) = self
            .app
            .list_codes(
                &caller.tenant,
                category_in("category", r.category)?,
                r.include_inactive,
                after.as_deref(),
                size,
            )
            .await?;
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => convert::page_token(&last.code),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListCodesResponse {
            codes: rows.iter().map(code).collect(),
            next_page_token,
        }))
    }

    async fn get_code(&self, request: Request<pb::GetCodeRequest>) -> Reply<pb::GetCodeResponse> {
        let caller = who(&request, READ)?;
        let row = self
            .app
            .get_code(&caller.tenant, &request.get_ref().code)
            .await?;
        Ok(Response::new(pb::GetCodeResponse {
            code: Some(code(&row)),
        }))
    }

    async fn update_code(
        &self,
        request: Request<pb::UpdateCodeRequest>,
    ) -> Reply<pb::UpdateCodeResponse> {
        let caller = who(&request, WRITE)?;
        let r = request.into_inner();
        let given = r
            .code
            .ok_or_else(|| PlansError::invalid("code", "required"))?;
        let paths = convert::mask_paths(
            r.update_mask.as_ref(),
            &["name", "category", "tooth_expected", "active"],
        )?;
        let mut changes = CodeChanges::default();
        for path in &paths {
            match path.as_str() {
                "name" => changes.name = Some(given.name.clone()),
                "category" => {
                    changes.category = Some(
                        category_in("code.category", given.category)?
                            .unwrap_or(Category::Unspecified),
                    )
                }
                "tooth_expected" => changes.tooth_expected = Some(given.tooth_expected),
                "active" => changes.active = Some(given.active),
                _ => {}
            }
        }
        let row = self
            .app
            .update_code(&caller.tenant, &given.code, changes)
            .await?;
        Ok(Response::new(pb::UpdateCodeResponse {
            code: Some(code(&row)),
        }))
    }

    async fn create_fee_schedule(
        &self,
        request: Request<pb::CreateFeeScheduleRequest>,
    ) -> Reply<pb::CreateFeeScheduleResponse> {
        let caller = who(&request, WRITE)?;
        let r = request.into_inner();
        let given = r
            .fee_schedule
            .ok_or_else(|| PlansError::invalid("fee_schedule", "required"))?;
        let row = self
            .app
            .create_schedule(
                &caller.tenant,
                &given.name,
                &given.currency,
                given.is_default,
                optional_id(
                    "copy_fees_from_fee_schedule_id",
                    &r.copy_fees_from_fee_schedule_id,
                )?,
            )
            .await?;
        Ok(Response::new(pb::CreateFeeScheduleResponse {
            fee_schedule: Some(schedule(&row)),
        }))
    }

    async fn get_fee_schedule(
        &self,
        request: Request<pb::GetFeeScheduleRequest>,
    ) -> Reply<pb::GetFeeScheduleResponse> {
        let caller = who(&request, READ)?;
        let id = parse_id("fee_schedule_id", &request.get_ref().fee_schedule_id)?;
        let row = self.app.get_schedule(&caller.tenant, id).await?;
        Ok(Response::new(pb::GetFeeScheduleResponse {
            fee_schedule: Some(schedule(&row)),
        }))
    }

    async fn list_fee_schedules(
        &self,
        request: Request<pb::ListFeeSchedulesRequest>,
    ) -> Reply<pb::ListFeeSchedulesResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let size = convert::page_size(r.page_size, 100, 1000)?;
        let offset = match convert::page_position(&r.page_token)? {
            Some(p) => p
                .parse::<usize>()
                .map_err(|_| PlansError::invalid("page_token", "not a token this API returned"))?,
            None => 0,
        };
        let (rows, more) = self
            .app
            .list_schedules(&caller.tenant, offset, size)
            .await?;
        Ok(Response::new(pb::ListFeeSchedulesResponse {
            fee_schedules: rows.iter().map(schedule).collect(),
            next_page_token: if more {
                convert::page_token(&(offset + size).to_string())
            } else {
                String::new()
            },
        }))
    }

    async fn update_fee_schedule(
        &self,
        request: Request<pb::UpdateFeeScheduleRequest>,
    ) -> Reply<pb::UpdateFeeScheduleResponse> {
        let caller = who(&request, WRITE)?;
        let r = request.into_inner();
        let given = r
            .fee_schedule
            .ok_or_else(|| PlansError::invalid("fee_schedule", "required"))?;
        let id = parse_id("fee_schedule.fee_schedule_id", &given.fee_schedule_id)?;
        let paths = convert::mask_paths(r.update_mask.as_ref(), &["name", "is_default"])?;
        let name = paths
            .iter()
            .any(|p| p == "name")
            .then_some(given.name.as_str());
        let is_default = paths
            .iter()
            .any(|p| p == "is_default")
            .then_some(given.is_default);
        let row = self
            .app
            .update_schedule(&caller.tenant, id, name, is_default)
            .await?;
        Ok(Response::new(pb::UpdateFeeScheduleResponse {
            fee_schedule: Some(schedule(&row)),
        }))
    }

    async fn delete_fee_schedule(
        &self,
        request: Request<pb::DeleteFeeScheduleRequest>,
    ) -> Reply<pb::DeleteFeeScheduleResponse> {
        let caller = who(&request, WRITE)?;
        let id = parse_id("fee_schedule_id", &request.get_ref().fee_schedule_id)?;
        self.app.delete_schedule(&caller.tenant, id).await?;
        Ok(Response::new(pb::DeleteFeeScheduleResponse {}))
    }

    async fn list_fees(
        &self,
        request: Request<pb::ListFeesRequest>,
    ) -> Reply<pb::ListFeesResponse> {
        let caller = who(&request, READ)?;
        let r = request.into_inner();
        let id = parse_id("fee_schedule_id", &r.fee_schedule_id)?;
        let size = convert::page_size(r.page_size, 500, 5000)?;
        let after = convert::page_position(&r.page_token)?;
        let (schedule, fees, more) = self
            .app
            .list_fees(&caller.tenant, id, after.as_deref(), size)
            .await?;
        let next_page_token = match (more, fees.last()) {
            (true, Some((code, _))) => convert::page_token(code),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFeesResponse {
            fees: fees
                .into_iter()
                .map(|(code, amount)| pb::Fee {
                    code,
                    amount: Some(common::Money {
                        amount_minor: amount,
                        currency: schedule.currency.clone(),
                    }),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn set_fees(&self, request: Request<pb::SetFeesRequest>) -> Reply<pb::SetFeesResponse> {
        let caller = who(&request, WRITE)?;
        let r = request.into_inner();
        let id = parse_id("fee_schedule_id", &r.fee_schedule_id)?;
        let mut fees = Vec::with_capacity(r.fees.len());
        for (i, fee) in r.fees.into_iter().enumerate() {
            let amount = fee
                .amount
                .ok_or_else(|| PlansError::invalid(format!("fees[{i}].amount"), "required"))?;
            fees.push((
                fee.code,
                amount.amount_minor,
                amount.currency.trim().to_string(),
            ));
        }
        let row = self
            .app
            .set_fees(&caller.tenant, id, fees, r.remove_codes)
            .await?;
        Ok(Response::new(pb::SetFeesResponse {
            fee_schedule: Some(schedule(&row)),
        }))
    }
}
