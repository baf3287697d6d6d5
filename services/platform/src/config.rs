//! Configuration, one way for every service.
//!
//! Layers, later wins: the service's defaults → an optional TOML file (`--config` or `FOLLOWUP_CONFIG`) →
//! `FOLLOWUP__<KEY>` (shared by every service, e.g. the NATS URL) → `FOLLOWUP_<SERVICE>__<KEY>` → overrides
//! given by code (the `followup dev` stack). Nested keys use `__`: `FOLLOWUP_PLANS__AUTH__JWT_AUDIENCE`.
//!
//! A service's configuration is two structs read from the same layers: [`CommonConfig`] (what the platform
//! needs) and the service's own. Keys that neither knows are refused, so a misspelt variable is an error
//! at start rather than a default silently used.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::service::ServiceInfo;

/// A configuration value that must never be printed: database URLs with passwords, keys, provider tokens.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that uses it (a connection, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"[redacted]\"")
        }
    }
}

/// What every service needs from its configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommonConfig {
    /// PostgreSQL URL of this service's own database.
    pub database_url: Secret,
    /// Upper bound of the connection pool.
    pub database_max_connections: u32,
    /// How long start-up keeps retrying an unreachable database or NATS server before it gives up.
    pub startup_timeout_secs: u64,
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// NATS credentials of this service: its nkey seed file (`<service>.nk`, from `followup nats-auth`),
    /// or a `.creds` file (user JWT and seed) on an operator-mode cluster.
    pub nats_credentials_file: Option<PathBuf>,
    /// A folder holding one `<service>.nk` per service (the dev stack and tests hand one folder to all
    /// five); used when `nats_credentials_file` is not set.
    pub nats_credentials_dir: Option<PathBuf>,
    /// PEM CA certificate(s) the NATS server's TLS certificate is checked against; setting it requires TLS.
    pub nats_tls_ca_file: Option<PathBuf>,
    /// Refuse to start without NATS credentials (production sets it: an unauthenticated connection
    /// would be refused by a secured cluster anyway, but later and less clearly).
    pub require_nats_auth: bool,
    /// Replicas of each JetStream stream this service declares (3 on a production cluster).
    pub stream_replicas: usize,
    /// gRPC listen address; port 0 picks a free port (tests).
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address: `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    pub auth: AuthConfig,
    pub grpc_web: GrpcWebConfig,
    pub log: LogConfig,
    pub outbox: OutboxConfig,
    pub consumer: ConsumerConfig,
    /// How long shutdown waits for in-flight work before it gives up on it.
    pub shutdown_grace_secs: u64,
}

/// Verification of the `Bearer` JWTs that staff and systems send on gRPC.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthConfig {
    /// PEM public keys (Ed25519, RSA or EC) accepted for staff/system tokens. Several keys allow rotation.
    pub jwt_public_keys: Vec<String>,
    /// Files holding PEM public keys, read at start (Kubernetes Secret volumes).
    pub jwt_public_key_files: Vec<PathBuf>,
    /// Required `aud` claim.
    pub jwt_audience: String,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// The longest token accepted: a token whose `exp - iat`, or `exp - now`, is beyond it is refused
    /// (default 24 h, [`crate::auth::DEFAULT_MAX_TOKEN_LIFETIME`]).
    pub max_token_lifetime_secs: u64,
}

/// gRPC-Web (browsers calling the gRPC port over HTTP/1.1) and the CORS answer it needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GrpcWebConfig {
    /// Origins (`https://staff.example.com`, scheme + host + optional port) whose pages may call the APIs
    /// from a browser; `*` allows any origin (calls still need a token). Empty: same origin only.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogConfig {
    /// `json` (default, for log collectors) or `pretty` (for a terminal).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,sqlx=warn`. `RUST_LOG` wins when set.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxConfig {
    /// Events published per relay round.
    pub batch_size: i64,
    /// Fallback polling interval; a commit that writes the outbox wakes the relay at once via NOTIFY.
    pub poll_interval_ms: u64,
    /// How long published events stay in the table (for inspection) before they are deleted.
    pub retention_hours: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsumerConfig {
    /// Messages handled per database transaction.
    pub batch_size: usize,
    /// Batches in flight per consumer (each its own transaction).
    pub concurrency: usize,
    /// How long processed event ids are remembered for dedupe; longer than any redelivery can take.
    pub inbox_retention_hours: u64,
    /// Deliveries of one event whose handler keeps failing transiently before it goes to the dead-letter
    /// subject with the last reason (redeliveries back off 1 s, 2 s, 4 s … 60 s; 30 is about 24 minutes).
    /// Deliveries that failed because the database could not be reached at all do not end in the
    /// dead-letter subject: the event is not at fault, and it applies once the database is back.
    pub max_deliveries: i64,
}

