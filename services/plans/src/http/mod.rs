//! The patient portal (port 8081): the plan as the patient sees it, and the patient's approval.
//!
//! - `GET  /v1/portal/plans/{plan_id}` with `Authorization: Bearer <portal token>`: the plan as JSON;
//! - `POST /v1/portal/plans/{plan_id}/approve` (same token): the patient approves; time, IP and user agent
//!   are kept as consent evidence;
//! - `GET  /p/{token}`: the reference patient page (server-rendered, sections marked
//!   `data-followup-section`, the engagement beacon script, an Approve button);
//! - `POST /p/{token}/approve`: the page's Approve form; `GET /p/{token}/print`: a print view.
//!
//! A token that is missing, tampered, expired or not issued by this service is 401; a plan that is not
//! the token's, no longer exists or is being revised (a DRAFT) is 404. Errors are JSON
//! `{"error": {"code", "message"}}` on the API and a short HTML page on `/p/`. Drafts, internal notes,
//! staff ids and other patients' data never leave here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use followup_platform::auth::{AuthError, PortalClaims, PortalVerifier};
use serde::{Deserialize, Serialize};
use tower_http::cors::{Any, CorsLayer};

use crate::app::App;
use crate::domain::money::Money;
use crate::domain::plan::{ApprovalChannel, ConsentEvidence, ImageKind, Plan, Status};
use crate::error::PlansError;
use crate::storage::plans::Send;

#[derive(Clone)]
struct Portal {
    app: App,
    verifier: PortalVerifier,
    templates: Arc<minijinja::Environment<'static>>,
}

/// The portal's routes. Its verifier is built from the signing key's public half (plus any previous
/// public keys configured for a rotation).
pub fn router(app: App) -> Result<Router, String> {
    let mut pems = vec![public_pem(app.settings.portal_signing_key.expose())?];
    pems.extend(app.settings.portal_previous_public_keys.iter().cloned());
    let verifier = PortalVerifier::from_pems(&pems).map_err(|e| e.to_string())?;
    let mut templates = minijinja::Environment::new();
    for (name, source) in [
        ("page.html", include_str!("../../templates/page.html")),
        ("print.html", include_str!("../../templates/print.html")),
        ("error.html", include_str!("../../templates/error.html")),
    ] {
        templates
            .add_template(name, source)
            .map_err(|e| format!("template {name}: {e}"))?;
    }
    let state = Portal {
        app,
        verifier,
        templates: Arc::new(templates),
    };
    // Token-authenticated, no cookies: any origin may call the JSON API.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([http::Method::GET, http::Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    let api = Router::new()
        .route("/v1/portal/plans/{plan_id}", get(api_plan))
        .route("/v1/portal/plans/{plan_id}/approve", post(api_approve))
        .layer(cors);
    Ok(Router::new()
        .merge(api)
        .route("/p/{token}", get(page))
        .route("/p/{token}/print", get(print))
        .route("/p/{token}/approve", post(page_approve))
        .with_state(state))
}

fn public_pem(private_pem: &str) -> Result<String, String> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem.trim())
        .map_err(|e| format!("portal_signing_key is not an Ed25519 PKCS#8 PEM key: {e}"))?;
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| e.to_string())
}

/// An error a portal client can act on.
#[derive(Debug)]
struct PortalError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl PortalError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no treatment plan for this link.",
        )
    }

    fn html(self, portal: &Portal) -> Response {
        let title = match self.status {
            StatusCode::UNAUTHORIZED => "This link does not work",
            StatusCode::NOT_FOUND => "Plan not available",
            StatusCode::CONFLICT => "This plan cannot be approved here",
            _ => "Something went wrong",
        };
        let body = portal
            .templates
            .get_template("error.html")
            .and_then(|t| t.render(minijinja::context! { title, message => self.message }))
            .unwrap_or_else(|_| title.to_string());
        (self.status, no_store(), Html(body)).into_response()
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, no_store(), Json(body)).into_response()
    }
}

