//! The private NATS server and PostgreSQL cluster of `followup dev` and the test kit, for real: they
//! start, serve, stop, and leave no process behind however we let go of them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use followup_platform::local::{LocalError, LocalNats, LocalPostgres, pid_exists};
use sqlx::Connection;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn nats_serves_jetstream_and_stops() -> TestResult {
    let dir = tempfile::tempdir()?;
    let nats = LocalNats::start(&dir.path().join("nats"), None).await?;
    assert!(nats.url().starts_with("nats://127.0.0.1:"));

    let client = async_nats::connect(nats.url()).await?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "LOCAL_INFRA".into(),
            subjects: vec!["local.>".into()],
            ..Default::default()
        })
        .await?;
    jetstream
        .publish("local.hello", "round trip".into())
        .await?
        .await?;
    let message = stream
        .get_last_raw_message_by_subject("local.hello")
        .await?;
    assert_eq!(message.payload.as_ref(), b"round trip");
    client.drain().await?;

    let pid = nats.pid();
    nats.stop().await?;
    assert!(!pid_exists(pid), "nats-server (pid {pid}) outlived stop()");
    Ok(())
}

#[tokio::test]
async fn postgres_serves_a_database_and_stops() -> TestResult {
    // A temporary folder is 0700: as root, this also checks that the `postgres` user is let through.
    let dir = tempfile::tempdir()?;
    let pg = LocalPostgres::start(&dir.path().join("pg"), None).await?;
    pg.create_database("local_infra").await?;
    pg.create_database("local_infra").await?; // idempotent
    pg.create_database("odd \"name\"").await?; // quoted

    let mut conn = sqlx::PgConnection::connect(&pg.url("local_infra")).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    assert_eq!(one, 1);
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(database, "local_infra");

    let pid = pg.pid();
    let backends = children_of(pid);
    assert!(!backends.is_empty(), "a postmaster has helper processes");
    pg.stop().await?; // a fast shutdown, with our connection still open
    drop(conn);
    assert!(!pid_exists(pid), "postgres (pid {pid}) outlived stop()");
    for backend in backends {
        assert!(
            !pid_exists(backend),
            "postgres backend {backend} outlived stop()"
        );
    }
    Ok(())
}

#[tokio::test]
async fn dropping_without_stop_leaves_no_process() -> TestResult {
    let dir = tempfile::tempdir()?;
    let nats = LocalNats::start(&dir.path().join("nats"), None).await?;
    let pg = LocalPostgres::start(&dir.path().join("pg"), None).await?;
    let nats_pid = nats.pid();
    let pg_pid = pg.pid();
    let backends = children_of(pg_pid);

    drop(nats);
    drop(pg);

    assert!(
        !pid_exists(nats_pid),
        "nats-server (pid {nats_pid}) outlived drop"
    );
    assert!(!pid_exists(pg_pid), "postgres (pid {pg_pid}) outlived drop");
    for backend in backends {
        assert!(
            !pid_exists(backend),
            "postgres backend {backend} outlived drop"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_running_cluster_is_not_started_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("pg");
    let store = dir.path().join("nats");
    let pg = LocalPostgres::start(&data, None).await?;
    let nats = LocalNats::start(&store, None).await?;

    match LocalPostgres::start(&data, None).await {
        Err(LocalError::AlreadyRunning { pid, .. }) => assert_eq!(pid, pg.pid()),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    match LocalNats::start(&store, None).await {
        Err(LocalError::AlreadyRunning { pid, .. }) => assert_eq!(pid, nats.pid()),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }

    // The first ones are unharmed.
    pg.create_database("still_up").await?;
    pg.stop().await?;
    nats.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_fixed_port_is_used() -> TestResult {
    let dir = tempfile::tempdir()?;
    let port = {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.local_addr()?.port()
    };
    let nats = LocalNats::start(&dir.path().join("nats"), Some(port)).await?;
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));

    // Something already listens there now: the second server must fail, not mistake the first for
    // itself.
    let other = tempfile::tempdir()?;
    let result = LocalNats::start(other.path(), Some(port)).await;
    assert!(
        matches!(result, Err(LocalError::ExitedEarly { .. })),
        "expected ExitedEarly, got {result:?}"
    );
    nats.stop().await?;
    Ok(())
}

/// The environment variable that turns [`helper_parent_of_servers`] on, naming its folder.
const HELPER_DIR: &str = "FOLLOWUP_LOCAL_INFRA_HELPER_DIR";

/// Kills a process that started both servers with `kill -9`, which runs no destructor: the kernel must
/// take the servers down (PR_SET_PDEATHSIG). Then starts them again on the same folders, as
/// `followup dev` does after a crash, over the stale pid files.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn servers_die_with_a_killed_parent_and_restart_after() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut helper = KillOnDrop(
        std::process::Command::new(std::env::current_exe()?)
            .args([
                "helper_parent_of_servers",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(HELPER_DIR, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let pids_file = dir.path().join("pids");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pids_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the helper did not start its servers"
        );
        assert!(helper.0.try_wait()?.is_none(), "the helper exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // nats-server, the postmaster, then the postmaster's helpers (some of which may come and go).
    let pids: Vec<u32> = std::fs::read_to_string(&pids_file)?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    assert!(pids.len() > 2 && pids[..2].iter().all(|pid| is_running(*pid)));

    helper.0.kill()?; // SIGKILL: no destructor of the helper runs
    helper.0.wait()?;
    for pid in &pids {
        wait_until_not_running(*pid, Duration::from_secs(10));
    }

    // Restart on the folders the killed run left behind, stale pid files and all.
    let pg = LocalPostgres::start(&dir.path().join("pg"), None).await?;
    pg.create_database("after_crash").await?;
    let nats = LocalNats::start(&dir.path().join("nats"), None).await?;
    pg.stop().await?;
    nats.stop().await?;
    Ok(())
}

/// Not a test: the process [`servers_die_with_a_killed_parent_and_restart_after`] kills.
#[tokio::test]
#[ignore = "run by servers_die_with_a_killed_parent_and_restart_after"]
async fn helper_parent_of_servers() -> TestResult {
    let Some(dir) = std::env::var_os(HELPER_DIR).map(PathBuf::from) else {
        return Ok(());
    };
    let nats = LocalNats::start(&dir.join("nats"), None).await?;
    let pg = LocalPostgres::start(&dir.join("pg"), None).await?;
    let mut pids = vec![nats.pid(), pg.pid()];
    pids.extend(children_of(pg.pid()));
    let text: Vec<String> = pids.iter().map(u32::to_string).collect();
    std::fs::write(dir.join("pids.tmp"), text.join(" "))?;
    std::fs::rename(dir.join("pids.tmp"), dir.join("pids"))?;
    // Wait to be killed; `forget` so that not even a panic could run the servers' destructors.
    std::mem::forget((nats, pg));
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

/// Kills the helper process if the test fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The processes whose parent is `pid` (for the postmaster: its checkpointer, writers, launchers).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .collect()
}

/// Field 4 of `/proc/<pid>/stat`, after the parenthesised command name.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Running, as opposed to gone or a zombie. A process whose parent we killed is reaped by init, not by
/// us, so for those a zombie counts as dead.
fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
}

fn wait_until_not_running(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs {timeout:?} after its parent was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
