//! The five services as the dev stack runs them: in this process, each with its own database.

use followup_platform::config::Sources;
use followup_platform::service::{Running, ServiceConfig, ServiceInfo};

pub const ALL: [ServiceInfo; 5] = [
    followup_plans::INFO,
    followup_cases::INFO,
    followup_engagement::INFO,
    followup_scheduler::INFO,
    followup_notifications::INFO,
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
) -> anyhow::Result<Running> {
    let info = ALL
        .into_iter()
        .find(|info| info.name == name)
        .ok_or_else(|| anyhow::anyhow!("no service named {name}"))?;
    let sources = env.sources(&info, database_url);
    let running = match name {
        "plans" => {
            let info = followup_plans::INFO;
            let sources = sources
                .set("portal_signing_key", &env.portal_private_pem)
                .set("portal_addr", env.addr(8081));
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
            // Slot offers carry a claim link answered on 8083; the dev keys keep links valid across
            // restarts. Previews ask notifications on its default port (not known with ephemeral ports).
            let sources = sources
                .set("claim_links.http_addr", env.addr(8083))
                .set("claim_links.signing_key", &env.portal_private_pem);
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
