//! The whole system as real processes: the five service binaries as children of this process, a
//! private `nats-server` and a private PostgreSQL cluster, and a local SMS provider ([`sink::Sink`]).
//!
//! This is what the fault and load runs (`src/bin/faults.rs`, `src/bin/load.rs`) and the fault smoke
//! test drive: a service can be killed with SIGKILL and started again on the same ports, NATS and
//! PostgreSQL can be stopped and started again on the same data, and every service's output is kept,
//! one file per start, so a run can be searched for personal data afterwards.
//!
//! The service binaries are found in `FOLLOWUP_BIN_DIR`, else beside the running executable (or its
//! parent when that is a test's `deps/` folder). [`build_binaries`] builds them with cargo.
//!
//! Each service gets a TOML configuration file (its `--config`), written once: the same ports on every
//! start, so clients reconnect to a restarted service where it was. Nothing of the caller's `FOLLOWUP_*`
//! environment reaches the children.

pub mod clients;
pub mod sink;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use followup_platform::auth::{KeyPair, PORTAL_AUDIENCE, PortalClaims, Role, Signer};
use followup_platform::local::{LocalNats, LocalPostgres};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub use clients::{Api, Beacons, Publisher, daytime_zone, page_view, retry, subject_matches};
pub use sink::{Received, Sink, SinkView};

/// One of the five services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Svc {
    Plans,
    Cases,
    Engagement,
    Scheduler,
    Notifications,
}

impl Svc {
    pub const ALL: [Svc; 5] = [
        Svc::Plans,
        Svc::Cases,
        Svc::Engagement,
        Svc::Scheduler,
        Svc::Notifications,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Svc::Plans => "plans",
            Svc::Cases => "cases",
            Svc::Engagement => "engagement",
            Svc::Scheduler => "scheduler",
            Svc::Notifications => "notifications",
        }
    }

    /// The binary's file name: `followup-plans`, ….
    pub fn binary(self) -> String {
        format!("followup-{}", self.name())
    }

    /// The service's own database on the private cluster.
    pub fn database(self) -> String {
        format!("followup_{}", self.name())
    }

    /// The configuration key of the service's extra HTTP server, if it has one.
    fn http_key(self) -> Option<&'static str> {
        match self {
            Svc::Plans => Some("portal_addr"),
            Svc::Engagement | Svc::Notifications => Some("http_addr"),
            Svc::Cases | Svc::Scheduler => None,
        }
    }
}

impl std::fmt::Display for Svc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The folder holding the five service binaries: `FOLLOWUP_BIN_DIR`, else the folder of this
/// executable, else its parent (a test binary lives in `target/<profile>/deps/`).
pub fn locate_binaries() -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("FOLLOWUP_BIN_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let exe = std::env::current_exe().context("finding this executable")?;
            let mut dirs = Vec::new();
            if let Some(dir) = exe.parent() {
                dirs.push(dir.to_path_buf());
                if let Some(parent) = dir.parent() {
                    dirs.push(parent.to_path_buf());
                }
            }
            dirs
        }
    };
    for dir in &candidates {
        if Svc::ALL.iter().all(|svc| dir.join(svc.binary()).is_file()) {
            return Ok(dir.clone());
        }
    }
    bail!(
        "the service binaries (followup-plans, followup-cases, followup-engagement, followup-scheduler, \
         followup-notifications) are not in {}: build them first with \
         `cargo build -p followup-plans -p followup-cases -p followup-engagement -p followup-scheduler \
         -p followup-notifications --bins` (add --release for release binaries), or point FOLLOWUP_BIN_DIR \
         at them",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// Builds the five service binaries with cargo (`$CARGO`, else `cargo` on PATH) in the given profile,
/// and returns their folder. For the long runs, started with `cargo run`, so that they never drive stale
/// binaries.
pub fn build_binaries(release: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.arg("build");
    if release {
        command.arg("--release");
    }
    for svc in Svc::ALL {
        command
            .arg("-p")
            .arg(format!("followup-{}", svc.name()))
            .arg("--bin")
            .arg(svc.binary());
    }
    eprintln!("building the service binaries: {command:?}");
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the service binaries failed ({status})");
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("this executable has no folder")?;
    Ok(dir)
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the service binaries are ([`locate_binaries`]).
    pub bin_dir: PathBuf,
    /// Where data and logs go; `None`: a temporary folder removed when the [`System`] is dropped.
    pub dir: Option<PathBuf>,
    /// The services' log filter (`log.filter`), e.g. `info`; logs are JSON.
    pub log_filter: String,
    /// Extra configuration per service, merged over the harness's (nested objects merge).
    pub config: BTreeMap<Svc, Value>,
}

impl Options {
    pub fn new(bin_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            dir: None,
            log_filter: "info".into(),
            config: BTreeMap::new(),
        }
    }
}

