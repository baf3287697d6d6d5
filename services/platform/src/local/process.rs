//! Finding, spawning, watching and stopping the servers' processes.

use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::LocalError;

/// How often we look at a starting or stopping process. Short, because every test pays it.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Directories searched after `PATH`: Debian installs daemons such as `nats-server` in `/usr/sbin`,
/// which an ordinary user's `PATH` often lacks, and hand-installed binaries land in `/usr/local/bin`.
const EXTRA_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The first executable called `name` on `PATH` or in [`EXTRA_DIRS`].
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether `pid` is a live process whose command name is `comm` and whose command line has `arg`.
///
/// Used to tell a server left running by an earlier run from a stale pid file whose pid now belongs to
/// something else: in a container pids are handed out in the same order every boot, so reuse is common.
/// Without procfs (not Linux), all we can say is whether the pid is taken.
pub(crate) fn process_is(pid: u32, comm: &str, arg: &Path) -> bool {
    if !Path::new("/proc/self").exists() {
        return sys::pid_exists(pid);
    }
    let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return false;
    };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    name.trim_end() == comm
        && !is_zombie(pid)
        && cmdline
            .split(|byte| *byte == 0)
            .any(|word| word == arg.as_os_str().as_bytes())
}

/// The live processes called `comm` whose working directory is `dir`; `None` without procfs.
///
/// Every PostgreSQL process (postmaster and backends) works in its data directory, so this finds what
/// is left of a cluster even when its postmaster is gone. Processes we may not inspect are skipped: when
/// we are not root, the cluster runs as us.
pub(crate) fn processes_in(dir: &Path, comm: &str) -> Option<Vec<u32>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let dir = std::fs::canonicalize(dir).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|name| name.trim_end() == comm)
                    && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                    && !is_zombie(*pid)
            })
            .collect(),
    )
}

fn is_zombie(pid: u32) -> bool {
    // The state is the first field after the command name, which is in parentheses and may contain
    // spaces or parentheses itself, hence the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// The last lines of a server's log, for an error message.
pub(crate) fn log_tail(path: &Path) -> String {
    const MAX_BYTES: u64 = 4096;
    const MAX_LINES: usize = 25;
    let read = || -> io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(MAX_LINES)..].join("\n")
        }
        Err(err) => format!("(could not read the log: {err})"),
    }
}

/// Spawns `command` so that the child is killed when this process dies, however it dies.
fn spawn_child(command: Command) -> io::Result<Child> {
    struct Request {
        command: Command,
        reply: mpsc::SyncSender<io::Result<Child>>,
    }

    // PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. Callers run
    // on threads that come and go (each libtest test has its own; tokio's blocking pool retires idle
    // threads), so every fork happens on this one thread, which lives until the process exits: the
    // sender is never dropped, so its loop never ends.
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("followup-local-spawner".into())
            .spawn(move || {
                for Request { mut command, reply } in requests {
                    sys::die_with_parent(&mut command);
                    // The requester may have given up waiting; the child is then dropped unwaited,
                    // but it still dies with us.
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| sender)
    });
    let spawner = spawner
        .as_ref()
        .ok_or_else(|| io::Error::other("could not start the thread that spawns local servers"))?;
    let (reply, response) = mpsc::sync_channel(1);
    spawner
        .send(Request { command, reply })
        .map_err(|_| io::Error::other("the thread that spawns local servers has stopped"))?;
    // A fork and exec: milliseconds, like the spawn of any process from async code.
    response
        .recv()
        .map_err(|_| io::Error::other("the thread that spawns local servers has stopped"))?
}

/// Runs a short-lived command (`initdb`) to completion and returns its output.
pub(crate) async fn run_to_completion(
    program: &'static str,
    mut command: Command,
) -> Result<Output, LocalError> {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child =
        spawn_child(command).map_err(LocalError::io(format!("could not start {program}")))?;
    // `wait_with_output` drains both pipes while waiting, so a chatty child cannot fill one and stall.
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .map_err(|err| LocalError::Io {
            context: format!("waiting for {program}"),
            source: io::Error::other(err),
        })?
        .map_err(LocalError::io(format!("waiting for {program}")))
}

