//! A server binary started as an operator starts it, and stopped the way systemd stops it.
//! Both servers print one line on stdout once they listen (after their SIGTERM handler is in
//! place), so that first line is the readiness signal.

use std::io::{self, BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// A started server and the first line it printed (e.g. `listening on http://127.0.0.1:40123`).
pub struct Started {
    pub child: Child,
    pub line: String,
}

/// Spawns `cmd` with stdout piped (stderr as `cmd` set it) and returns once it printed its
/// first line.
pub fn start(cmd: &mut Command) -> io::Result<Started> {
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    let out = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("stdout not piped"))?;
    BufReader::new(out).read_line(&mut line)?;
    Ok(Started { child, line })
}

/// Sends SIGTERM (with the `kill` utility: the workspace has no libc binding) and waits for the
/// exit; `Output::stderr` holds what the server logged if its stderr was piped. A server that
/// already exited (it failed to start) is only waited for: its status says what happened.
pub fn stop(child: Child) -> io::Result<Output> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait_with_output()
}
