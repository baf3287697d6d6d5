//! Starting and stopping a service, the same way for all five.
//!
//! A service's `Service::build(config)` calls [`Platform::start`] (database, migrations, NATS, streams,
//! outbox relay), registers its consumers with [`Platform::consume`], then [`Platform::serve`] binds gRPC,
//! admin and any HTTP servers (port 0 works: tests read the bound addresses from [`Running`]).
//! A binary's `main` is one call to [`main`], which adds the `serve` / `migrate` / `config` subcommands.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::auth::{Authenticator, Verifier};
use crate::config::{self, CommonConfig, Sources};
use crate::consumer::{Consumer, Handler};
use crate::grpc::{GrpcServices, ObserveLayer, ValidateLayer};
use crate::jetstream::{self, ConsumerSpec};
use crate::metrics::Metrics;
use crate::outbox::Relay;
use crate::shutdown::Shutdown;

/// A service's name and default ports (docs/ARCHITECTURE.md#services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `plans`, `cases`, …: the env prefix (`FOLLOWUP_PLANS__`), the `ce-source`, the metrics label.
    pub name: &'static str,
    pub grpc_port: u16,
    pub admin_port: u16,
}

/// A service's configuration: the platform's part and its own.
#[derive(Clone, Debug)]
pub struct ServiceConfig<S> {
    pub common: CommonConfig,
    pub own: S,
}

