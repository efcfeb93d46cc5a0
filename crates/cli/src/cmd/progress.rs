//! Progress bars shared by the streaming surgery commands.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting bytes written, with rate and ETA; hidden with `--quiet`.
/// The caller sets its length once the plan knows the output size.
pub fn bytes_bar(label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let template =
        format!("{{spinner}} {label} [{{bar:40}}] {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} eta {{eta}}");
    let bar = ProgressBar::with_draw_target(Some(0), escale_util::progress::stderr_target(20));
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    bar
}