impl CommonConfig {
    /// Defaults for one service: its default ports, local NATS and PostgreSQL.
    pub fn defaults(info: &ServiceInfo) -> Self {
        Self {
            database_url: Secret::new(format!(
                "postgres://postgres@127.0.0.1:5432/followup_{}",
                info.name
            )),
            database_max_connections: 16,
            startup_timeout_secs: 60,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_credentials_file: None,
            nats_credentials_dir: None,
            nats_tls_ca_file: None,
            require_nats_auth: false,
            stream_replicas: 1,
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], info.grpc_port)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], info.admin_port)),
            auth: AuthConfig {
                jwt_public_keys: Vec::new(),
                jwt_public_key_files: Vec::new(),
                jwt_audience: "followup".into(),
                jwt_issuer: None,
                leeway_secs: 30,
                max_token_lifetime_secs: crate::auth::DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
            },
            grpc_web: GrpcWebConfig::default(),
            log: LogConfig {
                format: LogFormat::Json,
                filter: "info".into(),
            },
            outbox: OutboxConfig {
                batch_size: 500,
                poll_interval_ms: 1000,
                retention_hours: 24,
            },
            consumer: ConsumerConfig {
                batch_size: 256,
                concurrency: 2,
                inbox_retention_hours: 24 * 7,
                max_deliveries: 30,
            },
            shutdown_grace_secs: 20,
        }
    }

    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self, info: &ServiceInfo) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| Err(ConfigError::invalid(info, key, reason));
        let url = self.database_url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return bad(
                "database_url",
                "must be a postgres:// or postgresql:// URL".into(),
            );
        }
        if self.database_max_connections == 0 {
            return bad("database_max_connections", "must be at least 1".into());
        }
        if self.nats_url.trim().is_empty() {
            return bad("nats_url", "must name at least one NATS server".into());
        }
        if self.require_nats_auth
            && self.nats_credentials_file.is_none()
            && self.nats_credentials_dir.is_none()
        {
            return bad(
                "nats_credentials_file",
                format!(
                    "require_nats_auth is set but no NATS credentials are configured: point \
                     nats_credentials_file at this service's nkey seed file ({}.nk, made by \
                     `followup nats-auth init`; see deploy/README.md, NATS users and permissions)",
                    info.name
                ),
            );
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return bad(
                "stream_replicas",
                format!("must be between 1 and 5, got {}", self.stream_replicas),
            );
        }
        if self.auth.jwt_public_keys.is_empty() && self.auth.jwt_public_key_files.is_empty() {
            return bad(
                "auth.jwt_public_keys",
                "no key to verify staff tokens with: set auth.jwt_public_keys (PEM) or auth.jwt_public_key_files"
                    .into(),
            );
        }
        for origin in &self.grpc_web.allowed_origins {
            if let Err(reason) = check_origin(origin) {
                return bad("grpc_web.allowed_origins", reason);
            }
        }
        if self.auth.max_token_lifetime_secs < 60 {
            return bad(
                "auth.max_token_lifetime_secs",
                "must be at least 60 seconds".into(),
            );
        }
        if self
            .auth
            .jwt_issuer
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return bad(
                "auth.jwt_issuer",
                "is empty: unset it, or name the issuer whose `iss` tokens must carry".into(),
            );
        }
        if self.outbox.batch_size < 1 {
            return bad("outbox.batch_size", "must be at least 1".into());
        }
        if self.consumer.batch_size == 0 || self.consumer.concurrency == 0 {
            return bad(
                "consumer",
                "batch_size and concurrency must be at least 1".into(),
            );
        }
        if self.consumer.max_deliveries < 1 {
            return bad("consumer.max_deliveries", "must be at least 1".into());
        }
        Ok(())
    }
}

