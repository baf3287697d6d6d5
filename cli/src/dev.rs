//! `followup dev`: the whole system on one machine, the embedded default.
//!
//! Uses `NATS_URL` / `DATABASE_URL` when set; otherwise starts a private `nats-server -js` and a private
//! PostgreSQL cluster (`initdb` into `<dir>/postgres`) on free ports. Creates one database per service,
//! runs all five services in this process, prints every endpoint and a token, and on Ctrl-C stops the
//! services (draining their work), then the servers, leaving no process behind.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use followup_platform::auth::Role;
use followup_platform::config::LogConfig;
use followup_platform::local::{LocalNats, LocalPostgres};
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
}

/// What `followup dev` started and must stop.
struct Infra {
    nats: Option<LocalNats>,
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

        let (nats, nats_url) = match external_nats {
            Some(url) => {
                println!("NATS        {url} (from NATS_URL)");
                (None, url)
            }
            None => {
                let nats = LocalNats::start(&args.dir.join("nats"), None).await?;
                let url = nats.url();
                println!(
                    "NATS        {url} (private nats-server, pid {}, data in {})",
                    nats.pid(),
                    args.dir.join("nats").display()
                );
                (Some(nats), url)
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
        staff_public_pem: keys.staff.public_pem.clone(),
        portal_private_pem: keys.portal.private_pem.clone(),
        portal_public_pem: keys.portal.public_pem.clone(),
        ephemeral_ports: args.ephemeral_ports,
    };

    let mut running: Vec<Running> = Vec::new();
    for (service, database_url) in services::ALL.iter().zip(databases) {
        match services::start(service.name, &environment, &database_url).await {
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

async fn stop_all(running: Vec<Running>) {
    // Concurrently: each service drains on its own, the slowest sets the pace.
    futures::future::join_all(running.into_iter().map(|service| service.stop())).await;
}
