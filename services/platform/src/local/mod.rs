//! A private NATS server and a private PostgreSQL cluster, run as child processes.
//!
//! Two callers need the same thing: `followup dev`, which keeps its data in a persistent folder under
//! `.followup/` so a restart finds yesterday's plans, and the test kit, which gives every test binary a
//! throwaway folder. Both want real servers, on free ports, that never outlive the process that
//! started them.
//!
//! - [`LocalNats`]: `nats-server -js` bound to 127.0.0.1, its JetStream store in the given folder.
//! - [`LocalPostgres`]: `initdb` once, then `postgres` bound to 127.0.0.1, trust authentication for the
//!   `postgres` superuser.
//!
//! # Children never outlive us
//!
//! - [`LocalNats::stop`] / [`LocalPostgres::stop`] shut down gracefully and escalate to `SIGKILL` after
//!   a grace period; dropping either without `stop` kills the child synchronously, and so does
//!   dropping the `stop` future half-way.
//! - On Linux every child is started with `PR_SET_PDEATHSIG = SIGKILL`, so even a `kill -9` of our
//!   process takes the servers down with it (PostgreSQL's own backends follow their postmaster). The
//!   kernel ties that signal to the *thread* that forked the child, not the process, so children are
//!   forked from one dedicated thread that lives as long as the process: a test that starts a shared
//!   server and then ends (and its thread with it) does not take the server down.
//! - Children get their own process group, so a Ctrl-C in the terminal reaches only us: `followup dev`
//!   can stop the services first and the servers they depend on last.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When our uid is 0, `initdb` and `postgres` run as the `postgres`
//! system user that Debian's `postgresql` package creates; the data folder (and any parent folders we
//! create for it) is handed to that user, and directories above it that the user could not enter get the
//! search bit (`o+x`, which lets it pass through but not list them). Otherwise both run as us.
//!
//! # Files
//!
//! NATS: `<store_dir>/jetstream/` (the server's), `nats-server.log`, `nats-server.pid`, `ports/`.
//! PostgreSQL: the cluster in `<data_dir>`, its output in `<data_dir>/postgres.log`, its Unix socket in
//! `<data_dir>` when the path is short enough for a socket address (clients here use TCP either way).
//!
//! Unix only; the servers are found on `PATH` and in Debian's locations, and a missing one is reported
//! as [`LocalError::MissingBinary`] naming the Debian package to install.

mod nats;
mod postgres;
mod process;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub use nats::LocalNats;
pub use postgres::LocalPostgres;

/// Whether a process with this pid exists (running, or exited but not yet reaped by its parent).
///
/// `kill(pid, 0)`: it succeeds, or fails with `EPERM` for a process of another user (PostgreSQL runs
/// as `postgres` when we are root). Meant for tests and for `followup dev` to check that nothing was
/// left behind.
pub fn pid_exists(pid: u32) -> bool {
    process::sys::pid_exists(pid)
}

/// What can go wrong starting, using or stopping a local server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A server binary is not installed.
    #[error(
        "`{program}` was not found on this machine; it comes with the Debian package `{debian_package}`: \
         install it with `sudo apt-get install -y {debian_package}`"
    )]
    MissingBinary {
        program: &'static str,
        debian_package: &'static str,
    },

    /// We are root, PostgreSQL will not run as root, and there is no `postgres` user to run it as.
    #[error(
        "PostgreSQL refuses to run as root and this machine has no `postgres` user to run it as; \
         install the Debian package `postgresql` (it creates that user): `sudo apt-get install -y postgresql`, \
         or run as an ordinary user"
    )]
    NoPostgresUser,

    /// A server started by an earlier run still owns this data folder.
    #[error(
        "{program} (pid {pid}) is already running on {dir}; stop it first (`kill {pid}`) or use another folder"
    )]
    AlreadyRunning {
        program: &'static str,
        pid: u32,
        dir: PathBuf,
    },

    /// The `postgres` user cannot reach the data folder through a directory we may not change.
    #[error(
        "the `{user}` user that PostgreSQL runs as cannot enter {path}, which belongs to someone else; \
         choose a data folder that user can reach, or allow it through with `chmod o+x {path}`"
    )]
    NotTraversable { path: PathBuf, user: String },

    /// A command we run to completion (`initdb`, `pg_config`) failed.
    #[error("{program} failed ({status}):\n{output}")]
    CommandFailed {
        program: &'static str,
        status: ExitStatus,
        output: String,
    },

    /// A server exited before it was ready.
    #[error("{program} exited during startup ({status}); the end of {log}:\n{log_tail}")]
    ExitedEarly {
        program: &'static str,
        status: ExitStatus,
        log: PathBuf,
        log_tail: String,
    },

    /// A server kept running but did not become ready in time.
    #[error("{program} was not ready after {timeout:?}; the end of {log}:\n{log_tail}")]
    NotReady {
        program: &'static str,
        timeout: Duration,
        log: PathBuf,
        log_tail: String,
    },

    /// A file, directory or process operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A statement against the local cluster failed.
    #[error("{context}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
}

impl LocalError {
    /// Wraps an I/O error with what we were doing, for `map_err`.
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
        let context = context.into();
        move |source| LocalError::Io { context, source }
    }
}