/// An allowed origin must be what a browser sends in `Origin`: `*`, or `http(s)://host[:port]` with
/// nothing after it (a trailing `/` or a path never matches).
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(format!(
            "`{origin}` {why}: write an origin as a browser sends it, e.g. `https://staff.example.com` or `http://localhost:3000`"
        ))
    };
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return refuse("is not a URL");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return refuse("needs an http:// or https:// scheme");
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return refuse("has no host");
    }
    if origin.ends_with('/') || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return refuse("has a path (an origin is scheme, host and port only)");
    }
    if http::HeaderValue::from_str(origin).is_err() {
        return refuse("is not a valid header value");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value could not be read (wrong type, unknown key, unreadable file). figment's message names the
    /// key and where its value came from (file or environment variable).
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration key `{key}` (env {env}): {reason}")]
    Invalid {
        key: String,
        env: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(info: &ServiceInfo, key: &str, reason: String) -> Self {
        Self::Invalid {
            key: key.to_string(),
            env: env_var_name(info, key),
            reason,
        }
    }
}

/// The environment variable that sets `key` for one service: `auth.jwt_audience` →
/// `FOLLOWUP_PLANS__AUTH__JWT_AUDIENCE`.
pub fn env_var_name(info: &ServiceInfo, key: &str) -> String {
    format!(
        "{}{}",
        env_prefix(info),
        key.replace('.', "__").to_uppercase()
    )
}

fn env_prefix(info: &ServiceInfo) -> String {
    format!("FOLLOWUP_{}__", info.name.to_uppercase())
}

/// Where the layers come from; tests and `followup dev` pass their own.
#[derive(Default)]
pub struct Sources {
    /// A TOML file; `None` reads `FOLLOWUP_CONFIG` when set.
    pub file: Option<PathBuf>,
    /// Read `FOLLOWUP__*` and `FOLLOWUP_<SERVICE>__*`.
    pub env: bool,
    /// Last layer: values set by code.
    pub overrides: Vec<(String, Value)>,
}

impl Sources {
    /// Defaults, `FOLLOWUP_CONFIG` file, environment: what a deployed service reads.
    pub fn from_environment() -> Self {
        Self {
            file: None,
            env: true,
            overrides: Vec::new(),
        }
    }

    /// Defaults and the given overrides only, whatever the environment holds (tests, the dev stack).
    pub fn overrides_only() -> Self {
        Self {
            file: None,
            env: false,
            overrides: Vec::new(),
        }
    }

    /// Sets `key` (dotted for nested keys) to a value.
    pub fn set(mut self, key: &str, value: impl Serialize) -> Self {
        match Value::serialize(value) {
            Ok(value) => self.overrides.push((key.to_string(), value)),
            // Serializing plain values into figment cannot fail; keep the key so the error surfaces on load.
            Err(err) => self.overrides.push((
                key.to_string(),
                Value::from(format!("unserializable: {err}")),
            )),
        }
        self
    }
}

/// Loads the platform's and the service's configuration from the same layers and validates them.
pub fn load<S>(
    info: &ServiceInfo,
    service_defaults: S,
    sources: Sources,
) -> Result<(CommonConfig, S), ConfigError>
where
    S: Serialize + DeserializeOwned,
{
    let common_defaults = CommonConfig::defaults(info);
    let mut figment = Figment::from(Serialized::defaults(&common_defaults))
        .merge(Serialized::defaults(&service_defaults));
    let file = sources
        .file
        .clone()
        .or_else(|| std::env::var_os("FOLLOWUP_CONFIG").map(PathBuf::from));
    if let Some(path) = &file {
        if !Path::new(path).is_file() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    if sources.env {
        figment = figment
            .merge(Env::prefixed("FOLLOWUP__").split("__"))
            .merge(Env::prefixed(&env_prefix(info)).split("__"));
    }
    for (key, value) in sources.overrides {
        figment = figment.merge(Serialized::default(&key, value));
    }

    reject_unknown_keys(
        &figment,
        &[to_dict(&common_defaults)?, to_dict(&service_defaults)?],
    )?;
    let common: CommonConfig = figment.extract().map_err(|e| describe(info, e))?;
    let service: S = figment.extract().map_err(|e| describe(info, e))?;
    common.validate(info)?;
    Ok((common, service))
}

/// figment's own message names the key as the provider spelled it; say it the way a person sets it.
fn describe(info: &ServiceInfo, err: figment::Error) -> ConfigError {
    let problems: Vec<String> = err
        .into_iter()
        .map(|e| {
            let key = e.path.join(".").to_lowercase();
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(", from {}", m.name))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!(
                    "key `{key}` (env {}): {}{source}",
                    env_var_name(info, &key),
                    e.kind
                )
            }
        })
        .collect();
    ConfigError::Load(problems.join("; "))
}

