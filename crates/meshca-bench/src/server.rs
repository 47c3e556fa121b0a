//! A server process under measurement: started, killed when dropped, and its CPU time and peak
//! memory read from `/proc`, since the load generator shares the machine's cores with it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A child process killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server that prints `listening on ADDR` first; returns it (killed on drop), its pid
/// and the address.
///
/// # Panics
/// If it cannot be started, or exits or prints something else first.
pub fn start_listening(mut cmd: Command) -> (Guard, u32, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let pid = child.id();
    let stdout = child.stdout.take();
    let guard = Guard(child);
    let mut line = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{:?} printed {line:?}, not `listening on ADDR`", cmd))
        .to_owned();
    (guard, pid, addr)
}

/// Whether `cmd` is on the `PATH`.
pub fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A port that was free on 127.0.0.1 a moment ago.
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    #[allow(clippy::expect_used)] // loopback with port 0 always binds on a working machine
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime of a process, from /proc (zero once it is gone).
pub fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clk_tck() as f64)
}

/// Peak resident memory of a process in kB (`VmHWM`).
pub fn proc_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process in kB (`VmRSS`; zero once it is gone).
pub fn proc_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The machine's 1-minute load average (`/proc/loadavg`; zero if unreadable).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_figures_are_read() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while proc_cpu(me) == Duration::ZERO && spin.elapsed() < Duration::from_secs(2) {
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        assert!(proc_cpu(me) > Duration::ZERO);
        assert!(proc_hwm_kb(me) > 0);
        assert!(proc_rss_kb(me) > 0 && proc_rss_kb(me) <= proc_hwm_kb(me));
        assert_eq!(proc_rss_kb(u32::MAX), 0);
        assert_eq!(proc_hwm_kb(u32::MAX), 0);
    }
}
