//! `followup dev`: the whole system on one machine, the embedded default.
//!
//! Uses `NATS_URL` / `DATABASE_URL` when set; otherwise starts a private `nats-server -js` and a private
//! PostgreSQL cluster (`initdb` into `<dir>/postgres`) on free ports. Creates one database per service,
//! runs all five services in this process, prints every endpoint and a token, and on Ctrl-C stops the
//! services (draining their work), then the servers, leaving no process behind.
//!
//! The private NATS server runs with production's users and permissions (`<dir>/nats-auth`, each service
//! connects as itself), every service port binds 127.0.0.1 unless `--listen` says otherwise, and the
//! keys (staff tokens, portal links, unsubscribe links) are made once under `<dir>/keys` and kept.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use followup_platform::auth::Role;
use followup_platform::config::LogConfig;
use followup_platform::local::{LocalNats, LocalPostgres};
use followup_platform::nats_auth::AuthDir;
use followup_platform::service::Running;
use futures::future::OptionFuture;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::keys::{DEV_TENANT, DevKeys};
use crate::services::{self, DevEnvironment};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the private servers keep their data and the dev keys live.
    #[arg(long, default_value = ".followup")]
    pub dir: PathBuf,
    /// Bind every service on a free port instead of the default ports (to run beside another stack).
    #[arg(long)]
    pub ephemeral_ports: bool,
    /// Start only NATS and PostgreSQL, print their URLs, and wait (the test script uses this).
    #[arg(long)]
    pub infra_only: bool,
    /// The address every service port binds (gRPC, admin, portal, beacons, callbacks, claim links):
    /// loopback unless told otherwise, e.g. `--listen 0.0.0.0` to open the portal to a phone on the LAN.
    /// NATS, PostgreSQL and the capture stay on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: std::net::IpAddr,
}

/// What `followup dev` started and must stop.
struct Infra {
    nats: Option<LocalNats>,
    /// The private server's users (`<dir>/nats-auth`): each service connects as itself.
    nats_auth: Option<AuthDir>,
    postgres: Option<LocalPostgres>,
    nats_url: String,
    /// An admin URL on the `postgres` database; service databases are siblings.
    admin_url: String,
}

impl Infra {
    async fn start(args: &DevArgs) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
        let external_nats = std::env::var("NATS_URL").ok().filter(|v| !v.is_empty());
        let external_db = std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty());

        let (nats, nats_auth, nats_url) = match external_nats {
            Some(url) => {
                println!("NATS        {url} (from NATS_URL)");
                (None, None, url)
            }
            None => {
                // The users and permissions of production; seeds made once, kept across restarts.
                let auth_dir = std::path::absolute(args.dir.join("nats-auth"))
                    .context("resolving the dev folder")?;
                let auth = AuthDir::create(&auth_dir)?;
                let nats = LocalNats::start_with_config(
                    &args.dir.join("nats"),
                    None,
                    &auth.server_config_file(),
                )
                .await?;
                let url = nats.url();
                println!(
                    "NATS        {url} (private nats-server, pid {}, data in {})",
                    nats.pid(),
                    args.dir.join("nats").display()
                );
                println!(
                    "NATS users  {} (one per service; admin.nk for tools; a clinic's: \
                     followup nats-auth clinic --tenant <t>, then kill -HUP {})",
                    auth_dir.display(),
                    nats.pid()
                );
                (Some(nats), Some(auth), url)
            }
        };
        let (postgres, admin_url) = match external_db {
            Some(url) => {
                println!("PostgreSQL  {} (from DATABASE_URL)", redact(&url));
                (None, url)
            }
            None => {
                let postgres = LocalPostgres::start(&args.dir.join("postgres"), None).await?;
                let url = postgres.url("postgres");
                println!(
                    "PostgreSQL  {url} (private cluster, pid {}, data in {})",
                    postgres.pid(),
                    args.dir.join("postgres").display()
                );
                (Some(postgres), url)
            }
        };
        Ok(Self {
            nats,
            nats_auth,
            postgres,
            nats_url,
            admin_url,
        })
    }

    /// The URL of a database on the same server, created when missing.
    async fn database(&self, name: &str) -> anyhow::Result<String> {
        followup_platform::db::create_database_if_missing(&self.admin_url, name).await?;
        let options: PgConnectOptions = self.admin_url.parse()?;
        Ok(options.database(name).to_url_lossy().to_string())
    }

    async fn stop(self) {
        // Services are stopped by now; the servers they used go last.
        if let Some(Err(err)) = OptionFuture::from(self.nats.map(|n| n.stop())).await {
            eprintln!("stopping nats-server: {err}");
        }
        if let Some(Err(err)) = OptionFuture::from(self.postgres.map(|p| p.stop())).await {
            eprintln!("stopping PostgreSQL: {err}");
        }
    }
}