fn to_dict<T: Serialize>(value: &T) -> Result<serde_json::Value, ConfigError> {
    // JSON keeps `None` fields as null, so optional keys count as known.
    serde_json::to_value(value).map_err(|e| ConfigError::Load(e.to_string()))
}

fn reject_unknown_keys(figment: &Figment, known: &[serde_json::Value]) -> Result<(), ConfigError> {
    let mut known_keys = BTreeSet::new();
    for value in known {
        collect_keys("", value, &mut known_keys);
    }
    let data = figment
        .data()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    for dict in data.values() {
        check_dict("", dict, &known_keys, figment)?;
    }
    Ok(())
}

fn collect_keys(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
    if let serde_json::Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            collect_keys(&path, child, out);
            out.insert(path);
        }
    }
}

fn check_dict(
    prefix: &str,
    dict: &Dict,
    known: &BTreeSet<String>,
    figment: &Figment,
) -> Result<(), ConfigError> {
    for (key, value) in dict {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if !known.contains(&path) {
            let source = figment
                .find_metadata(&path)
                .and_then(|meta| meta.source.as_ref().map(|s| format!(" (from {s})")))
                .unwrap_or_default();
            return Err(ConfigError::Load(format!(
                "unknown configuration key `{path}`{source}"
            )));
        }
        // Maps with free-form keys (e.g. a table of templates) are the service's business: only descend
        // into dicts whose own keys the defaults spell out.
        if let Value::Dict(_, child) = value {
            let has_known_children = known.iter().any(|k| k.starts_with(&format!("{path}.")));
            if has_known_children {
                check_dict(&path, child, known, figment)?;
            }
        }
    }
    Ok(())
}

/// The configuration as `followup-<service> config` prints it: secrets are already `[redacted]` by
/// [`Secret`]'s Debug; every URL anywhere in it (`nats_url`, a provider's `base_url`, a list of servers)
/// also loses its password. One place, so a key added tomorrow is redacted too.
pub fn printable(common: &impl fmt::Debug, own: &impl fmt::Debug) -> String {
    redact_urls(&format!("{common:#?}\n{own:#?}"))
}

