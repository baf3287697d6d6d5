//! Every RPC against a real database: filters, sorts, pages, totals, the queue, staff changes, another
//! clinic's token, bad arguments, roles, and WatchCases.

use std::collections::HashSet;
use std::time::Duration;

use followup_platform::auth::Role;
use followup_platform::testkit::authed;
use followup_proto::followup::cases::v1 as pb;
use followup_proto::followup::common::v1::CaseStatus;
use followup_proto::followup::events::v1 as ev;
use futures::StreamExt;
use prost::Message;
use tonic::Code;

use crate::support::*;

/// Seeds cases in known states; returns their ids in seeding order.
async fn seed(h: &Harness, n: usize, minute: i64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let plan = plan_id();
        h.publish(&plan_sent(Sent {
            plan: &plan,
            patient: &format!("p-{i}"),
            value: eur(10_000 * (i as i64 + 1)),
            minute: minute + i as i64,
            ..Sent::default()
        }))
        .await;
        ids.push(plan);
    }
    for id in &ids {
        h.wait_status(id, CaseStatus::SentNotViewed).await;
    }
    ids
}

fn ids(response: &pb::ListCasesResponse) -> Vec<String> {
    response.cases.iter().map(|c| c.case_id.clone()).collect()
}

#[tokio::test]
async fn lists_filter_sort_and_total_the_whole_filtered_set() {
    let h = Harness::start().await;
    h.publish(&staff(CLINIC, "fd-1", "Fiona Desk")).await;
    h.publish(&patient(CLINIC, "p-1", "Maria", "Lima")).await;
    // a: sent 250k (owner fd-1); b: viewed 100k; c: booked 400k; d: waiting-to-be USD 50k; e: draft.
    let (a, b, c, d, e) = (plan_id(), plan_id(), plan_id(), plan_id(), plan_id());
    h.publish(&plan_sent(Sent {
        plan: &a,
        owner: "fd-1",
        minute: 1,
        ..Sent::default()
    }))
    .await;
    h.publish(&plan_sent(Sent {
        plan: &b,
        patient: "p-2",
        value: eur(100_000),
        minute: 2,
        ..Sent::default()
    }))
    .await;
    h.publish(&plan_viewed(CLINIC, &b, "p-2", 10)).await;
    h.publish(&plan_sent(Sent {
        plan: &c,
        patient: "p-3",
        value: eur(400_000),
        minute: 3,
        ..Sent::default()
    }))
    .await;
    h.publish(&booked(CLINIC, &c, "p-3", "appt-3", 20)).await;
    h.publish(&plan_sent(Sent {
        plan: &d,
        patient: "p-4",
        value: money(50_000, "USD"),
        minute: 4,
        ..Sent::default()
    }))
    .await;
    h.publish(&plan_created(CLINIC, &e, "p-5", 5)).await;
    h.wait_status(&b, CaseStatus::SentViewed).await;
    h.wait_status(&c, CaseStatus::PatientBooked).await;
    h.wait_status(&d, CaseStatus::SentNotViewed).await;
    h.wait_status(&e, CaseStatus::DraftNotSent).await;
    h.wait_case(&a, "patient name", |c| {
        c.case
            .as_ref()
            .is_some_and(|c| c.patient_name == "Maria Lima")
    })
    .await;

    // Everything, newest sent first (the draft sorts by creation).
    let all = h.list(pb::ListCasesRequest::default()).await.unwrap();
    assert_eq!(
        ids(&all),
        vec![e.clone(), d.clone(), c.clone(), b.clone(), a.clone()]
    );
    assert_eq!(all.total_count, 5);
    assert_eq!(
        all.total_value,
        vec![eur(750_000).unwrap(), money(50_000, "USD").unwrap()]
    );
    let counts: Vec<(i32, i32)> = all
        .status_counts
        .iter()
        .map(|s| (s.status, s.count))
        .collect();
    assert_eq!(
        counts,
        vec![
            (CaseStatus::DraftNotSent as i32, 1),
            (CaseStatus::SentNotViewed as i32, 2),
            (CaseStatus::SentViewed as i32, 1),
            (CaseStatus::PatientBooked as i32, 1),
        ]
    );

    // Statuses: the totals follow the filter, the per-status counts ignore it (the dashboard's tabs).
    let open = h
        .list(pb::ListCasesRequest {
            statuses: vec![
                CaseStatus::SentNotViewed as i32,
                CaseStatus::SentViewed as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&open), vec![d.clone(), b.clone(), a.clone()]);
    assert_eq!(open.total_count, 3);
    assert_eq!(open.status_counts.len(), 4);

    // Owner, unassigned, viewed, value range, text, sent range, and sorts.
    let owned = h
        .list(pb::ListCasesRequest {
            owner_staff_id: "fd-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&owned), vec![a.clone()]);
    assert_eq!(owned.cases[0].owner_name, "Fiona Desk");
    let unassigned = h
        .list(pb::ListCasesRequest {
            unassigned: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(unassigned.total_count, 4);
    let viewed = h
        .list(pb::ListCasesRequest {
            viewed: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&viewed), vec![b.clone()]);
    assert_eq!(viewed.total_count, 1);
    let valued = h
        .list(pb::ListCasesRequest {
            min_value: eur(100_000),
            max_value: eur(250_000),
            order_by: pb::CaseOrder::Value as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&valued), vec![a.clone(), b.clone()]);
    assert_eq!(valued.total_value, vec![eur(350_000).unwrap()]);
    let by_name = h
        .list(pb::ListCasesRequest {
            patient_query: "LIMA".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_name), vec![a.clone()]);
    let sent_range = h
        .list(pb::ListCasesRequest {
            sent_after: ts(at(2)),
            sent_before: ts(at(4)),
            reverse: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&sent_range), vec![b.clone(), c.clone()]);
    let by_activity = h
        .list(pb::ListCasesRequest {
            order_by: pb::CaseOrder::LastActivity as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_activity.cases[0].case_id, c, "booked last");
}

#[tokio::test]
async fn pages_are_stable_while_cases_are_added() {
    let h = Harness::start().await;
    let seeded = seed(&h, 23, 0).await;
    let first = h
        .list(pb::ListCasesRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.cases.len(), 10);
    assert!(!first.next_page_token.is_empty());
    // New cases arrive, newer than everything listed so far.
    let added = seed(&h, 4, 100).await;
    let mut seen: Vec<String> = ids(&first);
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let page = h
            .list(pb::ListCasesRequest {
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page.total_count, 27,
            "totals cover the whole set, new cases too"
        );
        seen.extend(ids(&page));
        token = page.next_page_token;
    }
    // The counters' deltas are folded in the background; the totals stay the same before and after.
    let pool = h.env.db.pool().await;
    let mut folded = false;
    for _ in 0..300 {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM case_count_deltas")
            .fetch_one(&pool)
            .await
            .unwrap();
        if pending == 0 {
            folded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(folded, "count deltas are folded into the counts");
    let after_folding = h.list(pb::ListCasesRequest::default()).await.unwrap();
    assert_eq!(after_folding.total_count, 27);
    assert_eq!(
        after_folding.total_value,
        vec![eur((1..=23).sum::<i64>() * 10_000 + (1..=4).sum::<i64>() * 10_000).unwrap()]
    );
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no case twice");
    let expected: HashSet<&String> = seeded.iter().collect();
    assert_eq!(unique, expected, "every case that existed, none skipped");
    assert!(added.iter().all(|a| !unique.contains(a)));

    // The same walk by value and by priority, both total orders.
    for order in [pb::CaseOrder::Value, pb::CaseOrder::Priority] {
        let mut walked = Vec::new();
        let mut token = String::new();
        loop {
            let page = h
                .list(pb::ListCasesRequest {
                    page_size: 7,
                    order_by: order as i32,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            walked.extend(ids(&page));
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(walked.len(), 27, "{order:?}");
        assert_eq!(walked.iter().collect::<HashSet<_>>().len(), 27);
    }

    // A token only works with the filters it was issued for.
    let refused = h
        .list(pb::ListCasesRequest {
            page_size: 10,
            page_token: first.next_page_token.clone(),
            order_by: pb::CaseOrder::Value as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("page_token"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn the_queue_ranks_viewed_without_response_first_with_reasons() {
    let h = Harness::start().await;
    let (small_viewed, big_viewed, not_viewed, booked_case) =
        (plan_id(), plan_id(), plan_id(), plan_id());
    for (plan, value, patient) in [
        (&small_viewed, 10_000, "p-1"),
        (&big_viewed, 90_000, "p-2"),
        (&not_viewed, 500_000, "p-3"),
        (&booked_case, 900_000, "p-4"),
    ] {
        h.publish(&plan_sent(Sent {
            plan,
            patient,
            value: eur(value),
            ..Sent::default()
        }))
        .await;
    }
    h.publish(&engagement(CLINIC, &small_viewed, "p-1", 30, 2, 14 * 60))
        .await;
    h.publish(&plan_viewed(CLINIC, &big_viewed, "p-2", 40))
        .await;
    h.publish(&booked(CLINIC, &booked_case, "p-4", "appt", 50))
        .await;
    h.wait_status(&small_viewed, CaseStatus::SentViewed).await;
    h.wait_status(&big_viewed, CaseStatus::SentViewed).await;
    h.wait_status(&booked_case, CaseStatus::PatientBooked).await;
    h.clock
        .advance(chrono::Duration::days(6) + chrono::Duration::hours(1));
    h.wait_status(&small_viewed, CaseStatus::WaitingForResponse)
        .await;
    h.wait_status(&big_viewed, CaseStatus::WaitingForResponse)
        .await;

    let token = h.token(Role::FrontDesk);
    let queue = h
        .client
        .clone()
        .list_follow_up_queue(authed(pb::ListFollowUpQueueRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let order: Vec<(i32, String)> = queue
        .entries
        .iter()
        .map(|e| (e.rank, e.case.as_ref().unwrap().case_id.clone()))
        .collect();
    // Six days on, both viewed cases wait for a response: by value, then the unviewed one; the booked
    // case is not in the queue.
    assert_eq!(
        order,
        vec![
            (1, big_viewed.clone()),
            (2, small_viewed.clone()),
            (3, not_viewed.clone())
        ]
    );
    assert_eq!(queue.total_count, 3);
    assert_eq!(
        queue.entries[1].reason,
        "viewed twice, 14 min on treatment details, no reply for 6 days"
    );
    assert_eq!(queue.entries[2].reason, "sent 6 days ago, not viewed yet");

    // Paged, the ranks continue.
    let first = h
        .client
        .clone()
        .list_follow_up_queue(authed(
            pb::ListFollowUpQueueRequest {
                page_size: 2,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let second = h
        .client
        .clone()
        .list_follow_up_queue(authed(
            pb::ListFollowUpQueueRequest {
                page_size: 2,
                page_token: first.next_page_token,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.entries[0].rank, 3);
    assert!(second.next_page_token.is_empty());
}

#[tokio::test]
async fn staff_change_status_add_notes_and_assign_owners() {
    let h = Harness::start().await;
    let mut published = h.subscribe_cases(CLINIC).await;
    h.publish(&staff(CLINIC, "fd-2", "Frank Desk")).await;
    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        ..Sent::default()
    }))
    .await;
    h.wait_status(&plan, CaseStatus::SentNotViewed).await;
    let token = h.token_of(CLINIC, "fd-1", Role::FrontDesk);
    let mut client = h.client.clone();

    // Optimistic concurrency: someone else changed it.
    let stale = client
        .update_case_status(authed(
            pb::UpdateCaseStatusRequest {
                case_id: plan.clone(),
                status: CaseStatus::PatientRejected as i32,
                reason: String::new(),
                expected_status: CaseStatus::SentViewed as i32,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);

    h.clock.set(at(30));
    let rejected = client
        .update_case_status(authed(
            pb::UpdateCaseStatusRequest {
                case_id: plan.clone(),
                status: CaseStatus::PatientRejected as i32,
                reason: "not ready financially".into(),
                expected_status: CaseStatus::SentNotViewed as i32,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rejected.case.unwrap().status,
        CaseStatus::PatientRejected as i32
    );

    // A later automatic event does not undo the staff change; a later booking does.
    h.publish(&plan_viewed(CLINIC, &plan, "p-1", 40)).await;
    h.wait_case(&plan, "view recorded", |c| {
        c.case.as_ref().is_some_and(|c| c.viewed)
    })
    .await;
    assert_eq!(
        h.get(&plan).await.unwrap().case.unwrap().status,
        CaseStatus::PatientRejected as i32
    );

    let note = client
        .add_note(authed(
            pb::AddNoteRequest {
                case_id: plan.clone(),
                text: "Called, will think about it over the holidays".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .note
        .unwrap();
    assert_eq!(note.author_staff_id, "fd-1");

    let unknown = client
        .assign_owner(authed(
            pb::AssignOwnerRequest {
                case_id: plan.clone(),
                owner_staff_id: "nobody".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    let assigned = client
        .assign_owner(authed(
            pb::AssignOwnerRequest {
                case_id: plan.clone(),
                owner_staff_id: "fd-2".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap();
    assert_eq!(assigned.owner_staff_id, "fd-2");
    assert_eq!(assigned.owner_name, "Frank Desk");

    h.publish(&booked(CLINIC, &plan, "p-1", "appt-1", 60)).await;
    let case = h.wait_status(&plan, CaseStatus::PatientBooked).await;
    assert_eq!(case.notes.len(), 1);
    assert_eq!(
        case.notes[0].text,
        "Called, will think about it over the holidays"
    );
    let staff_change = case
        .timeline
        .iter()
        .find(|e| e.actor_staff_id == "fd-1" && e.kind == pb::TimelineKind::StatusChanged as i32)
        .expect("the staff change is on the timeline");
    assert_eq!(staff_change.time, ts(at(30)));
    assert!(
        case.timeline
            .iter()
            .any(|e| e.kind == pb::TimelineKind::OwnerChanged as i32 && e.actor_staff_id == "fd-1")
    );

    // Reopening needs a reason; DRAFT and SUPERSEDED are not for staff to set.
    for (status, reason) in [
        (CaseStatus::SentViewed, ""),
        (CaseStatus::Superseded, "x"),
        (CaseStatus::DraftNotSent, "x"),
    ] {
        let refused = client
            .update_case_status(authed(
                pb::UpdateCaseStatusRequest {
                    case_id: plan.clone(),
                    status: status as i32,
                    reason: reason.into(),
                    expected_status: 0,
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{status:?}");
    }

    // The staff change and the owner assignment went out through the outbox.
    let mut staff_change_seen = false;
    let mut owner_seen = false;
    while !(staff_change_seen && owner_seen) {
        let message = next_message(&mut published).await;
        if message.subject.as_str().ends_with("case_status_changed") {
            let e = ev::CaseStatusChanged::decode(message.payload.as_ref()).unwrap();
            if e.source == ev::ChangeSource::Staff as i32 {
                assert_eq!(e.changed_by_staff_id, "fd-1");
                assert_eq!(e.reason, "not ready financially");
                staff_change_seen = true;
            }
        } else if message.subject.as_str().ends_with("case_owner_assigned") {
            let e = ev::CaseOwnerAssigned::decode(message.payload.as_ref()).unwrap();
            assert_eq!(e.owner_staff_id, "fd-2");
            assert_eq!(e.assigned_by_staff_id, "fd-1");
            owner_seen = true;
        }
    }
}

#[tokio::test]
async fn another_clinic_sees_nothing_and_roles_are_enforced() {
    let h = Harness::start().await;
    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        ..Sent::default()
    }))
    .await;
    h.wait_status(&plan, CaseStatus::SentNotViewed).await;
    let mut client = h.client.clone();
    let other = h.token_of(OTHER_CLINIC, "owner-b", Role::Owner);

    let get = client
        .get_case(authed(
            pb::GetCaseRequest {
                case_id: plan.clone(),
                timeline_page_size: 0,
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let list = client
        .list_cases(authed(pb::ListCasesRequest::default(), &other))
        .await
        .unwrap()
        .into_inner();
    assert!(list.cases.is_empty());
    assert_eq!(list.total_count, 0);
    let update = client
        .update_case_status(authed(
            pb::UpdateCaseStatusRequest {
                case_id: plan.clone(),
                status: CaseStatus::PatientBooked as i32,
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(update.code(), Code::NotFound);
    let timeline = client
        .list_timeline_entries(authed(
            pb::ListTimelineEntriesRequest {
                case_id: plan.clone(),
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(timeline.code(), Code::NotFound);

    // The system role reads but does not change.
    let system = h.token(Role::System);
    client
        .get_case(authed(
            pb::GetCaseRequest {
                case_id: plan.clone(),
                timeline_page_size: 0,
            },
            &system,
        ))
        .await
        .unwrap();
    let denied = client
        .add_note(authed(
            pb::AddNoteRequest {
                case_id: plan.clone(),
                text: "hello".into(),
            },
            &system,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Front desk may not change clinic settings; an admin may.
    let settings = pb::UpdateCaseSettingsRequest {
        settings: Some(pb::CaseSettings {
            digest_hour: 8,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["digest_hour".into()],
        }),
    };
    let denied = client
        .update_case_settings(authed(settings.clone(), &h.token(Role::FrontDesk)))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let updated = client
        .update_case_settings(authed(settings, &h.token(Role::Admin)))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(updated.digest_hour, 8);
    assert_eq!(updated.response_window.unwrap().seconds, 48 * 3600);
    // No token at all.
    let anonymous = client
        .list_cases(tonic::Request::new(pb::ListCasesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn bad_arguments_say_what_to_fix() {
    let h = Harness::start().await;
    let token = h.token(Role::Owner);
    let mut client = h.client.clone();
    let list = |request: pb::ListCasesRequest| {
        let mut client = client.clone();
        let token = token.clone();
        async move {
            client
                .list_cases(authed(request, &token))
                .await
                .unwrap_err()
        }
    };
    let cases = [
        (
            pb::ListCasesRequest {
                sent_after: ts(at(10)),
                sent_before: ts(at(5)),
                ..Default::default()
            },
            "sent_before",
        ),
        (
            pb::ListCasesRequest {
                owner_staff_id: "fd-1".into(),
                unassigned: true,
                ..Default::default()
            },
            "unassigned",
        ),
        (
            pb::ListCasesRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListCasesRequest {
                min_value: eur(10),
                max_value: money(20, "USD"),
                ..Default::default()
            },
            "max_value.currency",
        ),
        (
            pb::ListCasesRequest {
                min_value: eur(30),
                max_value: eur(20),
                ..Default::default()
            },
            "max_value",
        ),
        (
            pb::ListCasesRequest {
                statuses: vec![42],
                ..Default::default()
            },
            "statuses",
        ),
        (
            pb::ListCasesRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListCasesRequest {
                patient_query: "x".repeat(101),
                ..Default::default()
            },
            "patient_query",
        ),
    ];
    for (request, field) in cases {
        let status = list(request).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let bad_id = client
        .get_case(authed(
            pb::GetCaseRequest {
                case_id: "123".into(),
                timeline_page_size: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let missing = client
        .get_case(authed(
            pb::GetCaseRequest {
                case_id: plan_id(),
                timeline_page_size: 0,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let empty_note = client
        .add_note(authed(
            pb::AddNoteRequest {
                case_id: plan_id(),
                text: "  ".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(empty_note.code(), Code::InvalidArgument);
    let no_period = client
        .get_leakage_report(authed(pb::GetLeakageReportRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(no_period.code(), Code::InvalidArgument);
    let long_period = client
        .get_leakage_report(authed(
            pb::GetLeakageReportRequest {
                start_time: ts(at(0)),
                end_time: ts(at(60 * 24 * 365 * 4)),
                owner_staff_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(long_period.code(), Code::InvalidArgument);
    for (settings, paths, field) in [
        (
            pb::CaseSettings {
                time_zone: "Mars/Olympus".into(),
                ..Default::default()
            },
            vec!["time_zone"],
            "settings.time_zone",
        ),
        (pb::CaseSettings::default(), vec![], "update_mask"),
        (pb::CaseSettings::default(), vec!["colour"], "update_mask"),
        (
            pb::CaseSettings {
                digest_hour: 25,
                ..Default::default()
            },
            vec!["digest_hour"],
            "settings.digest_hour",
        ),
    ] {
        let status = client
            .update_case_settings(authed(
                pb::UpdateCaseSettingsRequest {
                    settings: Some(settings),
                    update_mask: Some(prost_types::FieldMask {
                        paths: paths.into_iter().map(String::from).collect(),
                    }),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn watch_cases_sees_a_change_made_by_another_caller() {
    let h = Harness::start().await;
    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        ..Sent::default()
    }))
    .await;
    h.wait_status(&plan, CaseStatus::SentNotViewed).await;

    let watcher = h.token_of(CLINIC, "dashboard", Role::FrontDesk);
    let mut stream = h
        .client
        .clone()
        .watch_cases(authed(pb::WatchCasesRequest::default(), &watcher))
        .await
        .unwrap()
        .into_inner();
    // Another clinic's watcher must see nothing of clinic A.
    let mut other_stream = h
        .client
        .clone()
        .watch_cases(authed(
            pb::WatchCasesRequest::default(),
            &h.token_of(OTHER_CLINIC, "b", Role::Owner),
        ))
        .await
        .unwrap()
        .into_inner();

    // The stream is open once the server has subscribed; a colleague's note, then a status change.
    let colleague = h.token_of(CLINIC, "fd-9", Role::Dentist);
    let mut client = h.client.clone();
    let mut first = None;
    for _ in 0..50 {
        client
            .add_note(authed(
                pb::AddNoteRequest {
                    case_id: plan.clone(),
                    text: "Patient asked about financing".into(),
                },
                &colleague,
            ))
            .await
            .unwrap();
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), stream.next()).await
        {
            first = Some(message.unwrap());
            break;
        }
    }
    let first = first.expect("the watcher saw the note");
    assert_eq!(first.kind, pb::CaseChangeKind::Activity as i32);
    assert_eq!(first.case.as_ref().unwrap().case_id, plan);
    let entry = first.entry.unwrap();
    assert_eq!(entry.kind, pb::TimelineKind::Note as i32);
    assert_eq!(entry.actor_staff_id, "fd-9");

    client
        .update_case_status(authed(
            pb::UpdateCaseStatusRequest {
                case_id: plan.clone(),
                status: CaseStatus::PatientBooked as i32,
                reason: "booked on the phone".into(),
                expected_status: 0,
            },
            &colleague,
        ))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a change within ten seconds")
            .unwrap()
            .unwrap();
        if message.kind == pb::CaseChangeKind::Updated as i32 {
            assert_eq!(
                message.case.unwrap().status,
                CaseStatus::PatientBooked as i32
            );
            break;
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other_stream.next())
            .await
            .is_err(),
        "another clinic's watcher got nothing"
    );
}

#[tokio::test]
async fn watch_cases_sees_a_change_made_through_another_replica() {
    let h = Harness::start().await;
    // A second replica of the service on the same database and NATS.
    let config = h
        .env
        .config(&followup_cases::INFO, followup_cases::Settings::default());
    let replica = followup_cases::Service::build(config).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", replica.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut other_replica =
        followup_proto::followup::cases::v1::cases_service_client::CasesServiceClient::new(channel);

    let plan = plan_id();
    h.publish(&plan_sent(Sent {
        plan: &plan,
        ..Sent::default()
    }))
    .await;
    h.wait_status(&plan, CaseStatus::SentNotViewed).await;
    let mut stream = h
        .client
        .clone()
        .watch_cases(authed(
            pb::WatchCasesRequest::default(),
            &h.token(Role::Owner),
        ))
        .await
        .unwrap()
        .into_inner();
    let colleague = h.token_of(CLINIC, "fd-7", Role::FrontDesk);
    let mut seen = None;
    for _ in 0..50 {
        other_replica
            .add_note(authed(
                pb::AddNoteRequest {
                    case_id: plan.clone(),
                    text: "Called from the other office".into(),
                },
                &colleague,
            ))
            .await
            .unwrap();
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), stream.next()).await
        {
            seen = Some(message.unwrap());
            break;
        }
    }
    let seen = seen.expect("the watcher on replica A saw the note made through replica B");
    assert_eq!(seen.entry.unwrap().actor_staff_id, "fd-7");
    replica.stop().await;
}

/// "Slots refilled" counts every claim: one for a plan (with its value) and one from a waitlist entry
/// with no plan (no value, so in no currency's line, but counted).
#[tokio::test]
async fn the_report_counts_refilled_slots_with_and_without_a_value() {
    let h = Harness::start().await;
    let claim = |offer: &str,
                 case: Option<String>,
                 value: Option<followup_proto::followup::common::v1::Money>| {
        ev::SlotClaimed {
            event_id: followup_platform::event::new_event_id().to_string(),
            tenant_id: CLINIC.into(),
            occurred_at: ts(at(10)),
            slot_id: followup_platform::event::new_event_id().to_string(),
            slot_offer_id: offer.into(),
            patient_id: "pat-w".into(),
            case_ref: case.map(|id| followup_proto::followup::common::v1::CaseRef {
                target: Some(followup_proto::followup::common::v1::case_ref::Target::PlanId(id)),
            }),
            value,
            ..Default::default()
        }
    };
    let offer_a = followup_platform::event::new_event_id().to_string();
    let offer_b = followup_platform::event::new_event_id().to_string();
    h.publish(&claim(&offer_a, Some(plan_id()), eur(12_000)))
        .await;
    h.publish(&claim(&offer_b, None, None)).await;
    let token = h.token(Role::Owner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = h
            .client
            .clone()
            .get_leakage_report(authed(
                pb::GetLeakageReportRequest {
                    start_time: ts(at(0)),
                    end_time: ts(at(60)),
                    owner_staff_id: String::new(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        if report.slots_refilled_count == 2 {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both claims were not counted: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report.slots_refilled_without_value_count, 1);
    let eur_line = report
        .lines
        .iter()
        .find(|l| l.figures.as_ref().is_some_and(|f| f.currency == "EUR"))
        .and_then(|l| l.figures.clone())
        .expect("a EUR line");
    assert_eq!(eur_line.slots_refilled_count, 1);
    assert_eq!(
        eur_line.slots_refilled_value.map(|m| m.amount_minor),
        Some(12_000)
    );
}
