//! The patient portal (port 8081): the plan as the patient sees it, and the patient's approval.
//!
//! - `GET  /v1/portal/plans/{plan_id}` with `Authorization: Bearer <portal token>`: the plan as JSON;
//! - `POST /v1/portal/plans/{plan_id}/approve` (same token), body `{"consent": true, "plan_version": N}`:
//!   the patient approves the version their link was sent for; time, IP and user agent are kept as
//!   consent evidence;
//! - `GET  /p/{token}`: the reference patient page (server-rendered, sections marked
//!   `data-followup-section`, the engagement beacon script, an Approve form);
//! - `POST /p/{token}/approve`: the page's Approve form (`consent=yes`, `plan_version=N`);
//!   `GET /p/{token}/print`: a print view.
//!
//! A link is bound to the version it was sent for: once a newer version was sent, an older link shows
//! "a newer plan was sent" (410) and approves nothing; the version is checked again under the plan's
//! row lock when approving. Approvals from another site's page (`Sec-Fetch-Site: cross-site`, or an
//! `Origin` that is not the portal's own or one of `portal_allowed_origins`) are refused (403), so a page
//! elsewhere cannot make a patient's browser approve with the patient's IP as consent evidence. Every
//! response carries a Content-Security-Policy (scripts only from the beacon script's origin, no framing),
//! `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer` (the
//! token is in the URL).
//!
//! A token that is missing, tampered, expired or not issued by this service is 401; a plan that is not
//! the token's, no longer exists or is being revised (a DRAFT) is 404. Errors are JSON
//! `{"error": {"code", "message"}}` on the API and a short HTML page on `/p/`. Drafts, internal notes,
//! staff ids and other patients' data never leave here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
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
    /// Origins (`scheme://host[:port]`) besides the portal's own that may post approvals.
    allowed_origins: Arc<Vec<String>>,
}

/// The templates, each with its inline `<style>` (hashed into the CSP, so no `'unsafe-inline'`).
const TEMPLATES: [(&str, &str); 3] = [
    ("page.html", include_str!("../../templates/page.html")),
    ("print.html", include_str!("../../templates/print.html")),
    ("error.html", include_str!("../../templates/error.html")),
];

/// The portal's routes. Its verifier is built from the signing key's public half (plus any previous
/// public keys configured for a rotation).
pub fn router(app: App) -> Result<Router, String> {
    let mut pems = vec![public_pem(app.settings.portal_signing_key.expose())?];
    pems.extend(app.settings.portal_previous_public_keys.iter().cloned());
    let verifier = PortalVerifier::from_pems(&pems).map_err(|e| e.to_string())?;
    let mut templates = minijinja::Environment::new();
    for (name, source) in TEMPLATES {
        templates
            .add_template(name, source)
            .map_err(|e| format!("template {name}: {e}"))?;
    }
    let beacon_origin = if app.settings.beacon_script_url.trim().is_empty() {
        None
    } else {
        Some(origin_of(&app.settings.beacon_script_url).ok_or_else(|| {
            format!(
                "beacon_script_url `{}` is not an absolute http(s) URL",
                app.settings.beacon_script_url
            )
        })?)
    };
    let mut allowed_origins = Vec::new();
    for configured in &app.settings.portal_allowed_origins {
        allowed_origins.push(origin_of(configured).ok_or_else(|| {
            format!("portal_allowed_origins: `{configured}` is not an http(s) origin")
        })?);
    }
    let headers = Arc::new(SecurityHeaders::new(beacon_origin.as_deref())?);
    let state = Portal {
        app,
        verifier,
        templates: Arc::new(templates),
        allowed_origins: Arc::new(allowed_origins),
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
        .fallback(|| async {
            PortalError::new(StatusCode::NOT_FOUND, "not_found", "There is nothing here.")
        })
        .with_state(state)
        // Last, so it wraps every route, the fallback and every error page.
        .layer(axum::middleware::map_response_with_state(
            headers,
            security_headers,
        )))
}

