//! A private PostgreSQL cluster: `initdb` once, then `postgres`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

use super::LocalError;
use super::process::{self, ChildProcess, OnDrop, sys};

/// How long the cluster may take to accept connections (crash recovery after a killed dev run
/// included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A fast shutdown still writes a checkpoint; give it time before killing.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// An immediate shutdown (on drop) needs no checkpoint, only the backends to go.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// How long backends of a killed postmaster may take to notice and exit.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How many free ports we try when another process takes the one we picked before the server binds it.
const PORT_ATTEMPTS: usize = 5;
/// `sockaddr_un.sun_path` is 108 bytes with its terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

const SUPERUSER: &str = "postgres";
/// The system user Debian's `postgresql` package creates, which we run as when we are root.
const SYSTEM_USER: &str = "postgres";
const DEBIAN_PACKAGE: &str = "postgresql";

/// A PostgreSQL cluster listening on 127.0.0.1, run as our child, with trust authentication for the
/// `postgres` superuser.
#[derive(Debug)]
pub struct LocalPostgres {
    process: ChildProcess,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

impl LocalPostgres {
    /// Starts PostgreSQL on the cluster in `data_dir`, creating it with `initdb` when the folder has
    /// none, on `port` or on a free port when `None`, and returns once it accepts connections.
    ///
    /// When we are root, the cluster is owned by and runs as the `postgres` system user (see the
    /// [module documentation](super)).
    pub async fn start(data_dir: &Path, port: Option<u16>) -> Result<Self, LocalError> {
        let binaries = Binaries::find()?;
        let data_dir = std::path::absolute(data_dir).map_err(LocalError::io(format!(
            "could not resolve {}",
            data_dir.display()
        )))?;
        let run_as = run_as_user()?;
        prepare_data_dir(&data_dir, run_as.as_ref())?;
        check_not_running(&data_dir).await?;
        if !data_dir.join("PG_VERSION").exists() {
            init_cluster(&binaries, &data_dir, run_as.as_ref()).await?;
        }

        let attempts = if port.is_some() { 1 } else { PORT_ATTEMPTS };
        let mut attempt = 1;
        loop {
            let port = match port {
                Some(port) => port,
                None => free_port()?,
            };
            match launch(&binaries, &data_dir, port, run_as.as_ref()).await {
                Err(LocalError::ExitedEarly { ref log_tail, .. })
                    if attempt < attempts && log_tail.contains("Address already in use") =>
                {
                    tracing::debug!(port, "port taken before postgres could bind it; retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Connection options for `database`, independent of the `PG*` environment variables.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        connect_options(self.port, database)
    }

    /// Creates `name` unless it exists. Safe to call concurrently for the same name.
    pub async fn create_database(&self, name: &str) -> Result<(), LocalError> {
        let context = || format!("could not create database `{name}` on {}", self.url(""));
        let db_err = |source| LocalError::Database {
            context: context(),
            source,
        };
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres"))
            .await
            .map_err(db_err)?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_optional(&mut conn)
                .await
                .map_err(db_err)?;
        if exists.is_none() {
            // CREATE DATABASE takes no bind parameters; the name is quoted as an identifier.
            let sql = format!("CREATE DATABASE {}", quote_identifier(name));
            match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::debug!(database = name, "created database"),
                // Someone created it since we looked: 42P04 duplicate_database, or 23505 when both
                // inserts into pg_database raced.
                Err(sqlx::Error::Database(err))
                    if matches!(err.code().as_deref(), Some("42P04" | "23505")) => {}
                Err(err) => return Err(db_err(err)),
            }
        }
        let _ = conn.close().await;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's own log (stdout and stderr), rewritten at each start.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops the cluster: `SIGINT` (fast shutdown: disconnect clients, checkpoint, exit), then
    /// `SIGKILL` if it is still running after 30 s.
    pub async fn stop(mut self) -> Result<(), LocalError> {
        self.process.stop(libc::SIGINT, STOP_GRACE).await
    }
}

/// Where `initdb` and `postgres` are.
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

impl Binaries {
    /// `pg_config --bindir`; else the newest `/usr/lib/postgresql/<version>/bin` (Debian keeps the
    /// server binaries there, off `PATH`); else `PATH`.
    fn find() -> Result<Self, LocalError> {
        let from_dir = |dir: &Path| {
            let found = Self {
                initdb: dir.join("initdb"),
                postgres: dir.join("postgres"),
            };
            (process::is_executable(&found.initdb) && process::is_executable(&found.postgres))
                .then_some(found)
        };
        if let Some(found) = pg_config_bindir().as_deref().and_then(from_dir) {
            return Ok(found);
        }
        if let Some(found) = debian_bindirs().iter().rev().find_map(|dir| from_dir(dir)) {
            return Ok(found);
        }
        let missing = |program| LocalError::MissingBinary {
            program,
            debian_package: DEBIAN_PACKAGE,
        };
        Ok(Self {
            initdb: process::find_program("initdb").ok_or_else(|| missing("initdb"))?,
            postgres: process::find_program("postgres").ok_or_else(|| missing("postgres"))?,
        })
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let pg_config = process::find_program("pg_config")?;
    let output = Command::new(pg_config).arg("--bindir").output().ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// `/usr/lib/postgresql/*/bin`, oldest version first (`9.6` < `15` < `16`).
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// The user to run the cluster as: `None` for ourselves, the `postgres` system user when we are root.
fn run_as_user() -> Result<Option<sys::User>, LocalError> {
    if sys::current_uid() != 0 {
        return Ok(None);
    }
    let user = sys::lookup_user(SYSTEM_USER)
        .map_err(LocalError::io(format!(
            "could not look up the `{SYSTEM_USER}` user"
        )))?
        .ok_or(LocalError::NoPostgresUser)?;
    if user.uid == 0 {
        // A `postgres` user that is root would be refused just the same.
        return Err(LocalError::NoPostgresUser);
    }
    Ok(Some(user))
}

/// Creates the data folder and, when running as another user, gives it to that user and makes sure
/// the user can reach it.
fn prepare_data_dir(data_dir: &Path, run_as: Option<&sys::User>) -> Result<(), LocalError> {
    // Create the missing folders one by one, remembering which are ours: those we may hand over.
    let mut created = Vec::new();
    let missing: Vec<&Path> = data_dir
        .ancestors()
        .take_while(|dir| !dir.exists())
        .collect();
    for dir in missing.into_iter().rev() {
        std::fs::create_dir(dir).map_err(LocalError::io(format!(
            "could not create {}",
            dir.display()
        )))?;
        created.push(dir.to_path_buf());
    }
    let Some(user) = run_as else {
        return Ok(());
    };

    // A cluster that `initdb` already made is that user's, every file of it: leave it alone.
    let initialized = data_dir.join("PG_VERSION").exists();
    let to_chown = created
        .iter()
        .filter(|dir| dir.as_path() != data_dir)
        .map(PathBuf::as_path)
        .chain((!initialized).then_some(data_dir));
    for dir in to_chown {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(LocalError::io(
            format!(
                "could not give {} to the `{}` user",
                dir.display(),
                user.name
            ),
        ))?;
    }

    // Every directory above the data folder must let the user through. A temporary folder is 0700 and
    // root's home is too; the search bit alone lets the user pass without listing anything. We change
    // only directories that are ours (root's): others we report.
    let me = sys::current_uid();
    for dir in data_dir.ancestors().skip(1) {
        let meta = dir.metadata().map_err(LocalError::io(format!(
            "could not inspect {}",
            dir.display()
        )))?;
        if can_traverse(&meta, user) {
            continue;
        }
        if meta.uid() != me {
            return Err(LocalError::NotTraversable {
                path: dir.to_path_buf(),
                user: user.name.clone(),
            });
        }
        let mut permissions = meta.permissions();
        permissions.set_mode(permissions.mode() | 0o001);
        std::fs::set_permissions(dir, permissions).map_err(LocalError::io(format!(
            "could not let the `{}` user through {}",
            user.name,
            dir.display()
        )))?;
        tracing::info!(
            dir = %dir.display(),
            "allowed other users to pass through (o+x) so that PostgreSQL, running as `{}`, can reach its data folder",
            user.name
        );
    }
    Ok(())
}

/// Whether `user` may enter a directory with these owner, group and mode bits. Supplementary groups
/// are not considered: at worst we add a search bit that was not needed.
fn can_traverse(meta: &std::fs::Metadata, user: &sys::User) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Refuses to start a second postmaster on a cluster that still has processes, and clears the pid file
/// a killed one left behind.
///
/// PostgreSQL deals with a stale `postmaster.pid` itself when no process has the pid it names, but
/// refuses to start when the pid has been reused by an unrelated process of the same user, which in a
/// container, where pids come in the same order each boot, is likely. So we look at the processes, not
/// the pid: a cluster's postmaster and backends all work in its data directory. When none is left, the
/// pid file is stale and we remove it. When the postmaster is gone but backends are not (they notice
/// their postmaster's death within moments), we wait for them: starting over shared memory that they
/// still use would corrupt the cluster.
async fn check_not_running(data_dir: &Path) -> Result<(), LocalError> {
    let pid_file = data_dir.join("postmaster.pid");
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(LocalError::Io {
                context: format!("could not read {}", pid_file.display()),
                source: err,
            });
        }
    };
    let recorded = text
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<u32>().ok());
    let deadline = Instant::now() + ORPHAN_GRACE;
    loop {
        // Without procfs we cannot tell; PostgreSQL will check for itself.
        let Some(remaining) = process::processes_in(data_dir, "postgres") else {
            return Ok(());
        };
        let running = match recorded {
            Some(pid) if remaining.contains(&pid) => Some(pid),
            _ if Instant::now() >= deadline => remaining.first().copied(),
            _ => None,
        };
        if let Some(pid) = running {
            return Err(LocalError::AlreadyRunning {
                program: "postgres",
                pid,
                dir: data_dir.to_path_buf(),
            });
        }
        if remaining.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        file = %pid_file.display(),
        "removing the pid file of a PostgreSQL that is no longer running"
    );
    std::fs::remove_file(&pid_file).map_err(LocalError::io(format!(
        "could not remove the stale {}",
        pid_file.display()
    )))
}

/// Runs `initdb`: UTF-8, superuser `postgres`, trust authentication (the cluster listens on 127.0.0.1
/// only and exists for development and tests).
async fn init_cluster(
    binaries: &Binaries,
    data_dir: &Path,
    run_as: Option<&sys::User>,
) -> Result<(), LocalError> {
    // C.UTF-8 sorts like C (by code point) but knows the case of non-ASCII letters, which `lower()`
    // on patient names needs. Plain C is the fallback for a system without that locale.
    for locale in ["C.UTF-8", "C"] {
        let mut command = Command::new(&binaries.initdb);
        command
            .arg("-D")
            .arg(data_dir)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
            .arg(format!("--locale={locale}"));
        as_user(&mut command, run_as);
        tracing::info!(data_dir = %data_dir.display(), locale, "creating a PostgreSQL cluster");
        let output = process::run_to_completion("initdb", command).await?;
        if output.status.success() {
            return Ok(());
        }
        let text = process::describe_output(&output);
        if !(locale != "C" && text.contains("locale")) {
            return Err(LocalError::CommandFailed {
                program: "initdb",
                status: output.status,
                output: text,
            });
        }
        // initdb has emptied the folder again; try the next locale.
        tracing::debug!(output = %text, "initdb failed with locale {locale}; falling back");
    }
    Ok(())
}

async fn launch(
    binaries: &Binaries,
    data_dir: &Path,
    port: u16,
    run_as: Option<&sys::User>,
) -> Result<LocalPostgres, LocalError> {
    let log = data_dir.join("postgres.log");
    let mut command = Command::new(&binaries.postgres);
    command
        .arg("-D")
        .arg(data_dir)
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        // The socket serves `psql -h <data dir>` only; we connect over TCP. Its address must fit a
        // sockaddr_un, which a deep working folder may not; then there is no socket.
        .arg("-k")
        .arg(socket_dir(data_dir, port).unwrap_or(Path::new("")));
    as_user(&mut command, run_as);
    let mut process = ChildProcess::spawn(
        "postgres",
        command,
        &log,
        // SIGQUIT is an immediate shutdown: the postmaster takes its backends down and removes its pid
        // file, and the next start recovers from the WAL as after a crash.
        OnDrop {
            signal: libc::SIGQUIT,
            grace: DROP_GRACE,
        },
    )?;

    // Ready when *our* postmaster says so in its pid file (so a server of someone else's on the same
    // port does not count) and a connection succeeds.
    let pid = process.pid();
    process
        .wait_ready(READY_TIMEOUT, move || async move {
            if !postmaster_ready(data_dir, pid) {
                return None;
            }
            let options = connect_options(port, "postgres");
            let connect = PgConnection::connect_with(&options);
            let conn = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .ok()?
                .ok()?;
            let _ = conn.close().await;
            Some(())
        })
        .await?;
    tracing::info!(pid, port, data_dir = %data_dir.display(), "postgres is ready");
    Ok(LocalPostgres {
        process,
        port,
        data_dir: data_dir.to_path_buf(),
        log,
    })
}

/// Whether `postmaster.pid` names `pid` and says `ready` (its 8th line, as `pg_ctl -w` reads it).
fn postmaster_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let mut lines = text.lines();
    lines
        .next()
        .and_then(|line| line.trim().parse::<u32>().ok())
        == Some(pid)
        && lines.nth(6).is_some_and(|status| status.trim() == "ready")
}

/// The data folder, if `<data_dir>/.s.PGSQL.<port>` fits a socket address.
fn socket_dir(data_dir: &Path, port: u16) -> Option<&Path> {
    let socket = data_dir.join(format!(".s.PGSQL.{port}"));
    (socket.as_os_str().len() <= MAX_SOCKET_PATH).then_some(data_dir)
}

/// Runs the command as `user` (when we are root), from `/`: our working folder may be one the user
/// cannot enter (root's home), and `initdb` complains when it cannot read it.
fn as_user(command: &mut Command, user: Option<&sys::User>) {
    use std::os::unix::process::CommandExt;

    command.current_dir("/");
    if let Some(user) = user {
        // std also drops our supplementary groups when switching from root.
        command.uid(user.uid).gid(user.gid);
    }
}

fn connect_options(port: u16, database: &str) -> PgConnectOptions {
    // Every field set explicitly, so that PGHOST, PGUSER, PGSSLMODE... in the environment (meant for
    // some other server) do not leak in.
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(SUPERUSER)
        .database(database)
        .ssl_mode(PgSslMode::Disable)
}

/// A port nobody listens on right now. Another process may take it before PostgreSQL binds it; the
/// caller retries then.
fn free_port() -> Result<u16, LocalError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(LocalError::io("could not find a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(LocalError::io("could not find a free port on 127.0.0.1"))?
        .port();
    Ok(port)
}

/// `"name"`, with embedded quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_identifier("cases"), "\"cases\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn reads_postmaster_status() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let pid_file = dir.path().join("postmaster.pid");
        let contents = |status: &str| {
            format!(
                "4242\n{}\n1700000000\n5432\n{}\n127.0.0.1\n  1234567     12\n{status}\n",
                dir.path().display(),
                dir.path().display()
            )
        };
        std::fs::write(&pid_file, contents("starting"))?;
        assert!(!postmaster_ready(dir.path(), 4242));
        std::fs::write(&pid_file, contents("ready   "))?;
        assert!(postmaster_ready(dir.path(), 4242));
        assert!(!postmaster_ready(dir.path(), 4243));
        Ok(())
    }

    #[test]
    fn no_socket_when_the_path_is_too_long() {
        assert!(socket_dir(Path::new("/tmp/x/pg"), 5432).is_some());
        let deep = PathBuf::from(format!("/tmp/{}", "d".repeat(100)));
        assert!(socket_dir(&deep, 5432).is_none());
    }
}