impl<S: Serialize + DeserializeOwned> ServiceConfig<S> {
    pub fn load(
        info: &ServiceInfo,
        defaults: S,
        sources: Sources,
    ) -> Result<Self, config::ConfigError> {
        let (common, own) = config::load(info, defaults, sources)?;
        Ok(Self { common, own })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    JetStream(#[from] jetstream::JetStreamError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("{0}")]
    Other(String),
}

/// An extra HTTP server of a service (engagement's beacons, plans' portal).
pub struct HttpServer {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub router: axum::Router,
}

/// What a service builds on: connections, metrics, shutdown, auth.
pub struct Platform {
    pub info: ServiceInfo,
    pub config: CommonConfig,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub metrics: Arc<Metrics>,
    /// Watched by servers and consumers: triggered first.
    pub shutdown: Shutdown,
    /// Watched by the outbox relay only: triggered after the rest has drained, so the events their last
    /// commits wrote still leave.
    relay_shutdown: Shutdown,
    pub verifier: Verifier,
}

impl Platform {
    /// Connects to PostgreSQL and NATS (retrying while they come up), applies migrations, declares the
    /// streams and starts the outbox relay.
    pub async fn start(
        info: ServiceInfo,
        config: CommonConfig,
        migrator: &Migrator,
    ) -> Result<Self, StartError> {
        config.validate(&info)?;
        // One folder of credentials for a whole stack (dev, tests): this service's seed in it.
        let mut config = config;
        if config.nats_credentials_file.is_none()
            && let Some(dir) = &config.nats_credentials_dir
        {
            config.nats_credentials_file = Some(dir.join(format!("{}.nk", info.name)));
        }
        let verifier = Verifier::from_config(&config.auth)?;
        let pool = crate::db::connect(&config).await?;
        crate::db::migrate(&pool, migrator).await?;
        let nats = jetstream::connect(&config, &format!("followup-{}", info.name)).await?;
        let js = jetstream::context(nats.clone());
        jetstream::ensure_streams(&js, config.stream_replicas).await?;
        let metrics = Arc::new(Metrics::new(info.name));
        let shutdown = Shutdown::new();
        let relay_shutdown = Shutdown::new();

        let relay = Relay {
            pool: pool.clone(),
            js: js.clone(),
            batch_size: config.outbox.batch_size,
            poll_interval: Duration::from_millis(config.outbox.poll_interval_ms),
            metrics: metrics.clone(),
        };
        relay_shutdown.spawn(relay.run(relay_shutdown.clone()));
        shutdown.spawn(janitor(pool.clone(), config.clone(), shutdown.clone()));

        Ok(Self {
            info,
            config,
            pool,
            nats,
            js,
            metrics,
            shutdown,
            relay_shutdown,
            verifier,
        })
    }

    /// The interceptor to wrap each gRPC API in.
    pub fn authenticator(&self) -> Authenticator {
        Authenticator::new(self.verifier.clone())
    }

    /// Declares a durable consumer and runs `handler` on its events until shutdown.
    pub async fn consume<H: Handler>(
        &self,
        spec: ConsumerSpec,
        handler: H,
    ) -> Result<(), StartError> {
        // The NATS server lets a service create only the consumers of its grant; say so before it does,
        // naming the table to change.
        if let Some(grant) = crate::nats_auth::service(self.info.name)
            && !grant.consumers.iter().any(|c| {
                c.stream.name() == spec.stream
                    && c.durable == spec.durable
                    && c.filter == spec.filter_subject
            })
        {
            return Err(StartError::Other(format!(
                "consumer {} of {} on {} ({}) is not in the NATS permissions of {}: add it to \
                 SERVICES in services/platform/src/nats_auth.rs (and the table in deploy/README.md)",
                spec.durable, self.info.name, spec.stream, spec.filter_subject, self.info.name
            )));
        }
        // Declared now, so a misconfiguration fails the start rather than a background task.
        jetstream::ensure_consumer(&self.js, &spec).await?;
        let consumer = Consumer {
            spec,
            handler: Arc::new(handler),
            pool: self.pool.clone(),
            js: self.js.clone(),
            metrics: self.metrics.clone(),
            config: self.config.consumer.clone(),
        };
        let shutdown = self.shutdown.clone();
        self.shutdown.spawn(async move {
            if let Err(err) = consumer.run(shutdown).await {
                tracing::error!(error = %err, "consumer stopped");
            }
        });
        Ok(())
    }

    /// Binds every server and starts serving. Ports 0 pick free ports; [`Running`] says which.
    pub async fn serve(
        self,
        grpc: GrpcServices,
        http: Vec<HttpServer>,
    ) -> Result<Running, StartError> {
        let grpc_listener = bind("gRPC", self.config.grpc_addr).await?;
        let admin_listener = bind("admin", self.config.admin_addr).await?;
        let grpc_addr = local_addr("gRPC", &grpc_listener)?;
        let admin_addr = local_addr("admin", &admin_listener)?;

        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = reflection(&grpc.names)
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        // grpcurl before 1.8.8 and many tools still ask the v1alpha service.
        let reflection_v1alpha = reflection(&grpc.names)
            .build_v1alpha()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let names = grpc.names.clone();
        let mut routes = grpc.routes;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let routes = routes.routes();

        let shutdown = self.shutdown.clone();
        let observe = ObserveLayer {
            metrics: self.metrics.clone(),
        };
        let cors = crate::grpc::cors(&self.config.grpc_web);
        let grpc_shutdown = shutdown.clone();
        self.shutdown.spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let served = tonic::transport::Server::builder()
                // Browsers call through gRPC-Web over HTTP/1.1; gRPC clients keep HTTP/2 on the same port.
                .accept_http1(true)
                .layer(cors)
                .layer(tonic_web::GrpcWebLayer::new())
                .layer(observe)
                .layer(ValidateLayer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, grpc_shutdown.triggered())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "gRPC server failed");
                grpc_shutdown.trigger();
            }
        });
        for name in &names {
            health
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let admin = admin::router(AdminState {
            pool: self.pool.clone(),
            nats: self.nats.clone(),
            metrics: self.metrics.clone(),
            shutdown: shutdown.clone(),
        });
        // The admin server outlives the drain (readiness reports "not ready" meanwhile); it stops with
        // the relay.
        spawn_http(admin_listener, admin, &self.relay_shutdown);

        let mut http_addrs = Vec::with_capacity(http.len());
        for server in http {
            let listener = bind(server.name, server.addr).await?;
            http_addrs.push((server.name, local_addr(server.name, &listener)?));
            spawn_http(listener, server.router, &shutdown);
        }

        tracing::info!(
            service = self.info.name,
            grpc = %grpc_addr,
            admin = %admin_addr,
            http = ?http_addrs,
            "serving"
        );
        Ok(Running {
            info: self.info,
            grpc_addr,
            admin_addr,
            http_addrs,
            shutdown,
            relay_shutdown: self.relay_shutdown,
            grace: self.config.shutdown_grace(),
            pool: self.pool,
            nats: self.nats,
            health,
            health_names: names,
        })
    }
}

/// The reflection services, listed like any other: clients (grpcurl `list`, IDE plugins) look for one of
/// them to decide whether the server can describe itself.
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Reflection over this service's own APIs, health and both reflection services (not every API of the
/// shared descriptor set), with the `google.rpc` error-detail types so clients such as grpcurl can print
/// AIP-193 details.
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(followup_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        // Each build adds only its own version's descriptors; both are served, so both are described.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in REFLECTION_SERVICES {
        builder = builder.with_service_name(name);
    }
    for name in names {
        builder = builder.with_service_name(*name);
    }
    builder
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(what: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

fn spawn_http(listener: TcpListener, router: axum::Router, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.triggered().await })
        .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "HTTP server failed");
        }
    });
}

