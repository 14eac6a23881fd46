//! Test child processes (the crate's own `larder-*-writer` binaries):
//! started with their `--name value` arguments, read line by line.
//!
//! Why here: the crash tests of write-back boards and sets start the same
//! writer binary the same way and wait for the same `ready` line.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Starts the binary at `path` with `args`, waits for its `ready` line,
/// and returns it with the rest of its stdout, line by line.
///
/// # Panics
///
/// If it cannot start or its first line is not `ready`.
pub fn spawn_ready(path: &str, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {path}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("line");
    assert_eq!(ready, "ready", "the first line of {path}");
    (child, lines)
}
