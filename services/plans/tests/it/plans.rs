//! PlansService: every RPC, its errors, roles and clinic isolation.

use followup_platform::auth::Role;
use followup_proto::followup::plans::v1 as pb;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn the_plan_journey_from_draft_to_completed_with_billing() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, [extraction, implant, crown]) = svc.journey(CLINIC, "pat-1").await;

    let plan = svc.get(CLINIC, &plan_id).await;
    assert_eq!(plan.status, pb::PlanStatus::Draft as i32);
    assert_eq!(plan.items.len(), 3);
    let totals = plan.totals.clone().unwrap();
    assert_eq!(
        totals.total.unwrap().amount_minor,
        20_000 + 200_000 + 135_000
    );
    assert_eq!(totals.discount.unwrap().amount_minor, 15_000);
    assert_eq!(totals.visits.len(), 3);
    // The tree: extraction → implant → crown.
    assert_eq!(plan.item_tree.len(), 1);
    assert_eq!(plan.item_tree[0].item_id, extraction);
    assert_eq!(plan.item_tree[0].dependents[0].item_id, implant);
    assert_eq!(plan.item_tree[0].dependents[0].dependents[0].item_id, crown);
    let crown_item = plan.items.iter().find(|i| i.item_id == crown).unwrap();
    assert_eq!(
        crown_item.schedule_fee.as_ref().unwrap().amount_minor,
        150_000
    );
    assert_eq!(crown_item.price.as_ref().unwrap().amount_minor, 135_000);
    assert_eq!(crown_item.tooth.as_ref().unwrap().surfaces, "MOD");

    let sent = svc.send(CLINIC, &plan_id).await;
    assert!(sent.portal_url.contains("/p/"));
    assert_eq!(sent.plan.unwrap().status, pb::PlanStatus::Sent as i32);

    let approved = svc.approve(CLINIC, &plan_id).await.unwrap();
    assert_eq!(approved.status, pb::PlanStatus::Approved as i32);
    let approval = approved.approval.unwrap();
    assert_eq!(approval.channel, pb::ApprovalChannel::Staff as i32);
    assert_eq!(approval.approved_by_staff_id, "staff-dentist");

    // Out of order: the crown before the implant.
    let refused = svc.complete(CLINIC, &plan_id, &crown).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("item 2 (D6010)"),
        "{}",
        refused.message()
    );

    let first = svc.complete(CLINIC, &plan_id, &extraction).await.unwrap();
    assert_eq!(
        first.item.unwrap().status,
        pb::PlanItemStatus::Completed as i32
    );
    svc.complete(CLINIC, &plan_id, &implant).await.unwrap();
    let last = svc.complete(CLINIC, &plan_id, &crown).await.unwrap();
    let done = last.plan.unwrap();
    assert_eq!(
        done.status,
        pb::PlanStatus::Completed as i32,
        "completes by itself"
    );
    assert!(done.complete_time.is_some());
    assert_eq!(done.totals.unwrap().remaining.unwrap().amount_minor, 0);

    let again = svc.complete(CLINIC, &plan_id, &crown).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let summary = svc
        .plans
        .clone()
        .get_patient_billing_summary(svc.req(
            pb::GetPatientBillingSummaryRequest {
                patient_id: "pat-1".into(),
            },
            CLINIC,
            Role::FrontDesk,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.lines.len(), 1);
    let line = &summary.lines[0];
    assert_eq!(line.currency, "USD");
    assert_eq!(line.approved.as_ref().unwrap().amount_minor, 355_000);
    assert_eq!(line.completed.as_ref().unwrap().amount_minor, 355_000);
    assert_eq!(line.remaining.as_ref().unwrap().amount_minor, 0);
    assert_eq!(line.planned.as_ref().unwrap().amount_minor, 0);
    assert_eq!(line.plan_count, 1);
    svc.stop().await;
}