/// What dropping a still-running [`ChildProcess`] does: send `signal`, allow `grace` for the process
/// to exit on its own, then `SIGKILL`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OnDrop {
    pub signal: libc::c_int,
    pub grace: Duration,
}

/// A long-running server process we own: stopped with [`ChildProcess::stop`], or killed and reaped
/// synchronously when dropped.
///
/// The handle is a `std::process::Child` polled with `try_wait`, not a tokio one: it must keep working
/// when it outlives the runtime that started it (a server shared by the tests of one binary, each of
/// which runs its own runtime), and `Drop` must be able to reap it without one. Once reaped, `Child`
/// remembers the exit status and never signals the pid again, which by then may belong to another
/// process; we only signal the pid ourselves after `try_wait` has said the child is not yet reaped.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    program: &'static str,
    pid: u32,
    child: Child,
    log: PathBuf,
    on_drop: OnDrop,
}

impl ChildProcess {
    /// Spawns a server with its stdout and stderr written to `log` (truncated first), in its own
    /// process group (so a Ctrl-C in the terminal reaches only us, and we decide the order of
    /// shutdown), killed if we die.
    pub(crate) fn spawn(
        program: &'static str,
        mut command: Command,
        log: &Path,
        on_drop: OnDrop,
    ) -> Result<Self, LocalError> {
        let log_file = std::fs::File::create(log).map_err(LocalError::io(format!(
            "could not create {}",
            log.display()
        )))?;
        let log_err = log_file
            .try_clone()
            .map_err(LocalError::io(format!("could not open {}", log.display())))?;
        command
            .stdin(std::process::Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        tracing::debug!(?command, "starting {program}");
        let child =
            spawn_child(command).map_err(LocalError::io(format!("could not start {program}")))?;
        Ok(Self {
            program,
            pid: child.id(),
            child,
            log: log.to_path_buf(),
            on_drop,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps the process if it has exited: `Some(status)` once it has (now or earlier).
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, LocalError> {
        self.child.try_wait().map_err(LocalError::io(format!(
            "could not check on {} (pid {})",
            self.program, self.pid
        )))
    }

    /// Polls `probe` until it yields a value, failing early if the process exits and after `timeout`.
    /// Either failure carries the end of the process's log, which is where the reason is.
    pub(crate) async fn wait_ready<T, F, Fut>(
        &mut self,
        timeout: Duration,
        mut probe: F,
    ) -> Result<T, LocalError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Err(LocalError::ExitedEarly {
                    program: self.program,
                    status,
                    log: self.log.clone(),
                    log_tail: log_tail(&self.log),
                });
            }
            if let Some(ready) = probe().await {
                return Ok(ready);
            }
            if Instant::now() >= deadline {
                return Err(LocalError::NotReady {
                    program: self.program,
                    timeout,
                    log: self.log.clone(),
                    log_tail: log_tail(&self.log),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends `signal`, waits up to `grace` for the process to exit, then kills it; returns once it is
    /// reaped.
    ///
    /// Takes `&mut self` rather than `self` so that if this future is dropped half-way, the process is
    /// still owned by `self` and its `Drop` finishes the job.
    pub(crate) async fn stop(
        &mut self,
        signal: libc::c_int,
        grace: Duration,
    ) -> Result<(), LocalError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        sys::send_signal(self.pid, signal).map_err(LocalError::io(format!(
            "could not signal {} (pid {})",
            self.program, self.pid
        )))?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                tracing::debug!(%status, pid = self.pid, "{} stopped", self.program);
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        tracing::warn!(
            pid = self.pid,
            "{} did not stop within {grace:?}; killing it",
            self.program
        );
        self.child.kill().map_err(LocalError::io(format!(
            "could not kill {} (pid {})",
            self.program, self.pid
        )))?;
        while self.try_wait()?.is_none() {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // Blocking here is deliberate: a drop that returned before the process was gone would let a
        // test (or `followup dev`) exit with a server still running.
        if self.on_drop.signal != libc::SIGKILL
            && sys::send_signal(self.pid, self.on_drop.signal).is_ok()
        {
            let deadline = Instant::now() + self.on_drop.grace;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        tracing::debug!(pid = self.pid, "killing {}", self.program);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our uid, and the few other libc calls that need `unsafe`, each wrapped in a safe function.
pub(crate) mod sys {
    // The lints deny `unsafe_code`; std has no safe way to send a signal, look up a user, read our
    // uid, or ask the kernel to kill a child when its parent dies. Each call is explained where made.
    #![allow(unsafe_code)]

    use std::ffi::CString;
    use std::io;
    use std::process::Command;

    /// A uid and primary gid from the user database.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) struct User {
        pub name: String,
        pub uid: u32,
        pub gid: u32,
    }

    pub(crate) fn current_uid() -> u32 {
        // SAFETY: getuid takes no arguments, touches no memory of ours and cannot fail.
        unsafe { libc::getuid() }
    }

    /// A pid that addresses exactly one process: `kill` reads 0 and negative numbers as process
    /// groups (-1 being every process we may signal), which must never happen by accident.
    fn single_pid(pid: u32) -> io::Result<libc::pid_t> {
        libc::pid_t::try_from(pid)
            .ok()
            .filter(|pid| *pid > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))
    }

    pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
        let pid = single_pid(pid)?;
        // SAFETY: kill only passes two integers to the kernel; `pid` is positive (see single_pid).
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(crate) fn pid_exists(pid: u32) -> bool {
        let Ok(pid) = single_pid(pid) else {
            return false;
        };
        // SAFETY: as in send_signal; signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        alive || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }

    /// Looks `name` up in the user database (`/etc/passwd`, or NSS), thread-safely.
    pub(crate) fn lookup_user(name: &str) -> io::Result<Option<User>> {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
        let mut buf_len = 1024;
        loop {
            let mut buf: Vec<libc::c_char> = vec![0; buf_len];
            let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call: a NUL-terminated name, space for one
            // passwd entry, and a buffer of the length we pass, which the entry's strings point into
            // (we copy out only the integers, so nothing outlives `buf`).
            let rc = unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    entry.as_mut_ptr(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            };
            match rc {
                0 if result.is_null() => return Ok(None),
                0 => {
                    // SAFETY: a zero return with a non-null result means `entry` was filled in.
                    let entry = unsafe { entry.assume_init() };
                    return Ok(Some(User {
                        name: name.to_owned(),
                        uid: entry.pw_uid,
                        gid: entry.pw_gid,
                    }));
                }
                libc::ERANGE if buf_len < 1 << 20 => buf_len *= 4,
                // POSIX lets these mean "no such user".
                libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
                errno => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }

    /// Has the kernel send `SIGKILL` to the child when the thread that spawns it ends (see
    /// `spawn_child`, which spawns from a thread that lives as long as the process), so a parent killed
    /// with `kill -9` leaves no server behind. std runs `pre_exec` hooks after switching to the
    /// command's uid/gid, which matters: changing credentials clears the setting.
    #[cfg(target_os = "linux")]
    pub(crate) fn die_with_parent(command: &mut Command) {
        use std::os::unix::process::CommandExt;

        let parent = libc::pid_t::try_from(std::process::id()).ok();
        let hook = move || -> io::Result<()> {
            // SAFETY: prctl with PR_SET_PDEATHSIG takes integers only and is a plain system call,
            // safe between fork and exec.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // If we died between fork and prctl, the child has already been handed to another
            // parent and will never get the signal: give up instead of starting an orphan.
            // SAFETY: getppid takes no arguments and cannot fail.
            if parent.is_some_and(|parent| unsafe { libc::getppid() } != parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: the hook runs in the forked child, where only async-signal-safe work is allowed:
        // it makes two system calls and builds io::Errors from raw codes, which neither allocates
        // nor takes locks.
        unsafe {
            command.pre_exec(hook);
        }
    }

    /// Elsewhere there is no parent-death signal; `Drop` and `stop` still clean up.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn die_with_parent(_command: &mut Command) {}
}

/// Formats a command's output for an error message.
pub(crate) fn describe_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout.trim());
    }
    text
}
