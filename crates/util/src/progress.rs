//! The draw target of every escale progress bar: stderr, hidden when stderr is not a terminal
//! and, unlike indicatif's own stderr target (which checks once, at creation), hidden for good once
//! a write fails. A terminal that goes away during a long run (a closed ssh session, a hung-up tty)
//! then costs no more redraws or failed writes, and the work goes on; the run's own log files are
//! written elsewhere and are unaffected.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressDrawTarget, TermLike};

/// stderr at `hz` redraws per second, or hidden when stderr is not a terminal or `TERM` is unset
/// or `dumb` (as indicatif's `stderr_with_hz`).
pub fn stderr_target(hz: u8) -> ProgressDrawTarget {
    let term = console::Term::stderr();
    let dumb = std::env::var("TERM").map_or(true, |t| t == "dumb");
    if !term.is_term() || dumb {
        return ProgressDrawTarget::hidden();
    }
    ProgressDrawTarget::term_like_with_hz(Box::new(HiddenOnceGone::new(term)), hz)
}

/// A terminal that stops drawing after its first failed write (every later call is a no-op).
#[derive(Debug)]
pub struct HiddenOnceGone<T> {
    inner: T,
    gone: AtomicBool,
}

impl<T: TermLike> HiddenOnceGone<T> {
    pub fn new(inner: T) -> Self {
        HiddenOnceGone { inner, gone: AtomicBool::new(false) }
    }

    /// Whether a write has failed (nothing is drawn any more).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn draw(&self, op: impl FnOnce(&T) -> io::Result<()>) -> io::Result<()> {
        if self.is_gone() {
            return Ok(());
        }
        if op(&self.inner).is_err() {
            self.gone.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl<T: TermLike> TermLike for HiddenOnceGone<T> {
    fn width(&self) -> u16 {
        self.inner.width()
    }
    fn height(&self) -> u16 {
        self.inner.height()
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.draw(|t| t.move_cursor_up(n))
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.draw(|t| t.move_cursor_down(n))
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.draw(|t| t.move_cursor_right(n))
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.draw(|t| t.move_cursor_left(n))
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.draw(|t| t.write_line(s))
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.draw(|t| t.write_str(s))
    }
    fn clear_line(&self) -> io::Result<()> {
        self.draw(|t| t.clear_line())
    }
    fn flush(&self) -> io::Result<()> {
        self.draw(|t| t.flush())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use indicatif::ProgressBar;

    use super::*;

    /// A terminal that works for `alive` writes, then fails like a hung-up tty; counts every call.
    #[derive(Debug)]
    struct DyingTerm {
        alive: usize,
        calls: Arc<AtomicUsize>,
    }

    impl DyingTerm {
        fn call(&self) -> io::Result<()> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.alive {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
    }

    impl TermLike for DyingTerm {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            self.call()
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            self.call()
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            self.call()
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            self.call()
        }
        fn write_line(&self, _: &str) -> io::Result<()> {
            self.call()
        }
        fn write_str(&self, _: &str) -> io::Result<()> {
            self.call()
        }
        fn clear_line(&self) -> io::Result<()> {
            self.call()
        }
        fn flush(&self) -> io::Result<()> {
            self.call()
        }
    }

    #[test]
    fn a_bar_stops_drawing_once_its_terminal_is_gone_and_keeps_counting() {
        let calls = Arc::new(AtomicUsize::new(0));
        let term = HiddenOnceGone::new(DyingTerm { alive: 3, calls: calls.clone() });
        // Redraw on every update (a rate high enough that no update is skipped in a test).
        let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::term_like(Box::new(term)));
        bar.set_position(1);
        for _ in 0..100 {
            bar.inc(1);
            bar.tick();
        }
        let after_failure = calls.load(Ordering::SeqCst);
        assert!(after_failure <= 4, "{after_failure} terminal calls: drawing went on after the first failed write");
        bar.inc(5);
        assert_eq!(bar.position(), 106, "the work is still counted");
        bar.finish();
        assert_eq!(calls.load(Ordering::SeqCst), after_failure);
    }

    #[test]
    fn a_bar_on_a_working_terminal_draws() {
        let calls = Arc::new(AtomicUsize::new(0));
        let term = HiddenOnceGone::new(DyingTerm { alive: usize::MAX, calls: calls.clone() });
        let bar = ProgressBar::with_draw_target(Some(10), ProgressDrawTarget::term_like(Box::new(term)));
        for _ in 0..10 {
            bar.inc(1);
            bar.tick();
        }
        assert!(calls.load(Ordering::SeqCst) >= 10, "{}", calls.load(Ordering::SeqCst));
    }
}
