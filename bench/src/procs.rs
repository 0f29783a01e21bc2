//! Every process the bench starts: each in its own process group, its output
//! in a log file, and stopped (the whole group: nginx's workers, the
//! loadgen's workers) when its handle is dropped — on success, on failure,
//! and when Ctrl-C drops the whole run.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    stopped: bool,
    /// The first signal of `stop` (SIGTERM unless set).
    pub stop_signal: libc::c_int,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr in `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone().context("cannot clone a log handle")?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            stopped: false,
            stop_signal: libc::SIGTERM,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exited already? (Then it did not start properly, for a server.)
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The log's last lines, for error messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits (asynchronously) for the process to exit, at most `within`.
    pub async fn wait(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().context("wait failed")? {
                self.stopped = true;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {within:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `stop_signal` to the group, up to 3 s of grace, then SIGKILL to the
    /// group.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls on a process group we created.
        unsafe { libc::killpg(group, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                // The leader is gone; its group (nginx workers) may not be.
                unsafe { libc::killpg(group, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::killpg(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port on 127.0.0.1 (bound and released; good enough on a machine
/// where nothing else races for it within milliseconds).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    l.local_addr().context("no local address")
}

/// Waits until `addr` accepts TCP, and fails early if `proc` exits.
pub async fn wait_listening(
    proc: &mut Proc,
    addr: SocketAddr,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "{} exited ({status}) before listening on {addr}:\n{}",
                proc.name,
                proc.tail()
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} does not listen on {addr} after {within:?}:\n{}",
                proc.name,
                proc.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tiny blocking HTTP GET for admin endpoints: (status, body). Reads by
/// Content-Length (an admin server may keep the connection open anyway).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if len.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
        let n = s
            .read(&mut chunk)
            .with_context(|| format!("reading {path} from {addr}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(buf.len() < 16 << 20, "{path} answer too large");
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// User + system CPU seconds of `pid` so far (`None` once it is gone).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// User and system CPU seconds of `pid` so far, apart (`None` once it is
/// gone): where a process's time goes, its own code or the kernel's.
/// The command name in /proc/PID/stat may hold spaces, so the fields are
/// counted after its last ')': utime and stime are the 12th and 13th.
pub fn cpu_times(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the C library.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((user as f64 / hz, system as f64 / hz))
}

/// The pids of `pid`'s children (nginx's workers, HAProxy's none).
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Output of a short command, trimmed ("" when it cannot run).
pub fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_owned()
        })
        .unwrap_or_default()
}