/// `scheme://host[:port]` of an absolute http(s) URL, lower-cased as browsers send `Origin`.
fn origin_of(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Userinfo is never part of an origin.
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// The headers every portal response carries, built once.
struct SecurityHeaders {
    csp: HeaderValue,
}

impl SecurityHeaders {
    fn new(beacon_origin: Option<&str>) -> Result<Self, String> {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut styles = Vec::new();
        for (name, source) in TEMPLATES {
            let Some((_, after)) = source.split_once("<style>") else {
                continue;
            };
            let Some((css, _)) = after.split_once("</style>") else {
                return Err(format!("template {name}: <style> without </style>"));
            };
            let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(css));
            styles.push(format!("'sha256-{hash}'"));
        }
        // The beacon script comes from engagement's origin and posts its beacons there (sendBeacon is
        // governed by connect-src). Plan images are clinic-supplied http(s) URLs. Nothing else loads.
        let beacon = beacon_origin.unwrap_or("'none'");
        let csp = format!(
            "default-src 'none'; script-src {beacon}; connect-src {beacon}; style-src {}; img-src 'self' https: http: data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            styles.join(" ")
        );
        Ok(Self {
            csp: HeaderValue::from_str(&csp)
                .map_err(|e| format!("Content-Security-Policy: {e}"))?,
        })
    }
}

async fn security_headers(
    State(headers): State<Arc<SecurityHeaders>>,
    mut response: Response,
) -> Response {
    let set = response.headers_mut();
    set.insert(header::CONTENT_SECURITY_POLICY, headers.csp.clone());
    set.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    set.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The token is in the page's URL: never hand it to an image host or a linked site.
    set.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
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
    /// The request field the error is about, when there is one.
    field: Option<&'static str>,
}

impl PortalError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn bad_field(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    /// The link is for a version of the plan that a newer send replaced.
    fn superseded() -> Self {
        Self::new(
            StatusCode::GONE,
            "newer_plan_sent",
            "The clinic has sent you a newer version of this treatment plan, so this link no longer \
             shows or approves it. Open the newest link the clinic sent you, or contact the clinic to \
             get it again.",
        )
    }

    fn cross_site() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "Approvals are only accepted from the plan's own page. Open your link and approve there.",
        )
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
            StatusCode::GONE => "A newer plan was sent to you",
            StatusCode::FORBIDDEN => "This approval was refused",
            StatusCode::BAD_REQUEST => "Please check the form",
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
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = field.into();
        }
        let body = serde_json::json!({ "error": error });
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
            PlansError::Precondition { kind, .. } if kind == crate::app::plans::SUPERSEDED => {
                Self::superseded()
            }
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
        // The signed claim and the recorded send agree for every link this service issued.
        if claims.plan_version != send.version {
            return Err(PortalError::from(AuthError::Invalid(
                "plan_version does not match the send".into(),
            )));
        }
        // A link shows only the version it was sent for, never a later one at another price.
        if plan.version != send.version {
            return Err(PortalError::superseded());
        }
        Ok((plan, send))
    }

    /// Refuses a state-changing request that another site's page made the patient's browser send.
    /// Browsers send `Sec-Fetch-Site` and `Origin` on every POST; a client that sends neither (curl, a
    /// server) is not a browser being misused and is judged by its token alone.
    fn same_site(&self, headers: &HeaderMap) -> Result<(), PortalError> {
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("null").trim().to_ascii_lowercase());
        let allowed = |origin: &str| {
            origin_of(&self.app.portal_base()).as_deref() == Some(origin)
                || self.allowed_origins.iter().any(|o| o == origin)
                // Unconfigured (the dev stack): the portal is wherever the browser reached it.
                || (self.app.settings.portal_base_url.trim().is_empty()
                    && headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .is_some_and(|host| {
                            origin
                                .split_once("://")
                                .is_some_and(|(_, o)| o.eq_ignore_ascii_case(host))
                        }))
        };
        if let Some(origin) = &origin
            && !allowed(origin)
        {
            tracing::info!("portal approval refused: foreign Origin");
            return Err(PortalError::cross_site());
        }
        let fetch_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // Cross-site is fine only from a page of an origin the clinic listed.
        if fetch_site.eq_ignore_ascii_case("cross-site")
            && !origin
                .as_deref()
                .is_some_and(|o| self.allowed_origins.iter().any(|a| a == o))
        {
            tracing::info!("portal approval refused: Sec-Fetch-Site cross-site");
            return Err(PortalError::cross_site());
        }
        Ok(())
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

/// What the patient says when approving: that they agree, and to which version (the one they saw).
struct Consent {
    plan_version: i32,
}

