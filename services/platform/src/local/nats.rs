//! A private `nats-server -js`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::LocalError;
use super::process::{self, ChildProcess, OnDrop};

/// How long the server may take to listen. It is usually up in well under a second; the margin is
/// for a machine busy compiling.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown (flushing JetStream) may take before we kill the server.
const STOP_GRACE: Duration = Duration::from_secs(10);

const PROGRAM: &str = "nats-server";

/// A `nats-server` with JetStream, listening on 127.0.0.1, run as our child.
///
/// Only flags NATS 2.9 knows are used: that is what Debian ships.
#[derive(Debug)]
pub struct LocalNats {
    process: ChildProcess,
    port: u16,
    store_dir: PathBuf,
    log: PathBuf,
}

impl LocalNats {
    /// Starts `nats-server -js` with its JetStream store in `store_dir` (created if missing) on `port`,
    /// or on a free port chosen by the server when `None`, and returns once it accepts connections.
    pub async fn start(store_dir: &Path, port: Option<u16>) -> Result<Self, LocalError> {
        Self::launch(store_dir, port, None).await
    }

    /// The same, with a server configuration file: the `authorization` block that
    /// [`crate::nats_auth::AuthDir`] renders (`users.conf`), so only its users may connect, each with its
    /// permissions. The server's own file (`users.conf.server.conf`, JetStream and an `include` of it) is
    /// written beside it. [`Self::reload`] makes the server read both again.
    pub async fn start_with_config(
        store_dir: &Path,
        port: Option<u16>,
        config: &Path,
    ) -> Result<Self, LocalError> {
        let config = std::path::absolute(config).map_err(LocalError::io(format!(
            "could not resolve {}",
            config.display()
        )))?;
        Self::launch(store_dir, port, Some(&config)).await
    }

