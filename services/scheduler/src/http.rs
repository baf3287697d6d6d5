//! The claim page of a slot offer's signed link: `GET` shows the slot and a button (a link scanner that
//! follows links must not claim anything), `POST` claims it for the offer's patient — the first claim
//! wins, later ones read "already taken". Browsers get HTML; other clients JSON.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use followup_proto::followup::events::v1 as ev;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::schedule::local_display;
use crate::storage::waitlist::{self, Claimed};
use crate::storage::{Store, settings};

#[derive(Clone)]
pub struct ClaimPages {
    pub pool: PgPool,
    pub store: Store,
}

pub fn router(pages: ClaimPages) -> Router {
    Router::new()
        .route("/slots/{tenant}/{offer}/{signature}", get(show).post(claim))
        .with_state(pages)
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn answer(
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    text: &str,
    button: bool,
) -> Response {
    if wants_html(headers) {
        let form = if button {
            "<form method=\"post\"><button type=\"submit\">Yes, book me in</button></form>"
        } else {
            ""
        };
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
             content=\"width=device-width\"><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p>\
             {form}</body></html>"
        );
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    } else {
        let key = if status.is_success() {
            "message"
        } else {
            "error"
        };
        (
            status,
            axum::Json(serde_json::json!({ key: text, "title": title })),
        )
            .into_response()
    }
}

/// The offer a link names, when its signature is ours.
fn verified(pages: &ClaimPages, tenant: &str, offer: &str, signature: &str) -> Option<Uuid> {
    let links = pages.store.links.as_ref()?;
    let offer = Uuid::parse_str(offer).ok()?;
    (followup_platform::event::is_valid_tenant(tenant) && links.verify(tenant, offer, signature))
        .then_some(offer)
}

fn not_found(headers: &HeaderMap) -> Response {
    answer(
        headers,
        StatusCode::NOT_FOUND,
        "Link not recognised",
        "This link is not valid. Please contact the clinic.",
        false,
    )
}

async fn show(
    State(pages): State<ClaimPages>,
    Path((tenant, offer, signature)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(offer_id) = verified(&pages, &tenant, &offer, &signature) else {
        return not_found(&headers);
    };
    let found = async {
        let mut conn = pages.pool.acquire().await?;
        let offer = waitlist::offer(&mut conn, &tenant, offer_id).await?;
        let slot = waitlist::slot(&mut conn, &tenant, offer.slot_id, false).await?;
        let tz = settings::load(&mut conn, &tenant).await?.tz;
        Ok::<_, crate::error::Error>((offer, slot, tz))
    }
    .await;
    let Ok((offer, slot, tz)) = found else {
        return not_found(&headers);
    };
    let when = local_display(slot.start_at, tz);
    let open = slot.state == "offering" && offer.state == "sent";
    if open {
        answer(
            &headers,
            StatusCode::OK,
            "An earlier appointment is free",
            &format!(
                "{when}, {} minutes. Would you like it?",
                slot.duration_secs / 60
            ),
            true,
        )
    } else {
        answer(
            &headers,
            StatusCode::GONE,
            "This appointment is no longer available",
            "Sorry, it has been taken or is no longer offered.",
            false,
        )
    }
}

async fn claim(
    State(pages): State<ClaimPages>,
    Path((tenant, offer, signature)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(offer_id) = verified(&pages, &tenant, &offer, &signature) else {
        return not_found(&headers);
    };
    let outcome = async {
        let mut tx = pages.pool.begin().await?;
        let outcome = waitlist::claim(
            &pages.store,
            &mut tx,
            &tenant,
            offer_id,
            ev::ClaimMethod::Link,
            "",
        )
        .await?;
        tx.commit().await?;
        Ok::<_, crate::error::Error>(outcome)
    }
    .await;
    match outcome {
        Ok(Claimed::Won { .. }) => answer(
            &headers,
            StatusCode::OK,
            "It's yours",
            "The clinic will confirm your new appointment shortly.",
            false,
        ),
        Ok(Claimed::Refused(why)) => answer(
            &headers,
            StatusCode::CONFLICT,
            "Sorry",
            why.message(),
            false,
        ),
        Err(crate::error::Error::NotFound { .. }) => not_found(&headers),
        Err(err) => {
            tracing::warn!(tenant, offer_id = %offer_id, error = %err, "claim by link failed");
            answer(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "Something went wrong on our side; please try again in a minute.",
                false,
            )
        }
    }
}