#[tokio::test]
async fn items_are_validated_and_cycles_are_named() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, [extraction, _implant, crown]) = svc.journey(CLINIC, "pat-1").await;

    // A tooth that does not exist.
    let bad = svc
        .add_item(CLINIC, &plan_id, item("D2740", Some(("33", "")), 1, vec![]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&bad), vec!["item.tooth.number"]);
    let mut fdi = item("D2740", None, 1, vec![]);
    fdi.tooth = Some(followup_proto::followup::common::v1::Tooth {
        numbering: followup_proto::followup::common::v1::ToothNumbering::Fdi as i32,
        number: "26".into(),
        surfaces: "xo".into(),
    });
    let bad = svc.add_item(CLINIC, &plan_id, fdi).await.unwrap_err();
    assert_eq!(field_violations(&bad), vec!["item.tooth.surfaces"]);

    // A code the clinic does not have.
    let bad = svc
        .add_item(CLINIC, &plan_id, item("D0001", None, 1, vec![]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("not in the clinic's code list"),
        "{}",
        bad.message()
    );

    // An override without a reason.
    let mut discounted = item("D0120", None, 1, vec![]);
    discounted.price = Some(usd(5_000));
    let bad = svc
        .add_item(CLINIC, &plan_id, discounted)
        .await
        .unwrap_err();
    assert_eq!(field_violations(&bad), vec!["item.price_override_reason"]);

    // A dependency on another plan's item.
    let (other_plan, [other_item, _, _]) = svc.journey(CLINIC, "pat-2").await;
    let bad = svc
        .add_item(CLINIC, &plan_id, item("D0120", None, 1, vec![other_item]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("is not an item of plan"),
        "{}",
        bad.message()
    );
    let _ = other_plan;

    // extraction depending on the crown closes extraction → implant → crown.
    let cycle = svc
        .plans
        .clone()
        .update_plan_item(svc.owner(pb::UpdatePlanItemRequest {
            plan_id: plan_id.clone(),
            item: Some(pb::PlanItem {
                item_id: extraction.clone(),
                depends_on_item_ids: vec![crown.clone()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["depends_on_item_ids".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(cycle.code(), Code::InvalidArgument);
    assert_eq!(
        cycle.message(),
        "depends_on_item_ids: dependency cycle item 1 (D7140) -> item 3 (D6065) -> item 2 (D6010) -> item 1 (D7140)"
    );

    // An update with a mask: the price back to the schedule fee.
    let updated = svc
        .plans
        .clone()
        .update_plan_item(svc.owner(pb::UpdatePlanItemRequest {
            plan_id: plan_id.clone(),
            item: Some(pb::PlanItem {
                item_id: crown.clone(),
                note: "Shade A2".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["price".into(), "note".into()],
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated
            .item
            .as_ref()
            .unwrap()
            .price
            .as_ref()
            .unwrap()
            .amount_minor,
        150_000
    );
    assert_eq!(updated.item.unwrap().note, "Shade A2");
    assert_eq!(updated.totals.unwrap().total.unwrap().amount_minor, 370_000);

    // A mask is required and its paths must exist.
    let bad = svc
        .plans
        .clone()
        .update_plan_item(svc.owner(pb::UpdatePlanItemRequest {
            plan_id: plan_id.clone(),
            item: Some(pb::PlanItem {
                item_id: crown.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["status".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&bad), vec!["update_mask"]);

    // Removing a prerequisite names its dependents, unless asked to remove the dependencies.
    let refused = svc
        .plans
        .clone()
        .delete_plan_item(svc.owner(pb::DeletePlanItemRequest {
            plan_id: plan_id.clone(),
            item_id: extraction.clone(),
            remove_dependencies: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("item 2 (D6010)"),
        "{}",
        refused.message()
    );
    let totals = svc
        .plans
        .clone()
        .delete_plan_item(svc.owner(pb::DeletePlanItemRequest {
            plan_id: plan_id.clone(),
            item_id: extraction,
            remove_dependencies: true,
        }))
        .await
        .unwrap()
        .into_inner()
        .totals
        .unwrap();
    assert_eq!(totals.total.unwrap().amount_minor, 350_000);
    svc.stop().await;
}

#[tokio::test]
async fn approve_names_each_missing_field_and_only_drafts_are_edited() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let plan = svc.create_plan(CLINIC, "pat-1", "Check-up").await;
    let empty = svc.approve(CLINIC, &plan.plan_id).await.unwrap_err();
    assert_eq!(empty.code(), Code::FailedPrecondition);
    assert!(empty.message().contains("no items"), "{}", empty.message());

    let mut no_dentist = item("D0120", None, 1, vec![]);
    no_dentist.practitioner_id.clear();
    svc.add_item(CLINIC, &plan.plan_id, no_dentist)
        .await
        .unwrap();
    // D2740 has no fee in the schedule and no price: price is missing too.
    svc.add_item(
        CLINIC,
        &plan.plan_id,
        item("D2740", Some(("3", "")), 1, vec![]),
    )
    .await
    .unwrap();
    let missing = svc.approve(CLINIC, &plan.plan_id).await.unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert!(
        missing
            .message()
            .contains("item 1 (D0120): practitioner_id is empty"),
        "{}",
        missing.message()
    );
    assert!(
        missing.message().contains("item 2 (D2740): price is empty"),
        "{}",
        missing.message()
    );

    // A stale version is refused.
    let stale = svc
        .plans
        .clone()
        .approve_plan(svc.owner(pb::ApprovePlanRequest {
            plan_id: plan.plan_id.clone(),
            plan_version: 7,
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);

    // Sending refuses an empty plan; a SENT plan is not edited.
    let empty_plan = svc.create_plan(CLINIC, "pat-1", "Nothing yet").await;
    let refused = svc
        .plans
        .clone()
        .send_plan(svc.owner(pb::SendPlanRequest {
            plan_id: empty_plan.plan_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    svc.send(CLINIC, &plan.plan_id).await;
    let edit = svc
        .add_item(CLINIC, &plan.plan_id, item("D0120", None, 1, vec![]))
        .await
        .unwrap_err();
    assert_eq!(edit.code(), Code::FailedPrecondition);
    assert!(edit.message().contains("SENT"), "{}", edit.message());
    svc.stop().await;
}

#[tokio::test]
async fn revising_keeps_the_approved_version_on_record() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, [extraction, ..]) = svc.journey(CLINIC, "pat-1").await;
    svc.send(CLINIC, &plan_id).await;
    svc.approve(CLINIC, &plan_id).await.unwrap();
    svc.complete(CLINIC, &plan_id, &extraction).await.unwrap();

    let draft_revise = svc.create_plan(CLINIC, "pat-1", "Other").await;
    let refused = svc
        .plans
        .clone()
        .revise_plan(svc.owner(pb::RevisePlanRequest {
            plan_id: draft_revise.plan_id,
            reason: "x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let no_reason = svc
        .plans
        .clone()
        .revise_plan(svc.owner(pb::RevisePlanRequest {
            plan_id: plan_id.clone(),
            reason: " ".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);

    let revised = svc
        .plans
        .clone()
        .revise_plan(svc.owner(pb::RevisePlanRequest {
            plan_id: plan_id.clone(),
            reason: "bridge instead".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(revised.plan_version, 2);
    assert_eq!(revised.status, pb::PlanStatus::Draft as i32);
    assert_eq!(revised.revision_reason, "bridge instead");
    let kept = revised
        .items
        .iter()
        .find(|i| i.item_id == extraction)
        .unwrap();
    assert_eq!(
        kept.status,
        pb::PlanItemStatus::Completed as i32,
        "done stays done"
    );

    let v1 = svc
        .plans
        .clone()
        .get_plan(svc.owner(pb::GetPlanRequest {
            plan_id: plan_id.clone(),
            plan_version: 1,
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(v1.status, pb::PlanStatus::Approved as i32);
    assert!(v1.approval.is_some());
    let versions = svc
        .plans
        .clone()
        .list_plan_versions(svc.owner(pb::ListPlanVersionsRequest {
            plan_id: plan_id.clone(),
            view: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(
        versions.iter().map(|p| p.plan_version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert!(versions[0].items.is_empty(), "BASIC view has no items");
    let missing = svc
        .plans
        .clone()
        .get_plan(svc.owner(pb::GetPlanRequest {
            plan_id: plan_id.clone(),
            plan_version: 9,
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The revision is sent and approved again; billing counts the current version only.
    svc.send(CLINIC, &plan_id).await;
    let again = svc.approve(CLINIC, &plan_id).await.unwrap();
    assert_eq!(again.plan_version, 2);
    svc.stop().await;
}

#[tokio::test]
async fn update_list_delete_and_cancel() {
    let svc = Svc::start().await;
    let standard = svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;

    // A second schedule with other fees re-prices items without an override.
    let insurer = svc
        .catalog
        .clone()
        .create_fee_schedule(svc.owner(pb::CreateFeeScheduleRequest {
            fee_schedule: Some(pb::FeeSchedule {
                name: "Delta PPO".into(),
                currency: "USD".into(),
                ..Default::default()
            }),
            copy_fees_from_fee_schedule_id: standard.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .fee_schedule
        .unwrap();
    assert!(!insurer.is_default);
    assert_eq!(insurer.fee_count, 4);
    svc.catalog
        .clone()
        .set_fees(svc.owner(pb::SetFeesRequest {
            fee_schedule_id: insurer.fee_schedule_id.clone(),
            fees: vec![pb::Fee {
                code: "D6010".into(),
                amount: Some(usd(180_000)),
            }],
            remove_codes: vec![],
        }))
        .await
        .unwrap();
    let updated = svc
        .plans
        .clone()
        .update_plan(svc.owner(pb::UpdatePlanRequest {
            plan: Some(pb::Plan {
                plan_id: plan_id.clone(),
                title: "Phase 1".into(),
                fee_schedule_id: insurer.fee_schedule_id.clone(),
                quote_expiry_date: "2027-01-31".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "title".into(),
                    "fee_schedule_id".into(),
                    "quote_expiry_date".into(),
                ],
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(updated.title, "Phase 1");
    assert_eq!(updated.quote_expiry_date, "2027-01-31");
    assert_eq!(
        updated.totals.unwrap().total.unwrap().amount_minor,
        20_000 + 180_000 + 135_000
    );
    let bad_date = svc
        .plans
        .clone()
        .update_plan(svc.owner(pb::UpdatePlanRequest {
            plan: Some(pb::Plan {
                plan_id: plan_id.clone(),
                quote_expiry_date: "31/01/2027".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["quote_expiry_date".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&bad_date), vec!["plan.quote_expiry_date"]);
    let no_title = svc
        .plans
        .clone()
        .create_plan(svc.owner(pb::CreatePlanRequest {
            plan: Some(pb::Plan {
                patient_id: "p".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&no_title), vec!["plan.title"]);

    // Lists: newest first, filtered, paginated.
    let second = svc.create_plan(CLINIC, "pat-2", "Whitening").await;
    let third = svc.create_plan(CLINIC, "pat-1", "Cleaning").await;
    let mut plans = svc.plans.clone();
    let page = plans
        .list_plans(svc.owner(pb::ListPlansRequest {
            page_size: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.plans
            .iter()
            .map(|p| p.plan_id.clone())
            .collect::<Vec<_>>(),
        vec![third.plan_id.clone(), second.plan_id.clone()]
    );
    assert!(page.plans[0].items.is_empty());
    let rest = plans
        .list_plans(svc.owner(pb::ListPlansRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.plans.len(), 1);
    assert_eq!(rest.plans[0].plan_id, plan_id);
    assert!(rest.next_page_token.is_empty());
    let of_patient = plans
        .list_plans(svc.owner(pb::ListPlansRequest {
            patient_id: "pat-1".into(),
            view: pb::PlanView::Full as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_patient.plans.len(), 2);
    assert_eq!(of_patient.plans[1].items.len(), 3, "FULL view has items");
    let bad_token = plans
        .list_plans(svc.owner(pb::ListPlansRequest {
            page_token: "%%%".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);

    // Delete: a never-sent draft goes; a sent plan is cancelled instead.
    plans
        .delete_plan(svc.owner(pb::DeletePlanRequest {
            plan_id: second.plan_id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(
        plans
            .get_plan(svc.owner(pb::GetPlanRequest {
                plan_id: second.plan_id,
                plan_version: 0
            }))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    svc.send(CLINIC, &plan_id).await;
    let refused = plans
        .delete_plan(svc.owner(pb::DeletePlanRequest {
            plan_id: plan_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let no_reason = plans
        .cancel_plan(svc.owner(pb::CancelPlanRequest {
            plan_id: plan_id.clone(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let cancelled = plans
        .cancel_plan(svc.owner(pb::CancelPlanRequest {
            plan_id: plan_id.clone(),
            reason: "patient chose another clinic".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(cancelled.status, pb::PlanStatus::Cancelled as i32);
    assert_eq!(cancelled.cancel_reason, "patient chose another clinic");
    let twice = plans
        .cancel_plan(svc.owner(pb::CancelPlanRequest {
            plan_id: plan_id.clone(),
            reason: "again".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    let resend = plans
        .send_plan(svc.owner(pb::SendPlanRequest {
            plan_id: plan_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(resend.code(), Code::FailedPrecondition);
    let bad_id = plans
        .get_plan(svc.owner(pb::GetPlanRequest {
            plan_id: "nope".into(),
            plan_version: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&bad_id), vec!["plan_id"]);
    svc.stop().await;
}

#[tokio::test]
async fn roles_and_clinics_are_kept_apart() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, [extraction, ..]) = svc.journey(CLINIC, "pat-1").await;
    let mut plans = svc.plans.clone();

    // No token, an expired token: UNAUTHENTICATED.
    let anonymous = plans
        .get_plan(tonic::Request::new(pb::GetPlanRequest {
            plan_id: plan_id.clone(),
            plan_version: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let expired = plans
        .get_plan(followup_platform::testkit::authed(
            pb::GetPlanRequest {
                plan_id: plan_id.clone(),
                plan_version: 0,
            },
            &svc.env.auth.expired_token(CLINIC, Role::Owner),
        ))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);

    // Front desk reads and sends, but does not edit or approve.
    for denied in [
        plans
            .create_plan(svc.req(
                pb::CreatePlanRequest {
                    plan: Some(pb::Plan {
                        patient_id: "p".into(),
                        title: "t".into(),
                        ..Default::default()
                    }),
                },
                CLINIC,
                Role::FrontDesk,
            ))
            .await
            .map(|_| ()),
        plans
            .approve_plan(svc.req(
                pb::ApprovePlanRequest {
                    plan_id: plan_id.clone(),
                    plan_version: 0,
                },
                CLINIC,
                Role::FrontDesk,
            ))
            .await
            .map(|_| ()),
        plans
            .complete_plan_item(svc.req(
                pb::CompletePlanItemRequest {
                    plan_id: plan_id.clone(),
                    item_id: extraction.clone(),
                    complete_time: None,
                },
                CLINIC,
                Role::FrontDesk,
            ))
            .await
            .map(|_| ()),
        plans
            .send_plan(svc.req(
                pb::SendPlanRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                CLINIC,
                Role::System,
            ))
            .await
            .map(|_| ()),
    ] {
        assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    }
    plans
        .list_plans(svc.req(pb::ListPlansRequest::default(), CLINIC, Role::System))
        .await
        .unwrap();
    svc.send(CLINIC, &plan_id).await;

    // Another clinic: NOT_FOUND for every plan RPC, and an empty list.
    let b = |role| (OTHER, role);
    let (tenant, role) = b(Role::Owner);
    let not_found = [
        plans
            .get_plan(svc.req(
                pb::GetPlanRequest {
                    plan_id: plan_id.clone(),
                    plan_version: 0,
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .list_plan_versions(svc.req(
                pb::ListPlanVersionsRequest {
                    plan_id: plan_id.clone(),
                    view: 0,
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .update_plan(svc.req(
                pb::UpdatePlanRequest {
                    plan: Some(pb::Plan {
                        plan_id: plan_id.clone(),
                        title: "mine".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["title".into()],
                    }),
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .delete_plan(svc.req(
                pb::DeletePlanRequest {
                    plan_id: plan_id.clone(),
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .create_plan_item(svc.req(
                pb::CreatePlanItemRequest {
                    plan_id: plan_id.clone(),
                    item: Some(item("D0120", None, 1, vec![])),
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .send_plan(svc.req(
                pb::SendPlanRequest {
                    plan_id: plan_id.clone(),
                    ..Default::default()
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .approve_plan(svc.req(
                pb::ApprovePlanRequest {
                    plan_id: plan_id.clone(),
                    plan_version: 0,
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .complete_plan_item(svc.req(
                pb::CompletePlanItemRequest {
                    plan_id: plan_id.clone(),
                    item_id: extraction.clone(),
                    complete_time: None,
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .cancel_plan(svc.req(
                pb::CancelPlanRequest {
                    plan_id: plan_id.clone(),
                    reason: "x".into(),
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
        plans
            .revise_plan(svc.req(
                pb::RevisePlanRequest {
                    plan_id: plan_id.clone(),
                    reason: "x".into(),
                },
                tenant,
                role,
            ))
            .await
            .map(|_| ()),
    ];
    for (i, result) in not_found.into_iter().enumerate() {
        assert_eq!(result.unwrap_err().code(), Code::NotFound, "call {i}");
    }
    let theirs = plans
        .list_plans(svc.req(pb::ListPlansRequest::default(), tenant, role))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.plans.is_empty());
    let billing = plans
        .get_patient_billing_summary(svc.req(
            pb::GetPatientBillingSummaryRequest {
                patient_id: "pat-1".into(),
            },
            tenant,
            role,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(billing.lines.is_empty());
    // Clinic A's plan is untouched.
    assert_eq!(
        svc.get(CLINIC, &plan_id).await.title,
        "Phase 1: restorations"
    );
    svc.stop().await;
}

#[tokio::test]
async fn sending_chooses_sections_and_link_lifetimes() {
    use followup_proto::followup::common::v1 as common;
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let mut plans = svc.plans.clone();
    plans
        .update_plan(svc.owner(pb::UpdatePlanRequest {
            plan: Some(pb::Plan {
                plan_id: plan_id.clone(),
                images: vec![
                    common::ImageRef {
                        image_id: "xray-1".into(),
                        url: "https://images.example/xray-1.png".into(),
                        kind: common::ImageKind::Radiograph as i32,
                        caption: "Lower left, before".into(),
                    },
                    common::ImageRef {
                        image_id: "scan-1".into(),
                        url: "https://images.example/scan-1.stl".into(),
                        kind: common::ImageKind::ImageKind3dModel as i32,
                        caption: "Intraoral scan".into(),
                    },
                ],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["images".into()],
            }),
        }))
        .await
        .unwrap();
    let bad_image = plans
        .update_plan(svc.owner(pb::UpdatePlanRequest {
            plan: Some(pb::Plan {
                plan_id: plan_id.clone(),
                images: vec![common::ImageRef {
                    url: "javascript:alert(1)".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["images".into()],
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(field_violations(&bad_image), vec!["plan.images[0].url"]);

    for (sections, ttl_days, field) in [
        (
            vec![
                common::PortalSection::Cover as i32,
                common::PortalSection::Cover as i32,
            ],
            None,
            "sections",
        ),
        (vec![0], None, "sections"),
        (vec![], Some(366), "link_ttl"),
    ] {
        let refused = plans
            .send_plan(svc.owner(pb::SendPlanRequest {
                plan_id: plan_id.clone(),
                sections,
                link_ttl: ttl_days.map(|d: i64| prost_types::Duration {
                    seconds: d * 86_400,
                    nanos: 0,
                }),
                delivery_channel: 0,
            }))
            .await
            .unwrap_err();
        assert_eq!(field_violations(&refused), vec![field]);
    }

    // By default: cover, treatment details, and the image sections the plan has.
    let first = svc.send(CLINIC, &plan_id).await;
    let (_, _, page) = http(
        "GET",
        &first.portal_url.replace("localhost", "127.0.0.1"),
        &[],
        "",
    )
    .await;
    for section in ["cover", "treatment_details", "images", "3d_models"] {
        assert!(
            page.contains(&format!(r#"data-followup-section="{section}""#)),
            "{section}"
        );
    }
    assert!(page.contains("Lower left, before") && page.contains("images.example"));

    // A re-send with chosen sections and a one-day link: a fresh link; the first still works.
    let second = plans
        .send_plan(svc.req(
            pb::SendPlanRequest {
                plan_id: plan_id.clone(),
                sections: vec![
                    common::PortalSection::TreatmentDetails as i32,
                    common::PortalSection::Cover as i32,
                ],
                link_ttl: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
                delivery_channel: common::Channel::Sms as i32,
            },
            CLINIC,
            Role::FrontDesk,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.portal_url, first.portal_url);
    assert_eq!(second.plan.as_ref().unwrap().send_count, 2);
    let expires = second.portal_link_expire_time.unwrap().seconds - chrono::Utc::now().timestamp();
    assert!((86_000..=86_400).contains(&expires), "{expires}");
    let (_, _, page) = http(
        "GET",
        &second.portal_url.replace("localhost", "127.0.0.1"),
        &[],
        "",
    )
    .await;
    let details = page
        .find(r#"data-followup-section="treatment_details""#)
        .unwrap();
    let cover = page.find(r#"data-followup-section="cover""#).unwrap();
    assert!(details < cover, "sections in the order sent");
    assert!(!page.contains(r#"data-followup-section="images""#));
    let (status, _, _) = http(
        "GET",
        &first.portal_url.replace("localhost", "127.0.0.1"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    svc.stop().await;
}