/// The ports a service listens on, the same on every start.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub grpc: u16,
    pub admin: u16,
    pub http: Option<u16>,
}

struct Proc {
    ports: Ports,
    config: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// The whole system, running.
pub struct System {
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    bin_dir: PathBuf,
    nats: Option<LocalNats>,
    nats_port: u16,
    postgres: Option<LocalPostgres>,
    pg_port: u16,
    infra_restarts: u32,
    pub staff_keys: KeyPair,
    pub portal_keys: KeyPair,
    staff_signer: Signer,
    portal_signer: Signer,
    pub sink: Sink,
    procs: BTreeMap<Svc, Proc>,
    /// One lazily connecting channel per service, shared by every client (one HTTP/2 connection).
    channels: BTreeMap<Svc, tonic::transport::Channel>,
}

/// How long a service may take from spawn to ready (migrations on a fresh database included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl System {
    /// Starts NATS, PostgreSQL and the SMS sink, creates the five databases, writes the keys and
    /// configuration files, and starts every service, returning once each answers ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let (temp, dir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, std::path::absolute(dir)?)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("followup-system-")
                    .tempdir()
                    .context("a temporary folder for the system")?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        for sub in ["logs", "keys", "config"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let (nats_dir, postgres_dir) = (dir.join("nats"), dir.join("postgres"));
        let (nats, postgres) = tokio::join!(
            LocalNats::start(&nats_dir, None),
            LocalPostgres::start(&postgres_dir, None)
        );
        let nats = nats.context("starting nats-server")?;
        let postgres = postgres.context("starting PostgreSQL")?;
        for svc in Svc::ALL {
            postgres
                .create_database(&svc.database())
                .await
                .with_context(|| format!("creating {}", svc.database()))?;
        }
        let sink = Sink::start().await.context("starting the SMS sink")?;

        let staff_keys = KeyPair::generate()?;
        let portal_keys = KeyPair::generate()?;
        std::fs::write(dir.join("keys/staff.pub.pem"), &staff_keys.public_pem)?;
        std::fs::write(dir.join("keys/portal.pub.pem"), &portal_keys.public_pem)?;
        let staff_signer = Signer::from_pem(&staff_keys.private_pem)?;
        let portal_signer = Signer::from_pem(&portal_keys.private_pem)?;

        let mut system = Self {
            _temp: temp,
            nats_port: nats.port(),
            pg_port: postgres.port(),
            nats: Some(nats),
            postgres: Some(postgres),
            infra_restarts: 0,
            dir,
            bin_dir: options.bin_dir.clone(),
            staff_keys,
            portal_keys,
            staff_signer,
            portal_signer,
            sink,
            procs: BTreeMap::new(),
            channels: BTreeMap::new(),
        };
        for svc in Svc::ALL {
            let ports = Ports {
                grpc: free_port()?,
                admin: free_port()?,
                http: match svc.http_key() {
                    Some(_) => Some(free_port()?),
                    None => None,
                },
            };
            let channel = tonic::transport::Endpoint::from_shared(format!(
                "http://127.0.0.1:{}",
                ports.grpc
            ))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .connect_lazy();
            system.channels.insert(svc, channel);
            system.procs.insert(
                svc,
                Proc {
                    ports,
                    config: PathBuf::new(),
                    child: None,
                    starts: 0,
                },
            );
        }
        // Every port is chosen before any configuration is written: a service's file names others'.
        for svc in Svc::ALL {
            let ports = system.ports(svc);
            let config = system.write_config(svc, ports, &options)?;
            system.proc_mut(svc)?.config = config;
        }
        // One at a time: five migrations and stream declarations at once only queue on two cores.
        for svc in Svc::ALL {
            system.spawn(svc)?;
            system.wait_ready(svc, READY_TIMEOUT).await?;
        }
        Ok(system)
    }

