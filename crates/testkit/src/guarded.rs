//! A server process behind a guard shell: the shell starts the server,
//! prints its pid and waits on its stdin; when the holder (or the whole test
//! process) goes away, the stdin closes and the shell kills the server, so a
//! crashed test leaves no server behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// The guard: runs `"$1"` with the remaining arguments.
const GUARD: &str = "prog=\"$1\"; shift; \"$prog\" \"$@\" & pid=$!; echo $pid; read _unused; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null";

/// A running server and its guard shell.
#[derive(Debug)]
pub(crate) struct Guarded {
    guard: Child,
    /// Held open so that the guard keeps the server alive; dropping it stops both.
    stdin: Option<ChildStdin>,
    /// The server's pid.
    pub(crate) pid: u32,
}

impl Guarded {
    /// Starts `program` with `args` behind a guard shell.
    pub(crate) fn spawn(program: &str, args: &[String]) -> Result<Guarded, String> {
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn sh for {program}: {e}"))?;
        let stdout = guard.stdout.take().ok_or("no stdout of the guard")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("read {program} pid: {e}"))?;
        let pid: u32 = line
            .trim()
            .parse()
            .map_err(|_| format!("the guard printed no pid: {line:?}"))?;
        let stdin = guard.stdin.take();
        Ok(Guarded { guard, stdin, pid })
    }

    /// Kills the server and waits until it is gone, so that a restart on the
    /// same port (or store) does not race the dying process.
    pub(crate) fn kill(mut self) {
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            let _ = kill_process(pid, Signal::KILL);
            // A stopped process must be continued to die promptly of SIGKILL
            // on some kernels; it is harmless otherwise.
            let _ = kill_process(pid, Signal::CONT);
        }
        drop(self.stdin.take());
        let _ = self.guard.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while crate::stack::process_alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
