//! `twinfiler node --config` processes: started (optionally inside a network namespace, via
//! `ip netns exec`, which execs the node so the child's pid is the node's), waited for
//! (bounded), stopped with SIGTERM, killed with SIGKILL, frozen with SIGSTOP. Dropping a
//! [`NodeProc`] kills the node; the node also dies with its parent (PR_SET_PDEATHSIG), so a
//! test that panics or is killed leaves no node behind. "Parent" is the spawning *thread*:
//! spawn from a thread that lives as long as the node (a test's or the runtime's own), never
//! from a pool thread that may exit while idle (`spawn_blocking`).

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{io_err, LabError, NodeSpec};

/// A node must exit this long after SIGTERM; then it is killed.
pub const STOP_MS_MAX: u64 = 30_000;
/// How often exit is polled.
const POLL_MS: u64 = 20;

/// A running `twinfiler node`.
pub struct NodeProc {
    /// Node name.
    pub name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    stopped: bool,
}

impl NodeProc {
    /// Starts `exe node --config CONFIG` (in namespace `netns` if given), stderr appended to
    /// the node's log; does not wait for it to serve.
    pub fn spawn(exe: &Path, spec: &NodeSpec, netns: Option<&str>) -> Result<NodeProc, LabError> {
        Self::spawn_config(exe, &spec.name, &spec.config_path, spec.log_path(), netns)
    }

    /// [`NodeProc::spawn`] of any config file: node `name`, stderr appended to `log`.
    pub fn spawn_config(
        exe: &Path,
        name: &str,
        config: &Path,
        log: PathBuf,
        netns: Option<&str>,
    ) -> Result<NodeProc, LabError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(format!("open {}", log.display())))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(["node", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("TWINFILER_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("spawn {} node", exe.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LabError::Failed("node stdout not piped".into()))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        tracing::info!(node = %name, pid = child.id(), netns, "node started");
        Ok(NodeProc {
            name: name.to_string(),
            child: Some(child),
            lines,
            log,
            stopped: false,
        })
    }

    /// Starts the node and waits (bounded) for its serving line.
    pub fn start(
        exe: &Path,
        spec: &NodeSpec,
        netns: Option<&str>,
        wait_ms: u64,
    ) -> Result<NodeProc, LabError> {
        let mut p = Self::spawn(exe, spec, netns)?;
        p.wait_serving(wait_ms)?;
        Ok(p)
    }

    /// Waits for the " serving " line on stdout and returns it (it names the ports); an
    /// exit or the bound is an error (with the log's tail).
    pub fn wait_serving(&mut self, wait_ms: u64) -> Result<String, LabError> {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(POLL_MS)) {
                Ok(line) if line.contains(" serving ") => return Ok(line),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(LabError::Failed(format!(
                        "node {} closed stdout before serving; log tail:\n{}",
                        self.name,
                        self.log_tail(40)
                    )))
                }
            }
            if let Some(st) = self.try_exit() {
                return Err(LabError::Failed(format!(
                    "node {} exited ({st}) before serving; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Failed(format!(
                    "node {} did not serve within {wait_ms} ms; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                )));
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status if it exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid (not yet reaped: we hold the Child).
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGKILL and reap (`kill -9`: no shutdown, no final CP).
    pub fn kill9(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.stopped {
                self.signal_child(&c, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal_child(&self, c: &Child, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
    }

    /// SIGSTOP: the node hangs (its sockets stay open, nothing answers).
    pub fn freeze(&mut self) {
        self.signal(libc::SIGSTOP);
        self.stopped = true;
    }

    /// SIGCONT after [`NodeProc::freeze`].
    pub fn thaw(&mut self) {
        self.signal(libc::SIGCONT);
        self.stopped = false;
    }

    /// SIGTERM, then waits (bounded) for the exit; killed past the bound.
    pub fn stop(mut self) -> Result<ExitStatus, LabError> {
        if self.stopped {
            self.thaw();
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_millis(STOP_MS_MAX);
        while Instant::now() < deadline {
            if let Some(st) = self.try_exit() {
                self.child = None;
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        self.kill_now();
        Err(LabError::Failed(format!(
            "node {} did not exit within {STOP_MS_MAX} ms of SIGTERM (killed)",
            self.name
        )))
    }

    /// The last `n` lines of the node's log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill_now();
    }
}