impl From<AuthError> for PortalError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Missing => Self::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send the portal link's token as `Authorization: Bearer <token>`",
            ),
            AuthError::Expired => Self::new(
                StatusCode::UNAUTHORIZED,
                "link_expired",
                "This link has expired. Ask the clinic to send the plan again.",
            ),
            AuthError::Invalid(_) | AuthError::Key(_) => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_link",
                "This link is not valid. Check that it was copied whole, or ask the clinic for a new one.",
            ),
        }
    }
}

impl From<PlansError> for PortalError {
    fn from(err: PlansError) -> Self {
        match err {
            PlansError::NotFound { .. } => Self::not_found(),
            PlansError::MissingFields(_) => Self::new(
                StatusCode::CONFLICT,
                "cannot_approve",
                "This plan is not ready to be approved online yet. Please contact the clinic.",
            ),
            PlansError::Superseded { by, .. } => {
                Self::new(StatusCode::CONFLICT, "superseded", by.patient_message())
            }
            PlansError::Precondition { .. } => Self::new(
                StatusCode::CONFLICT,
                "plan_closed",
                "This plan can no longer be approved. Please contact the clinic.",
            ),
            other => {
                // Logged with a reference by the gRPC helper; the patient gets nothing private.
                let status = tonic::Status::from(other);
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("Something went wrong on our side. {}", status.message()),
                )
            }
        }
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::HeaderName::from_static("x-robots-tag"),
            HeaderValue::from_static("noindex"),
        ),
    ]
}

// ---- what the patient sees ----

#[derive(Serialize)]
struct MoneyView {
    amount_minor: i64,
    currency: String,
}

impl From<Money> for MoneyView {
    fn from(m: Money) -> Self {
        Self {
            amount_minor: m.minor,
            currency: m.currency.as_str().to_string(),
        }
    }
}

#[derive(Serialize)]
struct ItemView {
    item_id: String,
    code: String,
    name: String,
    /// "#14 MOD", "FDI 26"; null when not on a tooth.
    tooth: Option<String>,
    visit: i32,
    price: MoneyView,
    price_display: String,
    note: String,
    completed: bool,
    depends_on_item_ids: Vec<String>,
    /// The names of the treatments that come first, for people.
    after: String,
}

#[derive(Serialize)]
struct VisitView {
    visit: i32,
    subtotal: MoneyView,
    subtotal_display: String,
    items: Vec<ItemView>,
}

#[derive(Serialize)]
struct TotalsView {
    total: MoneyView,
    total_display: String,
    discount: MoneyView,
    discount_display: String,
    completed: MoneyView,
    remaining: MoneyView,
}

#[derive(Serialize)]
struct ImageView {
    image_id: String,
    url: String,
    kind: ImageKind,
    caption: String,
}

#[derive(Serialize)]
struct ApprovalView {
    /// "patient" or "clinic".
    by: &'static str,
    approve_time: String,
    approve_date: String,
}

#[derive(Serialize)]
struct PlanView {
    plan_id: String,
    plan_version: i32,
    title: String,
    /// "sent", "approved", "completed" or "cancelled".
    status: String,
    patient_note: String,
    quote_expiry_date: String,
    currency: String,
    sections: Vec<String>,
    visits: Vec<VisitView>,
    totals: TotalsView,
    images: Vec<ImageView>,
    photos: Vec<ImageView>,
    models: Vec<ImageView>,
    approval: Option<ApprovalView>,
    link_expire_time: String,
}

fn image_view(i: &crate::domain::plan::Image) -> ImageView {
    ImageView {
        image_id: i.image_id.clone(),
        url: i.url.clone(),
        kind: i.kind,
        caption: i.caption.clone(),
    }
}

