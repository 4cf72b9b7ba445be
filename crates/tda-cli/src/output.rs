//! Shared presentation helpers: JSON to stdout, progress bars.

use indicatif::{ProgressBar, ProgressStyle};

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A progress bar on stderr for `len` steps; hidden when stderr is not a terminal.
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// A bar for training steps (its length set by the first step, see [`on_step`]).
pub fn step_bar() -> ProgressBar {
    bar(0, "{spinner} train [{bar:30}] {pos}/{len} {msg} ({eta})")
}

/// Shows one training step on a [`step_bar`].
pub fn on_step(pb: &ProgressBar, s: &tda_train::StepInfo) {
    pb.set_length(s.steps as u64);
    pb.set_position(s.step as u64);
    pb.set_message(format!(
        "loss {:.3} lr {:.2e} {:.0} tok/s",
        s.loss, s.lr, s.tokens_per_s
    ));
}

/// Fails before any work when an output cannot be written at `path` (see `tda_io::check_writable`),
/// so a long job never ends by losing its result.
pub fn check_out(path: &std::path::Path, what: tda_io::Output) -> anyhow::Result<()> {
    tda_io::check_writable(path, what).map_err(anyhow::Error::from)
}
