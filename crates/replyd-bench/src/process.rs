//! A replyd (or a baseline server) in a process of its own, for scenarios
//! that measure a server's own memory and CPU: started from this binary (or
//! another build), its address read from its log, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Raises RLIMIT_NOFILE as far as allowed: as root to the kernel's
/// `nr_open`, else to the hard limit. Children inherit it. Returns the
/// soft limit in force.
pub(crate) fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = nr_open.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A server in its own process, killed when dropped.
pub(crate) struct Process {
    pub(crate) child: std::process::Child,
    pub(crate) addr: SocketAddr,
    /// Its last log lines, for an error message.
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts this binary with `args` and waits for the line announcing
    /// `http://ADDR` after `marker` on stderr.
    pub(crate) async fn spawn(args: &[&str], marker: &'static str) -> anyhow::Result<Process> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        Process::spawn_exe(&exe, args, marker).await
    }

    /// As `spawn`, running the binary `exe` (another build of replyd).
    pub(crate) async fn spawn_exe(
        exe: &Path,
        args: &[&str],
        marker: &'static str,
    ) -> anyhow::Result<Process> {
        Process::launch(Command::new(exe), args, marker).await
    }

    /// As `spawn`, on the CPUs `cpus` (a `taskset -c` list) only.
    pub(crate) async fn spawn_pinned(
        cpus: &str,
        args: &[&str],
        marker: &'static str,
    ) -> anyhow::Result<Process> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpus).arg(exe);
        Process::launch(cmd, args, marker).await
    }

    async fn launch(
        mut cmd: Command,
        args: &[&str],
        marker: &'static str,
    ) -> anyhow::Result<Process> {
        for var in [
            "REPLYD_CONFIG",
            "REPLYD_LISTEN",
            "REPLYD_DB",
            "REPLYD_DATABASE_URL",
            "REPLYD_INSECURE",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "warn,replyd_server=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start a server process")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        {
            let log = log.clone();
            // Reads the address, then keeps draining (a full pipe would
            // block the server); warnings are shown.
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(at) = line.find(marker) {
                        let rest = &line[at + marker.len()..];
                        let addr: String = rest
                            .trim_start_matches("http://")
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || ".:".contains(*c))
                            .collect();
                        if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse()) {
                            let _ = tx.send(addr);
                        }
                    } else if line.contains("WARN") || line.contains("ERROR") {
                        eprintln!("  [server] {line}");
                    }
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.push(line);
                    if log.len() > 50 {
                        log.remove(0);
                    }
                }
            });
        }
        let got =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await?;
        let mut process = Process {
            child,
            addr: "127.0.0.1:0".parse()?,
            log,
        };
        match got {
            Ok(addr) => process.addr = addr,
            Err(_) => bail!(
                "the server did not announce its address within 30 s (exit: {:?}); its log:\n{}",
                process.child.try_wait(),
                process.log_text()
            ),
        }
        Ok(process)
    }

    pub(crate) fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The CPU it uses over `span`, in cores (1.0: one core all along).
    pub(crate) async fn cpu_over(&self, span: Duration) -> anyhow::Result<f64> {
        Pid(self.child.id()).cpu_over(span).await
    }

    /// The descriptors it has open.
    pub(crate) fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
    }

    /// Resident set size, in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        Pid(self.child.id()).rss_kib()
    }

    /// RSS after the process has been left alone for a second.
    pub(crate) async fn settled_rss(&self) -> anyhow::Result<u64> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.rss_kib()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Any process of this machine, by id: what it uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pid(pub(crate) u32);

impl Pid {
    /// The CPU it uses over `span`, in cores (1.0: one core all along).
    pub(crate) async fn cpu_over(self, span: Duration) -> anyhow::Result<f64> {
        let ticks = || -> anyhow::Result<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0))?;
            // After the command's parenthesised name: utime and stime are
            // the 12th and 13th fields.
            let rest = stat.rsplit_once(')').context("no ) in /proc/PID/stat")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Ok(f.get(11).context("utime")?.parse::<u64>()?
                + f.get(12).context("stime")?.parse::<u64>()?)
        };
        let (t0, at) = (ticks()?, Instant::now());
        tokio::time::sleep(span).await;
        let used = (ticks()? - t0) as f64 / 100.0;
        Ok(used / at.elapsed().as_secs_f64())
    }

    /// Resident set size, in KiB.
    pub(crate) fn rss_kib(self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }
}
