//! Printing that never stops work. A closed stdout or stderr (a dying `tee`, `| head -1`, a
//! closed ssh session) must not end a day-long run: `println!` would panic with "failed printing
//! to stderr: Broken pipe" (exit 101) before the next checkpoint. Every line the CLI prints goes
//! through `out!` or `err!`, which drop what cannot be written; the
//! run's own files (train_log.jsonl, reports) still get everything.

use std::fmt;
use std::io::Write;

/// Writes one line to `w` and drops any error: output that goes nowhere is not a failure.
pub fn write_line(mut w: impl Write, args: fmt::Arguments) {
    // One write_fmt call so the line stays whole when stdout and stderr share a pipe.
    let _ = w.write_fmt(format_args!("{args}\n"));
}

/// Writes `text` as is (no newline added) to `w`, dropping any error.
pub fn write_text(mut w: impl Write, text: &str) {
    let _ = w.write_all(text.as_bytes());
}

/// `println!` that ignores a closed stdout.
macro_rules! out {
    () => { $crate::out::write_line(std::io::stdout().lock(), format_args!("")) };
    ($($arg:tt)*) => { $crate::out::write_line(std::io::stdout().lock(), format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! err {
    () => { $crate::out::write_line(std::io::stderr().lock(), format_args!("")) };
    ($($arg:tt)*) => { $crate::out::write_line(std::io::stderr().lock(), format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use std::io;

    /// A writer whose reader has gone away, like a pipe after `head` exits.
    struct ClosedPipe;
    impl io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_pipe_is_ignored() {
        super::write_line(ClosedPipe, format_args!("step {}", 1));
        super::write_text(ClosedPipe, "summary\n");
    }

    #[test]
    fn lines_end_in_a_newline() {
        let mut buf = Vec::new();
        super::write_line(&mut buf, format_args!("a {}", 2));
        assert_eq!(buf, b"a 2\n");
    }
}
