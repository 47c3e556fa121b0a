//! A long-running process under test (`meshca serve`, `meshca agent`, `meshca trust run`, a
//! peer): its stdout lines come through a channel so a test can wait for the one announcing an
//! address, its stderr goes to a log file quoted in failure messages, and it is killed when
//! dropped, or by a watchdog when the test process dies without dropping it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kube::Watchdog;

/// A running process, killed on drop.
pub struct Process {
    name: String,
    child: Child,
    watchdog: Option<Watchdog>,
    log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `cmd` in `dir` with stdin closed, its stderr in `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, mut cmd: Command) -> Process {
        let log = dir.join(format!("{name}.log"));
        let mut child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).expect("log file is created"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let watchdog = Watchdog::arm(
            r#"kill -9 "$1" 2>/dev/null"#,
            child.id().to_string().as_ref(),
        );
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        // Drained to the end so the process never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Process {
            name: name.to_owned(),
            child,
            watchdog: Some(watchdog),
            log,
            lines,
        }
    }

    /// Starts the program `program` with `args` and `envs` in `dir`; see [`Process::start`].
    pub fn run(
        dir: &Path,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Process {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Process::start(dir, name, cmd)
    }

    /// The next stdout line holding `marker`, waited for at most `timeout`; panics with the
    /// process's log if none comes.
    pub fn line_with(&self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: no line with {marker:?} ({e}); its log:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// The first word after `marker` on the next stdout line holding it (a trailing `)` or `,`
    /// dropped), waited for at most `timeout`.
    pub fn word_after(&self, marker: &str, timeout: Duration) -> String {
        let line = self.line_with(marker, timeout);
        let (_, rest) = line.split_once(marker).expect("the line holds the marker");
        let word = rest.split_whitespace().next().unwrap_or_default();
        word.trim_end_matches([')', ',']).to_owned()
    }

    /// What the process has written to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("process status can be read")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The watchdog goes first, so it can never act on a reused pid.
        if let Some(w) = self.watchdog.take() {
            w.disarm();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test, removed first if an earlier run left it.
    fn folder(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshca-process-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn word_after_finds_the_announced_address_and_the_log_is_kept() {
        let dir = folder("echo");
        let p = Process::run(
            &dir,
            "echo",
            "sh",
            &[
                "-c",
                "echo starting; echo 'listening on 127.0.0.1:4242 (tls)'; echo oops >&2; sleep 30",
            ],
            &[],
        );
        assert_eq!(
            p.word_after("listening on ", Duration::from_secs(10)),
            "127.0.0.1:4242"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.log() != "oops\n" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.log(), "oops\n");
        drop(p);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drop_kills_the_process() {
        let dir = folder("sleeper");
        let p = Process::run(&dir, "sleeper", "sleep", &["30"], &[]);
        let pid = p.pid();
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true),
            "process {pid} still runs after drop"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