fn view(plan: &Plan, send: &Send) -> PlanView {
    let totals = plan.totals();
    let ordered = plan.ordered_items();
    let name_of = |id: &uuid::Uuid| {
        plan.item(*id)
            .map(|i| i.code_name.clone())
            .unwrap_or_default()
    };
    let visits = totals
        .visits
        .iter()
        .map(|v| VisitView {
            visit: v.visit,
            subtotal: v.subtotal.into(),
            subtotal_display: v.subtotal.display(),
            items: ordered
                .iter()
                .filter(|i| i.visit == v.visit)
                .map(|i| {
                    let price = plan.money(i.price().unwrap_or(0));
                    ItemView {
                        item_id: i.id.to_string(),
                        code: i.code.clone(),
                        name: i.code_name.clone(),
                        tooth: i.tooth.as_ref().map(|t| t.label()),
                        visit: i.visit,
                        price: price.into(),
                        price_display: price.display(),
                        note: i.note.clone(),
                        completed: i.is_completed(),
                        depends_on_item_ids: i.depends_on.iter().map(|d| d.to_string()).collect(),
                        after: i
                            .depends_on
                            .iter()
                            .map(name_of)
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })
                .collect(),
        })
        .collect();
    PlanView {
        plan_id: plan.id.to_string(),
        plan_version: plan.version,
        title: plan.title.clone(),
        status: plan.status.as_str().to_lowercase(),
        patient_note: plan.patient_note.clone(),
        quote_expiry_date: crate::grpc::convert::date(plan.quote_expiry_date),
        currency: plan.currency.as_str().to_string(),
        sections: send.sections.clone(),
        visits,
        totals: TotalsView {
            total: totals.total.into(),
            total_display: totals.total.display(),
            discount: totals.discount.into(),
            discount_display: totals.discount.display(),
            completed: totals.completed.into(),
            remaining: totals.remaining.into(),
        },
        images: plan.images.iter().map(image_view).collect(),
        photos: plan
            .images
            .iter()
            .filter(|i| i.kind != ImageKind::Model3d)
            .map(image_view)
            .collect(),
        models: plan
            .images
            .iter()
            .filter(|i| i.kind == ImageKind::Model3d)
            .map(image_view)
            .collect(),
        approval: plan.approval.as_ref().map(|a| ApprovalView {
            by: match a.channel {
                ApprovalChannel::PatientPortal => "patient",
                ApprovalChannel::Staff => "clinic",
            },
            approve_time: a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            approve_date: a.at.format("%-d %B %Y").to_string(),
        }),
        link_expire_time: send
            .expire_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

// ---- handlers ----

fn bearer(headers: &HeaderMap) -> Result<&str, PortalError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Invalid("not ASCII".into()))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| AuthError::Invalid("not a bearer token".into()).into())
}

impl Portal {
    fn verify(&self, token: &str) -> Result<PortalClaims, PortalError> {
        self.verifier.verify(token).map_err(|err| {
            tracing::debug!(reason = %err, "portal token refused");
            PortalError::from(err)
        })
    }

