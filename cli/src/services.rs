//! The five services as the dev stack runs them: in this process, each with its own database.

use followup_platform::config::Sources;
use followup_platform::service::{Running, ServiceConfig, ServiceInfo};

/// In start order: a service that is given another's address starts after it (plans links the page to
/// engagement's beacon script; the scheduler asks notifications for previews), so every address one
/// service gives another is the one the stack really bound, ephemeral ports included.
pub const ALL: [ServiceInfo; 5] = [
    followup_engagement::INFO,
    followup_plans::INFO,
    followup_cases::INFO,
    followup_notifications::INFO,
    followup_scheduler::INFO,
];

/// What the dev stack hands every service.
pub struct DevEnvironment {
    pub nats_url: String,
    /// The private NATS server's seed files, one per service; `None` with an external NATS_URL.
    pub nats_credentials_dir: Option<std::path::PathBuf>,
    /// The address every service port binds (`--listen`).
    pub listen: std::net::IpAddr,
    /// Notifications' `unsubscribe_signing_key`, kept in the dev folder.
    pub unsubscribe_signing_key: String,
    pub staff_public_pem: String,
    /// Signs portal links (plans) and verifies them (engagement).
    pub portal_private_pem: String,
    pub portal_public_pem: String,
    /// Free ports instead of the defaults.
    pub ephemeral_ports: bool,
}

impl DevEnvironment {
    /// The environment still counts (`FOLLOWUP_<SERVICE>__*` tunes a dev service), but where the
    /// infrastructure is and which keys to trust are the dev stack's to say.
    fn sources(&self, info: &ServiceInfo, database_url: &str) -> Sources {
        let mut sources = Sources::from_environment()
            .set("database_url", database_url)
            .set("nats_url", &self.nats_url)
            .set("auth.jwt_public_keys", vec![self.staff_public_pem.clone()])
            .set("log.format", "pretty")
            .set("database_max_connections", 8)
            .set("shutdown_grace_secs", 10)
            .set("grpc_addr", self.addr(info.grpc_port))
            .set("admin_addr", self.addr(info.admin_port));
        if let Some(dir) = &self.nats_credentials_dir {
            sources = sources.set("nats_credentials_dir", dir);
        }
        sources
    }

    /// `<listen>:<port>`, or `<listen>:0` (a free port) with `--ephemeral-ports`.
    fn addr(&self, port: u16) -> String {
        let port = if self.ephemeral_ports { 0 } else { port };
        std::net::SocketAddr::new(self.listen, port).to_string()
    }
}

fn config<S>(info: &ServiceInfo, defaults: S, sources: Sources) -> anyhow::Result<ServiceConfig<S>>
where
    S: serde::Serialize + serde::de::DeserializeOwned,
{
    Ok(ServiceConfig::load(info, defaults, sources)?)
}

/// Starts one service against the dev environment.
pub async fn start(
    name: &str,
    env: &DevEnvironment,
    database_url: &str,
    started: &[Running],
) -> anyhow::Result<Running> {
    let bound = |service: &str| started.iter().find(|r| r.info.name == service);
    let info = ALL
        .into_iter()
        .find(|info| info.name == name)
        .ok_or_else(|| anyhow::anyhow!("no service named {name}"))?;
    let sources = env.sources(&info, database_url);
    let running = match name {
        "plans" => {
            let info = followup_plans::INFO;
            let mut sources = sources
                .set("portal_signing_key", &env.portal_private_pem)
                .set("portal_addr", env.addr(8081));
            // The page loads beacon.js from the engagement service of this stack, wherever it bound.
            if let Some(beacons) = bound("engagement").and_then(|r| r.http_addr("beacons")) {
                sources = sources.set(
                    "beacon_script_url",
                    format!("http://{}/v1/beacon.js", reachable(beacons)),
                );
            }
            followup_plans::Service::build(config(
                &info,
                followup_plans::Settings::default(),
                sources,
            )?)
            .await?
        }
        "cases" => {
            let info = followup_cases::INFO;
            followup_cases::Service::build(config(
                &info,
                followup_cases::Settings::default(),
                sources,
            )?)
            .await?
        }
        "engagement" => {
            let info = followup_engagement::INFO;
            // Any origin may post beacons in dev: the portal page runs on another port.
            let sources = sources
                .set("portal_public_keys", vec![env.portal_public_pem.clone()])
                .set("allowed_origins", vec!["*"])
                .set("http_addr", env.addr(8080));
            followup_engagement::Service::build(config(
                &info,
                followup_engagement::Settings::default(),
                sources,
            )?)
            .await?
        }
        "scheduler" => {
            let info = followup_scheduler::INFO;
            // Slot offers carry a claim link answered on 8083 (a free port chosen here with ephemeral
            // ports, so the links can name it); the dev keys keep links valid across restarts. Previews
            // ask this stack's notifications service.
            let claims: std::net::SocketAddr = if env.ephemeral_ports {
                let probe = std::net::TcpListener::bind((env.listen, 0))?;
                probe.local_addr()?
            } else {
                env.addr(8083).parse()?
            };
            let mut sources = sources
                .set("claim_links.http_addr", claims.to_string())
                .set(
                    "claim_links.public_base_url",
                    format!("http://{}", reachable(claims)),
                )
                .set("claim_links.signing_key", &env.portal_private_pem);
            if let Some(notifications) = bound("notifications") {
                sources = sources.set(
                    "notifications.addr",
                    format!("http://{}", reachable(notifications.grpc_addr)),
                );
            }
            followup_scheduler::Service::build(config(
                &info,
                followup_scheduler::Settings::default(),
                sources,
            )?)
            .await?
        }
        "notifications" => {
            let info = followup_notifications::INFO;
            // SMS, email and webhook calls go to a local capture (`followup notifications captured`).
            let (sources, capture) =
                followup_notifications::capture::for_dev(sources, env.ephemeral_ports).await?;
            // A key kept in the dev folder: unsubscribe links survive a restart of the stack.
            let sources = sources
                .set("http_addr", env.addr(8082))
                .set("unsubscribe_signing_key", &env.unsubscribe_signing_key);
            println!(
                "capture     SMTP {}  HTTP http://{} (SMS, email and webhooks of the dev stack)",
                capture.smtp_addr, capture.http_addr
            );
            capture.detach();
            followup_notifications::Service::build(config(
                &info,
                followup_notifications::Settings::default(),
                sources,
            )?)
            .await?
        }
        other => anyhow::bail!("no service named {other}"),
    };
    Ok(running)
}

/// An address a browser or a client on this machine can use for a bound one: a wildcard bind
/// (`--listen 0.0.0.0`) is reached through loopback.
fn reachable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}