fn redact(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(options) => {
            let mut shown = options.to_url_lossy();
            if shown.password().is_some() {
                let _ = shown.set_password(Some("***"));
            }
            shown.to_string()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let log = LogConfig {
        format: followup_platform::config::LogFormat::Pretty,
        filter: "info,sqlx=warn,async_nats=warn".into(),
    };
    let telemetry = followup_platform::telemetry::init("followup-dev", &log);

    let infra = Infra::start(&args).await?;
    if args.infra_only {
        println!("NATS_URL={}", infra.nats_url);
        if let Some(auth) = &infra.nats_auth {
            println!("NATS_CREDENTIALS_DIR={}", auth.dir.display());
        }
        println!("DATABASE_URL={}", infra.admin_url);
        println!("ready: press Ctrl-C to stop");
        followup_platform::shutdown::wait_for_signal().await;
        infra.stop().await;
        return Ok(());
    }

    let outcome = run_services(&args, &infra).await;
    infra.stop().await;
    telemetry.flush();
    println!("stopped");
    outcome
}

async fn run_services(args: &DevArgs, infra: &Infra) -> anyhow::Result<()> {
    let keys = DevKeys::load_or_create(&args.dir)?;
    let mut databases = Vec::new();
    for service in services::ALL {
        databases.push(
            infra
                .database(&format!("followup_{}", service.name))
                .await?,
        );
    }
    let environment = DevEnvironment {
        nats_url: infra.nats_url.clone(),
        nats_credentials_dir: infra.nats_auth.as_ref().map(|auth| auth.dir.clone()),
        listen: args.listen,
        unsubscribe_signing_key: unsubscribe_signing_key(&args.dir)?,
        staff_public_pem: keys.staff.public_pem.clone(),
        portal_private_pem: keys.portal.private_pem.clone(),
        portal_public_pem: keys.portal.public_pem.clone(),
        ephemeral_ports: args.ephemeral_ports,
    };

    let mut running: Vec<Running> = Vec::new();
    for (service, database_url) in services::ALL.iter().zip(databases) {
        match services::start(service.name, &environment, &database_url, &running).await {
            Ok(started) => running.push(started),
            Err(err) => {
                stop_all(running).await;
                return Err(err.context(format!("starting {}", service.name)));
            }
        }
    }

    println!();
    println!("{:<14} {:<22} {:<22} HTTP", "service", "gRPC", "admin");
    for service in &running {
        let http: Vec<String> = service
            .http_addrs
            .iter()
            .map(|(name, addr)| format!("{name} {addr}"))
            .collect();
        println!(
            "{:<14} {:<22} {:<22} {}",
            service.info.name,
            service.grpc_addr,
            service.admin_addr,
            http.join(", ")
        );
    }
    let token = keys.token(
        DEV_TENANT,
        "dev-owner",
        Role::Owner,
        Duration::from_secs(24 * 3600),
    )?;
    println!();
    println!(
        "A token for clinic `{DEV_TENANT}` (role owner, 24 h; `followup token --help` for others):"
    );
    println!("{token}");
    println!();
    println!(
        "Try: grpcurl -plaintext {} list",
        running
            .first()
            .map(|r| r.grpc_addr.to_string())
            .unwrap_or_default()
    );
    println!("ready: press Ctrl-C to stop");

    let signal = followup_platform::shutdown::wait_for_signal().await;
    println!("{signal}: stopping the services");
    stop_all(running).await;
    Ok(())
}

/// The key notifications signs unsubscribe links with, made once into `<dir>/keys/unsubscribe.key` like
/// the dev keys, so the links of yesterday's messages still work after a restart.
fn unsubscribe_signing_key(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("keys").join("unsubscribe.key");
    if let Ok(key) = std::fs::read_to_string(&path)
        && !key.trim().is_empty()
    {
        return Ok(key.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir.join("keys"))
        .with_context(|| format!("creating {}", dir.join("keys").display()))?;
    write_private(&path, &key)?;
    Ok(key)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

async fn stop_all(running: Vec<Running>) {
    // Concurrently: each service drains on its own, the slowest sets the pace.
    futures::future::join_all(running.into_iter().map(|service| service.stop())).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unsubscribe_key_is_made_once_and_kept() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = super::unsubscribe_signing_key(dir.path())?;
        assert_eq!(first.len(), 64);
        assert_eq!(super::unsubscribe_signing_key(dir.path())?, first);
        Ok(())
    }
}