    /// The plan behind a token, as long as the patient may see it (never a draft).
    async fn load(&self, claims: &PortalClaims) -> Result<(Plan, Send), PortalError> {
        let Some((plan, send)) = self.app.portal_plan(claims).await? else {
            return Err(PortalError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_link",
                "This link was not issued for this plan. Ask the clinic for a new one.",
            ));
        };
        if plan.status == Status::Draft {
            return Err(PortalError::new(
                StatusCode::NOT_FOUND,
                "plan_unavailable",
                "The clinic is updating this plan. You will receive a new link when it is ready.",
            ));
        }
        Ok((plan, send))
    }

    fn evidence(
        &self,
        claims: &PortalClaims,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> ConsentEvidence {
        let forwarded = self
            .app
            .settings
            .portal_trust_forwarded_for
            .then(|| headers.get("x-forwarded-for"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        ConsentEvidence {
            ip: forwarded.unwrap_or_else(|| peer.ip().to_string()),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .chars()
                .take(512)
                .collect(),
            link_id: claims.jti.clone(),
        }
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
        {
            Ok(body) => (no_store(), Html(body)).into_response(),
            Err(err) => {
                tracing::error!(error = %err, template = name, "portal template failed");
                PortalError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "The page could not be shown.",
                )
                .html(self)
            }
        }
    }
}

async fn api_plan(
    State(portal): State<Portal>,
    Path(plan_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let claims = portal.verify(bearer(&headers)?)?;
    if claims.plan_id != plan_id {
        return Err(PortalError::not_found());
    }
    let (plan, send) = portal.load(&claims).await?;
    Ok((no_store(), Json(view(&plan, &send))).into_response())
}

#[derive(Serialize)]
struct ApproveAnswer {
    status: String,
    approve_time: String,
    /// False when the plan was already approved (nothing changed).
    changed: bool,
}

async fn api_approve(
    State(portal): State<Portal>,
    Path(plan_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let claims = portal.verify(bearer(&headers)?)?;
    if claims.plan_id != plan_id {
        return Err(PortalError::not_found());
    }
    portal.load(&claims).await?;
    let evidence = portal.evidence(&claims, &headers, peer);
    let (plan, changed) = portal.app.approve_by_patient(&claims, evidence).await?;
    Ok((
        no_store(),
        Json(ApproveAnswer {
            status: plan.status.as_str().to_lowercase(),
            approve_time: plan
                .approval
                .map(|a| a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            changed,
        }),
    )
        .into_response())
}

/// A configured URL inside a double-quoted attribute: quotes and angle brackets cannot end it early.
fn attribute_safe(url: &str) -> String {
    url.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[derive(Deserialize)]
struct PageQuery {
    approved: Option<String>,
}

async fn page(
    State(portal): State<Portal>,
    Path(token): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let loaded = match portal.verify(&token) {
        Ok(claims) => portal.load(&claims).await,
        Err(err) => Err(err),
    };
    let (plan, send) = match loaded {
        Ok(found) => found,
        Err(err) => return err.html(&portal),
    };
    let notice = query
        .approved
        .is_some()
        .then_some("Thank you: your approval was sent to the clinic.");
    portal.render(
        "page.html",
        minijinja::context! {
            plan => minijinja::value::Serde(view(&plan, &send)),
            // Verified tokens are base64url and dots, the URL is configuration: neither needs escaping,
            // and escaping `/` would break the script's src.
            token => minijinja::Value::from_safe_string(token.clone()),
            // Relative to /p/, so the page works behind a proxy that serves the portal under a prefix.
            base => minijinja::Value::from_safe_string(token.clone()),
            beacon_url => minijinja::Value::from_safe_string(attribute_safe(&portal.app.settings.beacon_script_url)),
            notice => notice,
            notice_kind => "ok",
        },
    )
}

async fn print(State(portal): State<Portal>, Path(token): Path<String>) -> Response {
    let loaded = match portal.verify(&token) {
        Ok(claims) => portal.load(&claims).await,
        Err(err) => Err(err),
    };
    match loaded {
        Ok((plan, send)) => portal.render(
            "print.html",
            minijinja::context! { plan => minijinja::value::Serde(view(&plan, &send)) },
        ),
        Err(err) => err.html(&portal),
    }
}

#[derive(Deserialize)]
struct ApproveForm {
    consent: Option<String>,
}

async fn page_approve(
    State(portal): State<Portal>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<ApproveForm>,
) -> Response {
    let claims = match portal.verify(&token) {
        Ok(claims) => claims,
        Err(err) => return err.html(&portal),
    };
    if let Err(err) = portal.load(&claims).await {
        return err.html(&portal);
    }
    if form.consent.as_deref() != Some("yes") {
        return PortalError::new(
            StatusCode::BAD_REQUEST,
            "consent_required",
            "Tick the box to confirm you agree to the plan, then press Approve.",
        )
        .html(&portal);
    }
    let evidence = portal.evidence(&claims, &headers, peer);
    match portal.app.approve_by_patient(&claims, evidence).await {
        // 303: the browser shows the page again with GET, so a reload never re-posts.
        // Relative (from /p/<token>/approve) for the same reason as the page's links.
        Ok(_) => Redirect::to(&format!("../{token}?approved=1")).into_response(),
        Err(err) => PortalError::from(err).html(&portal),
    }
}
