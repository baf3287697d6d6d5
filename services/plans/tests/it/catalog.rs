//! CatalogService: master list, copy, import, search, codes and fee schedules.

use followup_platform::auth::Role;
use followup_proto::followup::plans::v1 as pb;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn codes_are_copied_imported_searched_and_edited() {
    let svc = Svc::start().await;
    let mut catalog = svc.catalog.clone();

    let master = catalog
        .list_master_codes(svc.owner(pb::ListMasterCodesRequest {
            category: pb::CodeCategory::ImplantServices as i32,
            page_size: 3,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(master.codes.len(), 3);
    assert!(master.codes.iter().all(|c| c.code.starts_with("D6")));
    assert!(!master.next_page_token.is_empty());

    // Only owner and admin change the list.
    let denied = catalog
        .copy_master_codes(svc.req(
            pb::CopyMasterCodesRequest {
                all: true,
                ..Default::default()
            },
            CLINIC,
            Role::Dentist,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unknown = catalog
        .copy_master_codes(svc.owner(pb::CopyMasterCodesRequest {
            codes: vec!["D0001".into()],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&unknown), vec!["codes[0]"]);

    let copied = catalog
        .copy_master_codes(svc.owner(pb::CopyMasterCodesRequest {
            codes: vec!["d2740".into()],
            categories: vec![pb::CodeCategory::OralSurgery as i32],
            all: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(copied.copied_count > 5);
    let again = catalog
        .copy_master_codes(svc.owner(pb::CopyMasterCodesRequest {
            codes: vec!["D2740".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.copied_count, again.skipped_codes),
        (0, vec!["D2740".to_string()])
    );

    // Import the clinic's licensed list into its schedule.
    let schedule = catalog
        .create_fee_schedule(svc.owner(pb::CreateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                name: "Standard".into(),
                currency: "USD".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .fee_schedule
        .unwrap();
    assert!(schedule.is_default, "the first schedule is the default");
    let csv = "code,name,default_fee\nD2740,Crown - porcelain/ceramic,1250.00\nD2950,Core buildup incl. pins,310\nD9999,,5\nD1110,Prophylaxis adult,12.505\n";
    let checked = catalog
        .import_codes(svc.owner(pb::ImportCodesRequest {
            csv: csv.into(),
            validate_only: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((checked.added_count, checked.updated_count), (0, 0));
    assert_eq!(
        checked.errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let strict = catalog
        .import_codes(svc.owner(pb::ImportCodesRequest {
            csv: csv.into(),
            all_or_nothing: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(strict.added_count + strict.updated_count, 0);
    let imported = catalog
        .import_codes(svc.owner(pb::ImportCodesRequest {
            csv: csv.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            imported.added_count,
            imported.updated_count,
            imported.fee_count
        ),
        (1, 1, 2)
    );
    assert!(
        imported.errors[1].message.contains("default_fee"),
        "{:?}",
        imported.errors
    );
    let crown = catalog
        .get_code(svc.owner(pb::GetCodeRequest {
            code: "D2740".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .code
        .unwrap();
    assert_eq!(crown.name, "Crown - porcelain/ceramic");
    assert_eq!(crown.category, pb::CodeCategory::Restorative as i32);
    let header = catalog
        .import_codes(svc.owner(pb::ImportCodesRequest {
            csv: "a,b\n1,2\n".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&header), vec!["csv"]);

    // Search: exact code, then prefix, then names; with the schedule's fee.
    let hits = catalog
        .search_codes(svc.req(
            pb::SearchCodesRequest {
                query: "D27".into(),
                ..Default::default()
            },
            CLINIC,
            Role::FrontDesk,
        ))
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(hits[0].code.as_ref().unwrap().code, "D2740");
    assert_eq!(hits[0].fee.as_ref().unwrap().amount_minor, 125_000);
    let hits = catalog
        .search_codes(svc.owner(pb::SearchCodesRequest {
            query: "wisdom bone".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .matches;
    let codes: Vec<String> = hits
        .iter()
        .map(|h| h.code.as_ref().unwrap().code.clone())
        .collect();
    assert_eq!(
        &codes[..2],
        &["D7230".to_string(), "D7240".to_string()],
        "{codes:?}"
    );
    assert!(
        codes.contains(&"D7220".to_string()),
        "partial word matches follow: {codes:?}"
    );
    let exact = catalog
        .search_codes(svc.owner(pb::SearchCodesRequest {
            query: "d7140".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert_eq!(exact[0].code.as_ref().unwrap().code, "D7140");
    let empty = catalog
        .search_codes(svc.owner(pb::SearchCodesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&empty), vec!["query"]);

    // Inactive codes leave search and cannot be added to plans.
    let updated = catalog
        .update_code(svc.owner(pb::UpdateCodeRequest {
            code: Some(pb::ProcedureCode {
                code: "D7140".into(),
                active: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["active".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .code
        .unwrap();
    assert!(!updated.active);
    assert_eq!(
        updated.name, "Simple extraction",
        "only the masked field changes"
    );
    let hits = catalog
        .search_codes(svc.owner(pb::SearchCodesRequest {
            query: "D7140".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .matches;
    assert!(hits.is_empty());
    let plan = svc.create_plan(CLINIC, "pat-1", "Extraction").await;
    let refused = svc
        .add_item(
            CLINIC,
            &plan.plan_id,
            item("D7140", Some(("1", "")), 1, vec![]),
        )
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("inactive"),
        "{}",
        refused.message()
    );

    // Lists page by code; another clinic sees nothing.
    let first = catalog
        .list_codes(svc.owner(pb::ListCodesRequest {
            page_size: 5,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.codes.len(), 5);
    let next = catalog
        .list_codes(svc.owner(pb::ListCodesRequest {
            page_size: 5,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(next.codes[0].code > first.codes[4].code);
    let theirs = catalog
        .list_codes(svc.req(pb::ListCodesRequest::default(), OTHER, Role::Owner))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.codes.is_empty());
    let missing = catalog
        .get_code(svc.req(
            pb::GetCodeRequest {
                code: "D2740".into(),
            },
            OTHER,
            Role::Owner,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    svc.stop().await;
}

#[tokio::test]
async fn fee_schedules_and_fees() {
    let svc = Svc::start().await;
    let standard = svc.setup_catalog(CLINIC).await;
    let mut catalog = svc.catalog.clone();

    let dup = catalog
        .create_fee_schedule(svc.owner(pb::CreateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                name: "standard".into(),
                currency: "USD".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    // The name is taken, case-insensitively: ALREADY_EXISTS naming the schedule (it was INVALID_ARGUMENT).
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    assert_eq!(
        dup.message(),
        "the clinic already has a fee schedule named `standard`"
    );
    let resource = {
        use tonic_types::StatusExt;
        dup.get_error_details().resource_info().cloned()
    };
    assert_eq!(
        resource.map(|r| (r.resource_type, r.resource_name)),
        Some(("fee schedule".to_string(), "standard".to_string()))
    );
    let bad_currency = catalog
        .create_fee_schedule(svc.owner(pb::CreateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                name: "Euro".into(),
                currency: "euro".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&bad_currency),
        vec!["fee_schedule.currency"]
    );
    let euro = catalog
        .create_fee_schedule(svc.owner(pb::CreateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                name: "Euro".into(),
                currency: "EUR".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .fee_schedule
        .unwrap();

    let wrong = catalog
        .set_fees(svc.owner(pb::SetFeesRequest {
            fee_schedule_id: euro.fee_schedule_id.clone(),
            fees: vec![
                pb::Fee {
                    code: "D2740".into(),
                    amount: Some(usd(1)),
                },
                pb::Fee {
                    code: "D0001".into(),
                    amount: Some(followup_proto::followup::common::v1::Money {
                        amount_minor: -1,
                        currency: "EUR".into(),
                    }),
                },
            ],
            remove_codes: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(
        field_violations(&wrong),
        vec!["fees[0].amount.currency", "fees[1].amount", "fees[1].code"]
    );

    let listed = catalog
        .list_fee_schedules(svc.owner(pb::ListFeeSchedulesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .fee_schedules
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["Standard", "Euro"]
    );

    let fees = catalog
        .list_fees(svc.owner(pb::ListFeesRequest {
            fee_schedule_id: standard.clone(),
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fees.fees
            .iter()
            .map(|f| f.code.as_str())
            .collect::<Vec<_>>(),
        vec!["D0120", "D6010"]
    );
    let rest = catalog
        .list_fees(svc.owner(pb::ListFeesRequest {
            fee_schedule_id: standard.clone(),
            page_size: 2,
            page_token: fees.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.fees.len(), 2);
    let removed = catalog
        .set_fees(svc.owner(pb::SetFeesRequest {
            fee_schedule_id: standard.clone(),
            fees: vec![],
            remove_codes: vec!["D0120".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .fee_schedule
        .unwrap();
    assert_eq!(removed.fee_count, 3);

    // The default cannot be deleted or un-defaulted; making another default moves the flag.
    let refused = catalog
        .delete_fee_schedule(svc.owner(pb::DeleteFeeScheduleRequest {
            fee_schedule_id: standard.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let moved = catalog
        .update_fee_schedule(svc.owner(pb::UpdateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                fee_schedule_id: euro.fee_schedule_id.clone(),
                name: "Euro patients".into(),
                is_default: true,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into(), "is_default".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .fee_schedule
        .unwrap();
    assert!(moved.is_default);
    assert_eq!(moved.name, "Euro patients");
    let renamed_onto = catalog
        .update_fee_schedule(svc.owner(pb::UpdateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                fee_schedule_id: euro.fee_schedule_id.clone(),
                name: "STANDARD".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(renamed_onto.code(), Code::AlreadyExists, "{renamed_onto:?}");
    let old = catalog
        .get_fee_schedule(svc.owner(pb::GetFeeScheduleRequest {
            fee_schedule_id: standard.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!old.fee_schedule.unwrap().is_default);

    // A draft pricing from a schedule keeps it from being deleted.
    let plan = svc
        .plans
        .clone()
        .create_plan(svc.owner(pb::CreatePlanRequest {
            plan: Some(pb::Plan {
                patient_id: "p".into(),
                title: "t".into(),
                fee_schedule_id: standard.clone(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(plan.currency, "USD");
    let in_use = catalog
        .delete_fee_schedule(svc.owner(pb::DeleteFeeScheduleRequest {
            fee_schedule_id: standard.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    svc.plans
        .clone()
        .delete_plan(svc.owner(pb::DeletePlanRequest {
            plan_id: plan.plan_id,
        }))
        .await
        .unwrap();
    catalog
        .delete_fee_schedule(svc.owner(pb::DeleteFeeScheduleRequest {
            fee_schedule_id: standard.clone(),
        }))
        .await
        .unwrap();
    let gone = catalog
        .get_fee_schedule(svc.owner(pb::GetFeeScheduleRequest {
            fee_schedule_id: standard,
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let other = catalog
        .get_fee_schedule(svc.req(
            pb::GetFeeScheduleRequest {
                fee_schedule_id: euro.fee_schedule_id.clone(),
            },
            OTHER,
            Role::Owner,
        ))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    let denied = catalog
        .set_fees(svc.req(
            pb::SetFeesRequest {
                fee_schedule_id: euro.fee_schedule_id,
                fees: vec![],
                remove_codes: vec![],
            },
            CLINIC,
            Role::FrontDesk,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    svc.stop().await;
}
