//! What the test child processes (`larder-writer`, `larder-board-writer`)
//! share: their `--name value` arguments and their line protocol on stdout.

use std::io::Write;

/// The value of `--<name>`.
pub(crate) fn arg(name: &str) -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        if k == format!("--{name}") {
            return args.next().ok_or(format!("--{name} needs a value"));
        }
    }
    Err(format!("missing --{name}"))
}

/// Prints `line` and flushes it at once (the test reads line by line).
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the test is gone; nothing to report to.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