/// Replaces the userinfo password of every `scheme://user:password@host` in `text` with `[redacted]`
/// (a userinfo without `:` is a token, as in `nats://token@host`: all of it goes), and the value of
/// `password=`, `token=` and `secret=` query parameters.
pub fn redact_urls(text: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The URL ends where a Debug string, a list or a line ends.
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '\'' | '>' | ']'))
            .unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_end);
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{REDACTED}")),
                    None => out.push_str(REDACTED),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        out.push_str(&redact_query(path));
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn redact_query(path: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _))
                if ["password", "pass", "token", "secret", "sslpassword"]
                    .contains(&key.to_ascii_lowercase().as_str()) =>
            {
                format!("{key}=[redacted]")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// A service with no configuration of its own.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NoServiceConfig {}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    const INFO: ServiceInfo = ServiceInfo {
        name: "plans",
        grpc_port: 50051,
        admin_port: 9091,
    };

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct PlansOnly {
        portal_base_url: String,
        signing_key: Secret,
    }

    fn plans_defaults() -> PlansOnly {
        PlansOnly {
            portal_base_url: "http://localhost:8081".into(),
            signing_key: Secret::default(),
        }
    }

    fn with_key() -> Sources {
        Sources::overrides_only().set("auth.jwt_public_keys", vec!["PEM"])
    }

    #[test]
    fn defaults_then_overrides() {
        let (common, plans) = load(
            &INFO,
            plans_defaults(),
            with_key().set("grpc_addr", "127.0.0.1:0"),
        )
        .expect("valid configuration");
        assert_eq!(common.grpc_addr.port(), 0);
        assert_eq!(common.admin_addr.port(), 9091);
        assert_eq!(plans.portal_base_url, "http://localhost:8081");
    }

    #[test]
    fn environment_layers_shared_then_service() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FOLLOWUP__NATS_URL", "nats://shared:4222");
            jail.set_env("FOLLOWUP__DATABASE_MAX_CONNECTIONS", "4");
            jail.set_env("FOLLOWUP_PLANS__DATABASE_MAX_CONNECTIONS", "7");
            jail.set_env("FOLLOWUP_PLANS__AUTH__JWT_AUDIENCE", "clinic-api");
            jail.set_env("FOLLOWUP_PLANS__AUTH__JWT_PUBLIC_KEYS", "[PEM]");
            jail.set_env("FOLLOWUP_PLANS__PORTAL_BASE_URL", "https://portal.example");
            let (common, plans) =
                load(&INFO, plans_defaults(), Sources::from_environment()).expect("loads");
            assert_eq!(common.nats_url, "nats://shared:4222");
            assert_eq!(common.database_max_connections, 7);
            assert_eq!(common.auth.jwt_audience, "clinic-api");
            assert_eq!(plans.portal_base_url, "https://portal.example");
            Ok(())
        });
    }

    #[test]
    fn file_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "plans.toml",
                "nats_url = \"nats://from-file:4222\"\n[auth]\njwt_public_keys = [\"PEM\"]\n",
            )?;
            let sources = Sources {
                file: Some("plans.toml".into()),
                env: false,
                overrides: vec![],
            };
            let (common, _) = load(&INFO, plans_defaults(), sources).expect("loads");
            assert_eq!(common.nats_url, "nats://from-file:4222");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key_and_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FOLLOWUP_PLANS__DATABASE_MAX_CONNECTIONS", "many");
            let err =
                load(&INFO, plans_defaults(), Sources::from_environment()).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("database_max_connections"), "{text}");
            assert!(
                text.contains("FOLLOWUP_PLANS__DATABASE_MAX_CONNECTIONS"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FOLLOWUP_PLANS__DATABSE_URL", "postgres://typo");
            let err =
                load(&INFO, plans_defaults(), Sources::from_environment()).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains("databse_url"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn an_invalid_value_names_the_key() {
        let err = load(
            &INFO,
            plans_defaults(),
            with_key().set("database_url", "mysql://x"),
        )
        .expect_err("refused");
        assert!(
            err.to_string().contains("FOLLOWUP_PLANS__DATABASE_URL"),
            "{err}"
        );
        let err = load(&INFO, plans_defaults(), Sources::overrides_only()).expect_err("no keys");
        assert!(err.to_string().contains("auth.jwt_public_keys"), "{err}");
    }

    #[test]
    fn grpc_web_origins_are_browser_origins() {
        let (common, _) = load(&INFO, plans_defaults(), with_key()).expect("loads");
        assert!(
            common.grpc_web.allowed_origins.is_empty(),
            "same origin only by default"
        );
        let good = ["https://staff.example.com", "http://localhost:3000", "*"];
        let (common, _) = load(
            &INFO,
            plans_defaults(),
            with_key().set("grpc_web.allowed_origins", good),
        )
        .expect("valid origins");
        assert_eq!(common.grpc_web.allowed_origins, good);
        // The README's form for the environment.
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "FOLLOWUP__GRPC_WEB__ALLOWED_ORIGINS",
                r#"["https://staff.example.com", "http://localhost:3000"]"#,
            );
            jail.set_env("FOLLOWUP_PLANS__AUTH__JWT_PUBLIC_KEYS", "[PEM]");
            let (common, _) =
                load(&INFO, plans_defaults(), Sources::from_environment()).expect("loads");
            assert_eq!(
                common.grpc_web.allowed_origins,
                ["https://staff.example.com", "http://localhost:3000"]
            );
            Ok(())
        });
        for bad in [
            "https://staff.example.com/",
            "https://staff.example.com/app",
            "staff.example.com",
            "ftp://staff.example.com",
            "",
        ] {
            let err = load(
                &INFO,
                plans_defaults(),
                with_key().set("grpc_web.allowed_origins", [bad]),
            )
            .expect_err(bad);
            let text = err.to_string();
            assert!(
                text.contains("FOLLOWUP_PLANS__GRPC_WEB__ALLOWED_ORIGINS"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn urls_lose_their_passwords_wherever_they_are() {
        #[derive(Debug)]
        #[allow(dead_code)] // read through Debug only, as the config command does
        struct Sms {
            base_url: String,
            servers: Vec<String>,
        }
        let (common, _) = load(
            &INFO,
            plans_defaults(),
            with_key()
                .set(
                    "nats_url",
                    "nats://svc:n4ts-pass@nats-0:4222,nats://tok3n@nats-1:4222",
                )
                .set("database_url", "postgres://app:hunter2@db/plans"),
        )
        .expect("loads");
        let own = Sms {
            base_url: "https://acct:sms-pass@sms.example/v1?token=t0k&region=eu".into(),
            servers: vec!["smtp://user:mail-pass@smtp.example:587".into()],
        };
        let printed = printable(&common, &own);
        for secret in [
            "n4ts-pass",
            "tok3n",
            "hunter2",
            "sms-pass",
            "t0k",
            "mail-pass",
        ] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        // What an operator needs to see is still there.
        assert!(
            printed.contains("nats://svc:[redacted]@nats-0:4222,nats://[redacted]@nats-1:4222"),
            "{printed}"
        );
        assert!(
            printed.contains("https://acct:[redacted]@sms.example/v1?token=[redacted]&region=eu"),
            "{printed}"
        );
        assert!(
            printed.contains("smtp://user:[redacted]@smtp.example:587"),
            "{printed}"
        );
        assert_eq!(
            redact_urls("http://localhost:8082 and postgres://db/x"),
            "http://localhost:8082 and postgres://db/x"
        );
    }

    #[test]
    fn production_refuses_to_start_without_nats_credentials() {
        let err = load(
            &INFO,
            plans_defaults(),
            with_key().set("require_nats_auth", true),
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("FOLLOWUP_PLANS__NATS_CREDENTIALS_FILE"),
            "{text}"
        );
        assert!(text.contains("plans.nk"), "{text}");
        load(
            &INFO,
            plans_defaults(),
            with_key()
                .set("require_nats_auth", true)
                .set("nats_credentials_file", "nats/plans.nk"),
        )
        .expect("credentials given");
    }

    #[test]
    fn secrets_are_never_printed() {
        let (common, plans) = load(
            &INFO,
            plans_defaults(),
            with_key()
                .set("database_url", "postgres://app:hunter2@db/plans")
                .set("signing_key", "-----BEGIN PRIVATE KEY-----abc"),
        )
        .expect("loads");
        let printed = format!("{common:?} {plans:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("BEGIN PRIVATE KEY"), "{printed}");
        assert_eq!(
            common.database_url.expose(),
            "postgres://app:hunter2@db/plans"
        );
    }
}