/// Deletes old outbox and inbox rows, hourly.
async fn janitor(pool: PgPool, config: CommonConfig, shutdown: Shutdown) {
    let outbox_retention = Duration::from_secs(config.outbox.retention_hours * 3600);
    let inbox_retention = Duration::from_secs(config.consumer.inbox_retention_hours * 3600);
    loop {
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        match crate::outbox::prune(&pool, outbox_retention).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned published outbox rows"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "outbox prune failed"),
        }
        match crate::consumer::prune_inbox(&pool, inbox_retention).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned inbox rows"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "inbox prune failed"),
        }
    }
}

/// A started service.
pub struct Running {
    pub info: ServiceInfo,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addrs: Vec<(&'static str, SocketAddr)>,
    shutdown: Shutdown,
    relay_shutdown: Shutdown,
    grace: Duration,
    pool: PgPool,
    nats: async_nats::Client,
    health: tonic_health::server::HealthReporter,
    health_names: Vec<&'static str>,
}

impl Running {
    /// The bound address of an extra HTTP server, by name.
    pub fn http_addr(&self, name: &str) -> Option<SocketAddr> {
        self.http_addrs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, addr)| *addr)
    }

    /// A handle that stops the service when triggered (signals, a test, the dev stack).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until shutdown is triggered (by a signal when [`Shutdown::trigger_on_signals`] was set up,
    /// or by a handle), then stops cleanly.
    pub async fn wait(self) -> bool {
        self.shutdown.triggered().await;
        self.stop().await
    }

    /// Stops intake, finishes in-flight work, publishes the last outbox events, closes connections.
    /// Returns false when something was still running after the grace period.
    pub async fn stop(self) -> bool {
        for name in &self.health_names {
            self.health
                .set_service_status(*name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.shutdown.trigger();
        let drained = self.shutdown.wait_drained(self.grace).await;
        self.relay_shutdown.trigger();
        let relay_drained = self.relay_shutdown.wait_drained(self.grace).await;
        // Bounded: with NATS already gone a flush would wait for a reconnect that never comes.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.nats.flush()).await;
        self.pool.close().await;
        tracing::info!(service = self.info.name, drained, relay_drained, "stopped");
        drained && relay_drained
    }
}

#[derive(clap::Parser)]
#[command(about = "A Followup service")]
struct Cli {
    /// A TOML configuration file (else FOLLOWUP_CONFIG, else defaults and environment only).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply the database migrations and exit (a Kubernetes Job before a rollout).
    Migrate,
    /// Print the configuration in effect, secrets redacted, and exit.
    Config,
}

/// The whole `main` of a service binary.
pub fn main<S, F, Fut>(
    info: ServiceInfo,
    migrator: &'static Migrator,
    defaults: S,
    build: F,
) -> ExitCode
where
    S: Serialize + DeserializeOwned + std::fmt::Debug,
    F: FnOnce(ServiceConfig<S>) -> Fut,
    Fut: Future<Output = Result<Running, StartError>>,
{
    let cli = <Cli as clap::Parser>::parse();
    let sources = Sources {
        file: cli.config.clone(),
        ..Sources::from_environment()
    };
    let config = match ServiceConfig::load(&info, defaults, sources) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("followup-{}: {err}", info.name);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!(
                "followup-{}: cannot start the async runtime: {err}",
                info.name
            );
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry =
            crate::telemetry::init(&format!("followup-{}", info.name), &config.common.log);
        let outcome = match cli.command.unwrap_or(Command::Serve) {
            Command::Config => {
                println!("{}", config::printable(&config.common, &config.own));
                Ok(())
            }
            Command::Migrate => match crate::db::connect(&config.common).await {
                Ok(pool) => crate::db::migrate(&pool, migrator).await.map(|()| {
                    tracing::info!(service = info.name, "migrations applied");
                }),
                Err(err) => Err(err),
            }
            .map_err(StartError::from),
            Command::Serve => match build(config).await {
                Ok(running) => {
                    running.shutdown_handle().trigger_on_signals();
                    running.wait().await;
                    Ok(())
                }
                Err(err) => Err(err),
            },
        };
        telemetry.flush();
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(service = info.name, error = %err, "failed");
                eprintln!("followup-{}: {err}", info.name);
                ExitCode::FAILURE
            }
        }
    })
}