/// The JSON approval body: `{"consent": true, "plan_version": N}`, both required.
fn json_consent(body: &[u8]) -> Result<Consent, PortalError> {
    const SHAPE: &str =
        r#"send {"consent": true, "plan_version": <the version shown to the patient>}"#;
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        PortalError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body is not JSON ({e}): {SHAPE}"),
        )
    })?;
    match value.get("consent") {
        None | Some(serde_json::Value::Null) => {
            return Err(PortalError::bad_field(
                "missing_field",
                "consent",
                format!("`consent` is missing: {SHAPE}"),
            ));
        }
        Some(serde_json::Value::Bool(true)) => {}
        Some(_) => {
            return Err(PortalError::bad_field(
                "consent_required",
                "consent",
                "`consent` must be true: the patient confirms they agree to the plan and its cost",
            ));
        }
    }
    let plan_version = match value.get("plan_version") {
        None | Some(serde_json::Value::Null) => {
            return Err(PortalError::bad_field(
                "missing_field",
                "plan_version",
                format!("`plan_version` is missing: {SHAPE}"),
            ));
        }
        Some(v) => v
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                PortalError::bad_field(
                    "invalid_field",
                    "plan_version",
                    "`plan_version` must be the positive version number the plan was shown with",
                )
            })?,
    };
    Ok(Consent { plan_version })
}

/// The consent must name the version this link was sent for.
fn check_version(consent: &Consent, send: &Send) -> Result<(), PortalError> {
    if consent.plan_version != send.version {
        return Err(PortalError {
            field: Some("plan_version"),
            ..PortalError::new(
                StatusCode::CONFLICT,
                "version_mismatch",
                format!(
                    "This link is for version {} of the plan, not version {}.",
                    send.version, consent.plan_version
                ),
            )
        });
    }
    Ok(())
}

async fn api_approve(
    State(portal): State<Portal>,
    Path(plan_id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PortalError> {
    portal.same_site(&headers)?;
    let claims = portal.verify(bearer(&headers)?)?;
    if claims.plan_id != plan_id {
        return Err(PortalError::not_found());
    }
    // The link first: a link that is not valid answers 401 whatever its body.
    let (_, send) = portal.load(&claims).await?;
    let consent = json_consent(&body)?;
    check_version(&consent, &send)?;
    let evidence = portal.evidence(&claims, &headers, peer);
    let (plan, changed) = portal
        .app
        .approve_by_patient(&claims, send.version, evidence)
        .await?;
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
    plan_version: Option<String>,
}

async fn page_approve(
    State(portal): State<Portal>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<ApproveForm>, FormRejection>,
) -> Response {
    if let Err(err) = portal.same_site(&headers) {
        return err.html(&portal);
    }
    let claims = match portal.verify(&token) {
        Ok(claims) => claims,
        Err(err) => return err.html(&portal),
    };
    let send = match portal.load(&claims).await {
        Ok((_, send)) => send,
        Err(err) => return err.html(&portal),
    };
    let form = match form {
        Ok(Form(form)) => form,
        Err(_) => ApproveForm {
            consent: None,
            plan_version: None,
        },
    };
    if form.consent.as_deref() != Some("yes") {
        return PortalError::bad_field(
            "consent_required",
            "consent",
            "Tick the box to confirm you agree to the plan, then press Approve.",
        )
        .html(&portal);
    }
    let Some(plan_version) = form
        .plan_version
        .as_deref()
        .and_then(|v| v.trim().parse::<i32>().ok())
    else {
        return PortalError::bad_field(
            "missing_field",
            "plan_version",
            "The form was incomplete. Open your link again and press Approve on the page.",
        )
        .html(&portal);
    };
    if let Err(err) = check_version(&Consent { plan_version }, &send) {
        return err.html(&portal);
    }
    let evidence = portal.evidence(&claims, &headers, peer);
    match portal
        .app
        .approve_by_patient(&claims, send.version, evidence)
        .await
    {
        // 303: the browser shows the page again with GET, so a reload never re-posts.
        // Relative (from /p/<token>/approve) for the same reason as the page's links.
        Ok(_) => Redirect::to(&format!("../{token}?approved=1")).into_response(),
        Err(err) => PortalError::from(err).html(&portal),
    }
}