    /// The folder of data, configuration and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// A URL of `database` on the private cluster, as the `postgres` superuser.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.pg_port)
    }

    /// A small pool on a service's database, for checking what it stored.
    pub async fn db(&self, svc: Svc) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.database_url(&svc.database()))
            .await?)
    }

    pub fn ports(&self, svc: Svc) -> Ports {
        self.procs[&svc].ports
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn grpc_url(&self, svc: Svc) -> String {
        format!("http://127.0.0.1:{}", self.ports(svc).grpc)
    }

    /// The service's gRPC channel: it connects lazily, reconnects by itself after a restart, and is
    /// shared by every clone (calls are multiplexed on one HTTP/2 connection).
    pub fn channel(&self, svc: Svc) -> anyhow::Result<tonic::transport::Channel> {
        self.channels
            .get(&svc)
            .cloned()
            .with_context(|| format!("no channel to {svc}"))
    }

    pub fn admin_addr(&self, svc: Svc) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports(svc).admin))
    }

    /// The extra HTTP server: plans' portal, engagement's beacons, notifications' callbacks.
    pub fn http_addr(&self, svc: Svc) -> Option<SocketAddr> {
        self.ports(svc)
            .http
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A staff token of `tenant` with `role`, valid for a day.
    pub fn token(&self, tenant: &str, role: Role) -> anyhow::Result<String> {
        Ok(self.staff_signer.staff_token(
            tenant,
            &format!("staff-{role}"),
            role,
            "followup",
            Duration::from_secs(24 * 3600),
        )?)
    }

    /// A portal link token as plans would sign it (for beacons of plans the load run invents).
    pub fn portal_token(
        &self,
        tenant: &str,
        plan_id: &str,
        patient_id: &str,
    ) -> anyhow::Result<String> {
        let now = jsonwebtoken_now();
        Ok(self.portal_signer.sign(&PortalClaims {
            tenant: tenant.into(),
            plan_id: plan_id.into(),
            plan_version: 1,
            patient_id: patient_id.into(),
            jti: uuid::Uuid::now_v7().to_string(),
            aud: PORTAL_AUDIENCE.into(),
            iat: now,
            exp: now + 24 * 3600,
        })?)
    }

    /// The process id of a running service.
    pub fn pid(&self, svc: Svc) -> Option<u32> {
        self.procs[&svc].child.as_ref().and_then(Child::id)
    }

    /// Resident memory of a running service, in KiB (`VmRSS`).
    pub fn rss_kib(&self, svc: Svc) -> Option<u64> {
        rss_kib(self.pid(svc)?)
    }

    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.as_ref().map(LocalNats::pid)
    }

    pub fn postgres_pid(&self) -> Option<u32> {
        self.postgres.as_ref().map(LocalPostgres::pid)
    }

    /// How many times a service has been started.
    pub fn starts(&self, svc: Svc) -> u32 {
        self.procs[&svc].starts
    }

    /// Kills a service with SIGKILL (no goodbye: no drain, no flush) and reaps it.
    pub async fn kill9(&mut self, svc: Svc) -> anyhow::Result<()> {
        let proc = self.proc_mut(svc)?;
        if let Some(mut child) = proc.child.take() {
            child.start_kill().context("sending SIGKILL")?;
            child.wait().await.context("reaping the killed service")?;
        }
        Ok(())
    }

    /// Starts a stopped (or killed) service again on its ports and waits until it is ready; returns the
    /// time from spawn to ready.
    pub async fn restart(&mut self, svc: Svc) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.spawn(svc)?;
        self.wait_ready(svc, READY_TIMEOUT).await?;
        Ok(started.elapsed())
    }

    /// Asks a service's admin server for `/readyz`: `Some(true)` on 200, `Some(false)` on another
    /// answer (503 during an outage), `None` when nothing answers within a second.
    pub async fn readyz(&self, svc: Svc) -> Option<bool> {
        http_status(self.admin_addr(svc), "/readyz", Duration::from_secs(1))
            .await
            .map(|status| status == 200)
    }

    /// Waits until `svc` answers ready, failing early (with the end of its log) if it exits.
    pub async fn wait_ready(&mut self, svc: Svc, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.readyz(svc).await == Some(true) {
                return Ok(started.elapsed());
            }
            let log = self.current_log(svc);
            let proc = self.proc_mut(svc)?;
            if let Some(child) = proc.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                proc.child = None;
                bail!(
                    "{svc} exited ({status}) before it was ready; the end of {}:\n{}",
                    log.display(),
                    tail(&log, 30)
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "{svc} was not ready after {timeout:?}; the end of {}:\n{}",
                    log.display(),
                    tail(&log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops nats-server gracefully (its JetStream store stays). Services keep running and reconnect
    /// once [`System::start_nats`] brings it back on the same port.
    pub async fn stop_nats(&mut self) -> anyhow::Result<()> {
        if let Some(nats) = self.nats.take() {
            let log = nats.log_path().to_path_buf();
            nats.stop().await?;
            self.infra_restarts += 1;
            keep_copy(
                &log,
                &self.dir.join("logs"),
                "nats-server",
                self.infra_restarts,
            )?;
        }
        Ok(())
    }

    pub async fn start_nats(&mut self) -> anyhow::Result<()> {
        if self.nats.is_none() {
            self.nats = Some(LocalNats::start(&self.dir.join("nats"), Some(self.nats_port)).await?);
        }
        Ok(())
    }

    /// Stops PostgreSQL with a fast shutdown (every connection is cut), keeping its data.
    pub async fn stop_postgres(&mut self) -> anyhow::Result<()> {
        if let Some(postgres) = self.postgres.take() {
            let log = postgres.log_path().to_path_buf();
            postgres.stop().await?;
            self.infra_restarts += 1;
            keep_copy(
                &log,
                &self.dir.join("logs"),
                "postgres",
                self.infra_restarts,
            )?;
        }
        Ok(())
    }

    pub async fn start_postgres(&mut self) -> anyhow::Result<()> {
        if self.postgres.is_none() {
            self.postgres =
                Some(LocalPostgres::start(&self.dir.join("postgres"), Some(self.pg_port)).await?);
        }
        Ok(())
    }

    /// `pg_terminate_backend` of every connection to the five service databases (the caller's own
    /// pools included: they reconnect too); returns how many were terminated.
    pub async fn terminate_backends(&self) -> anyhow::Result<i64> {
        let mut conn = sqlx::PgConnection::connect(&self.database_url("postgres")).await?;
        let databases: Vec<String> = Svc::ALL.iter().map(|s| s.database()).collect();
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
             FROM pg_stat_activity WHERE datname = ANY($1) AND pid <> pg_backend_pid()",
        )
        .bind(&databases)
        .fetch_one(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(terminated)
    }

    /// Every log file of the run so far: each start of each service, and NATS's and PostgreSQL's.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.join("logs"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .collect()
            })
            .unwrap_or_default();
        for infra in [
            self.nats.as_ref().map(|n| n.log_path().to_path_buf()),
            self.postgres.as_ref().map(|p| p.log_path().to_path_buf()),
        ]
        .into_iter()
        .flatten()
        {
            files.push(infra);
        }
        files.sort();
        files
    }

    /// Stops every service (SIGTERM, then SIGKILL after `grace`), then NATS and PostgreSQL.
    pub async fn shutdown(mut self, grace: Duration) -> anyhow::Result<()> {
        for svc in Svc::ALL {
            if let Some(proc) = self.procs.get_mut(&svc)
                && let Some(mut child) = proc.child.take()
            {
                terminate(&mut child, grace).await;
            }
        }
        if let Some(nats) = self.nats.take() {
            nats.stop().await?;
        }
        if let Some(postgres) = self.postgres.take() {
            postgres.stop().await?;
        }
        Ok(())
    }

    fn proc_mut(&mut self, svc: Svc) -> anyhow::Result<&mut Proc> {
        self.procs
            .get_mut(&svc)
            .with_context(|| format!("no service {svc}"))
    }

    fn current_log(&self, svc: Svc) -> PathBuf {
        let starts = self.procs.get(&svc).map_or(0, |p| p.starts);
        self.dir
            .join("logs")
            .join(format!("{}.{starts}.log", svc.name()))
    }

    fn spawn(&mut self, svc: Svc) -> anyhow::Result<()> {
        let bin = self.bin_dir.join(svc.binary());
        let dir = self.dir.clone();
        let proc = self.proc_mut(svc)?;
        if proc.child.is_some() {
            bail!("{svc} is already running");
        }
        proc.starts += 1;
        let log_path = dir
            .join("logs")
            .join(format!("{}.{}.log", svc.name(), proc.starts));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(&bin);
        command
            .arg("--config")
            .arg(&proc.config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // The children's configuration is their file: nothing of ours leaks in.
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str()
                && (key.starts_with("FOLLOWUP_")
                    || key == "RUST_LOG"
                    || key.starts_with("OTEL_")
                    || key == "DATABASE_URL"
                    || key == "NATS_URL")
            {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        proc.child = Some(child);
        Ok(())
    }

    fn write_config(&self, svc: Svc, ports: Ports, options: &Options) -> anyhow::Result<PathBuf> {
        let keys = self.dir.join("keys");
        let mut config = json!({
            "database_url": self.database_url(&svc.database()),
            "database_max_connections": 8,
            "nats_url": self.nats_url(),
            "grpc_addr": format!("127.0.0.1:{}", ports.grpc),
            "admin_addr": format!("127.0.0.1:{}", ports.admin),
            "startup_timeout_secs": 60,
            "shutdown_grace_secs": 5,
            "auth": { "jwt_public_key_files": [keys.join("staff.pub.pem").display().to_string()] },
            "log": { "format": "json", "filter": options.log_filter },
            "outbox": { "poll_interval_ms": 200 },
        });
        let http = ports.http.map(|port| format!("127.0.0.1:{port}"));
        let own = match svc {
            Svc::Plans => json!({
                "portal_signing_key": self.portal_keys.private_pem,
                "portal_addr": http,
                "beacon_script_url": format!(
                    "http://{}/v1/beacon.js",
                    http_addr_of(self, Svc::Engagement)
                ),
            }),
            Svc::Engagement => json!({
                "portal_public_key_files": [keys.join("portal.pub.pem").display().to_string()],
                "http_addr": http,
                "allowed_origins": ["*"],
            }),
            Svc::Notifications => json!({
                "http_addr": http,
                "public_base_url": format!("http://{}", http.clone().unwrap_or_default()),
                "unsubscribe_signing_key": "process-harness-unsubscribe-key-0123456789",
                "sms": {
                    "provider": "generic_json",
                    "base_url": self.sink.base_url(),
                    "from": "+15005550006",
                },
                "webhooks": { "allow_http": true },
                "delivery": {
                    // A killed worker's message is taken over when its lease ends: seconds, not minutes,
                    // so a fault run sees the retry.
                    "request_timeout_ms": 3000,
                    "lease_secs": 6,
                    "retry_schedule_ms": [0, 500, 1000, 2000, 5000, 10000, 20000, 30000],
                    "poll_interval_ms": 250,
                },
            }),
            // Playing a rule checks its templates in notifications; previews render there.
            Svc::Scheduler => json!({
                "notifications": {
                    "addr": format!(
                        "http://127.0.0.1:{}",
                        self.procs
                            .get(&Svc::Notifications)
                            .map_or(0, |p| p.ports.grpc)
                    ),
                },
            }),
            Svc::Cases => json!({}),
        };
        merge(&mut config, own);
        if let Some(extra) = options.config.get(&svc) {
            merge(&mut config, extra.clone());
        }
        let path = self.dir.join("config").join(format!("{}.toml", svc.name()));
        std::fs::write(&path, to_toml(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The engagement beacon address, before the processes exist (plans' page links to it).
fn http_addr_of(system: &System, svc: Svc) -> String {
    system
        .procs
        .get(&svc)
        .and_then(|p| p.ports.http)
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| "localhost:8080".into())
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A free TCP port on loopback (the kernel's pick, released at once: another process could take it
/// before the service binds it, which on a test machine does not happen in practice).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The machine's load averages (1, 5, 15 minutes), from `/proc/loadavg`.
pub fn load_average() -> Option<(f64, f64, f64)> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<f64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The status code of `GET path` (HTTP/1.0, one request per connection), or `None` when nothing
/// answered within `timeout`.
pub async fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut read = 0;
        while read < 12 {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = std::str::from_utf8(&head[..read]).ok()?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // std has no SIGTERM and the workspace denies unsafe code: the `kill` command sends it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Keeps the log of a server that was stopped (it rewrites its log when started again) in the run's
/// log folder, as `<name>.stop<n>.log`.
fn keep_copy(log: &Path, logs: &Path, name: &str, n: u32) -> anyhow::Result<()> {
    if log.is_file() {
        let copy = logs.join(format!("{name}.stop{n}.log"));
        std::fs::copy(log, &copy)
            .with_context(|| format!("keeping a copy of {}", log.display()))?;
    }
    Ok(())
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Merges `over` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// A JSON object as TOML: scalars and arrays of scalars at each level first, then its tables.
fn to_toml(value: &Value) -> anyhow::Result<String> {
    fn scalar(value: &Value) -> anyhow::Result<String> {
        Ok(match value {
            Value::String(s) => serde_json::to_string(s)?,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Array(items) => {
                let items: anyhow::Result<Vec<String>> = items.iter().map(scalar).collect();
                format!("[{}]", items?.join(", "))
            }
            Value::Null | Value::Object(_) => bail!("no TOML scalar for {value}"),
        })
    }
    fn table(
        out: &mut String,
        path: &str,
        map: &serde_json::Map<String, Value>,
    ) -> anyhow::Result<()> {
        if !path.is_empty() {
            out.push_str(&format!("\n[{path}]\n"));
        }
        for (key, value) in map {
            match value {
                Value::Object(_) | Value::Null => {}
                _ => out.push_str(&format!("{key} = {}\n", scalar(value)?)),
            }
        }
        for (key, value) in map {
            if let Value::Object(inner) = value {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                table(out, &path, inner)?;
            }
        }
        Ok(())
    }
    let Value::Object(map) = value else {
        bail!("a configuration is a JSON object");
    };
    let mut out = String::new();
    table(&mut out, "", map)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_becomes_toml_with_tables_last() -> anyhow::Result<()> {
        let mut config = json!({"a": 1, "log": {"format": "json"}, "key": "line1\nline\"2"});
        merge(
            &mut config,
            json!({"log": {"filter": "info"}, "b": [1, 2], "n": null}),
        );
        let toml = to_toml(&config)?;
        assert_eq!(
            toml,
            "a = 1\nb = [1, 2]\nkey = \"line1\\nline\\\"2\"\n\n[log]\nfilter = \"info\"\nformat = \"json\"\n"
        );
        Ok(())
    }
}