    async fn launch(
        store_dir: &Path,
        port: Option<u16>,
        config: Option<&Path>,
    ) -> Result<Self, LocalError> {
        let program = process::find_program(PROGRAM).ok_or(LocalError::MissingBinary {
            program: PROGRAM,
            debian_package: "nats-server",
        })?;
        let store_dir = std::path::absolute(store_dir).map_err(LocalError::io(format!(
            "could not resolve {}",
            store_dir.display()
        )))?;
        std::fs::create_dir_all(&store_dir).map_err(LocalError::io(format!(
            "could not create {}",
            store_dir.display()
        )))?;

        // Two servers on one JetStream store would corrupt it; a dev folder may still have one
        // running from another terminal.
        let pid_file = store_dir.join("nats-server.pid");
        check_not_running(&pid_file, &store_dir)?;

        // The server writes the port it bound (the only way to learn a `-p -1` port) to
        // `<ports_dir>/<exe>_<pid>.ports` once it listens, and removes it on a clean shutdown. Files left
        // by a killed run are removed first, in case this server gets the same pid.
        let ports_dir = store_dir.join("ports");
        clear_ports_dir(&ports_dir)?;

        let log = store_dir.join("nats-server.log");
        let mut command = Command::new(&program);
        command
            .args(["-a", "127.0.0.1"])
            .arg("-p")
            .arg(port.map_or_else(|| "-1".to_owned(), |port| port.to_string()))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-P")
            .arg(&pid_file);
        match config {
            None => {
                command.arg("-js").arg("-sd").arg(&store_dir);
            }
            // JetStream must be in the file, not in flags: a reload of a file without a `jetstream`
            // block shuts JetStream down (NATS 2.9). The file includes the users' configuration, which
            // `include` only finds by a path relative to the including file: so it sits beside it.
            Some(users) => {
                let server_config = server_config_path(users);
                let include = users
                    .file_name()
                    .and_then(|name| name.to_str())
                    .ok_or_else(|| LocalError::Io {
                        context: format!("{} has no file name", users.display()),
                        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    })?;
                let text = format!(
                    "# Written by followup (LocalNats) at each start.\n\
                     jetstream {{ store_dir: {:?} }}\ninclude {include:?}\n",
                    store_dir.display().to_string()
                );
                std::fs::write(&server_config, text).map_err(LocalError::io(format!(
                    "could not write {}",
                    server_config.display()
                )))?;
                command.arg("-c").arg(&server_config);
            }
        }
        let mut process = ChildProcess::spawn(
            PROGRAM,
            command,
            &log,
            // A throwaway server needs no goodbye; a dev store recovers from a kill like from a crash.
            OnDrop {
                signal: libc::SIGKILL,
                grace: Duration::ZERO,
            },
        )?;

        // Wait for *our* server's ports file even when the port was given: something else may already
        // listen there (the machine's own NATS on 4222), and connecting to it would look like success.
        let pid = process.pid();
        let ports_dir_ref = &ports_dir;
        let port = process
            .wait_ready(READY_TIMEOUT, move || async move {
                let port = read_ports_file(ports_dir_ref, pid)?;
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| port)
            })
            .await?;
        tracing::info!(pid, url = %format!("nats://127.0.0.1:{port}"), store = %store_dir.display(), "nats-server is ready");
        Ok(Self {
            process,
            port,
            store_dir,
            log,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's own log (stdout and stderr), rewritten at each start.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Makes the server read its configuration file again (`SIGHUP`): new users may connect once it has.
    /// The reload is asynchronous: poll for what it should allow.
    pub fn reload(&self) -> Result<(), LocalError> {
        super::process::sys::send_signal(self.pid(), libc::SIGHUP).map_err(LocalError::io(format!(
            "could not signal nats-server {} to reload",
            self.pid()
        )))
    }

    /// Stops the server: `SIGTERM` (graceful), then `SIGKILL` if it is still running after 10 s.
    pub async fn stop(mut self) -> Result<(), LocalError> {
        self.process.stop(libc::SIGTERM, STOP_GRACE).await
    }
}

/// The server configuration written beside the users' file `users`: `<users>.server.conf`.
fn server_config_path(users: &Path) -> PathBuf {
    let mut name = users.file_name().unwrap_or_default().to_os_string();
    name.push(".server.conf");
    users.with_file_name(name)
}

fn check_not_running(pid_file: &Path, store_dir: &Path) -> Result<(), LocalError> {
    let pid = match std::fs::read_to_string(pid_file) {
        Ok(text) => text.trim().parse::<u32>().ok(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(LocalError::Io {
                context: format!("could not read {}", pid_file.display()),
                source: err,
            });
        }
    };
    if let Some(pid) = pid
        && process::process_is(pid, PROGRAM, store_dir)
    {
        return Err(LocalError::AlreadyRunning {
            program: PROGRAM,
            pid,
            dir: store_dir.to_path_buf(),
        });
    }
    // Left by an earlier run (the server does not remove it): harmless, and the server rewrites it.
    Ok(())
}

fn clear_ports_dir(ports_dir: &Path) -> Result<(), LocalError> {
    let context = || format!("could not prepare {}", ports_dir.display());
    std::fs::create_dir_all(ports_dir).map_err(LocalError::io(context()))?;
    for entry in std::fs::read_dir(ports_dir).map_err(LocalError::io(context()))? {
        let path = entry.map_err(LocalError::io(context()))?.path();
        if path.extension().is_some_and(|ext| ext == "ports") {
            std::fs::remove_file(&path).map_err(LocalError::io(context()))?;
        }
    }
    Ok(())
}

/// The client port from the ports file of server `pid`, once it has been written completely.
///
/// The file is named after the server's executable and pid; we match on the pid alone, so a renamed or
/// symlinked binary works too. Its content: `{"nats":["nats://127.0.0.1:PORT"], ...}`.
fn read_ports_file(ports_dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let path = std::fs::read_dir(ports_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(&suffix))
        })?;
    // A half-written file fails to parse; the next poll reads it again.
    let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_the_right_server() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("nats-server_41.ports"),
            r#"{"nats":["nats://127.0.0.1:4333"]}"#,
        )?;
        std::fs::write(
            dir.path().join("nats-server_42.ports"),
            r#"{"nats":["nats://127.0.0.1:4444"],"monitoring":["http://127.0.0.1:8222"]}"#,
        )?;
        std::fs::write(
            dir.path().join("nats-server_43.ports"),
            r#"{"nats":["nats:"#,
        )?;
        assert_eq!(read_ports_file(dir.path(), 42), Some(4444));
        assert_eq!(read_ports_file(dir.path(), 43), None);
        assert_eq!(read_ports_file(dir.path(), 4), None);
        Ok(())
    }
}
