//! Shared presentation helpers: JSON to stdout, progress bars, and the trace output (`tda trace`, `tda merge`).

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

/// Writes `parquet` if given, prints the output as JSON or as a ranking, and the timing line
/// (`tda trace` and `tda merge`).
pub fn print_output(
    out: &tda_trace::TraceOutput,
    parquet: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    {
        eprintln!("corpus {}", out.report.corpus);
        let least = out
            .report
            .query_rank_kept
            .iter()
            .min_by(|x, y| x.min.total_cmp(&y.min));
        if let Some(k) = least {
            eprintln!(
                "query rank {}: the stored queries keep ≥ {:.4} of ‖P_q‖² in every layer (least: {}, mean there {:.4})",
                out.rank, k.min, k.layer, k.mean
            );
        }
        if let Some(p) = parquet {
            tda_trace::write_parquet(out, p)?;
            eprintln!("wrote {}", p.display());
        }
        if json {
            return print_json(out);
        }
        for q in &out.queries {
            println!(
                "query {}: {:?} → {:?} ({:?} = {:.4})",
                q.id, q.prompt, q.completion, out.measurement, q.value
            );
            for r in &q.results {
                let place = match r.windows {
                    Some(n) if n > 1 => format!(
                        "{} ({n} windows, best #{} {:+.3e})",
                        r.doc_id,
                        r.window,
                        r.best_window_score.unwrap_or(f64::NAN)
                    ),
                    Some(_) => r.doc_id.clone(),
                    None => format!("{}#{}", r.doc_id, r.window),
                };
                println!(
                    "  {:>3}. {:+.4e}  {place}  {}",
                    r.rank,
                    r.score,
                    r.text.chars().take(100).collect::<String>()
                );
                if let Some(l) = &r.per_layer {
                    for s in l {
                        println!("         {:+.3e}  {}", s.score, s.layer);
                    }
                }
                if let Some(t) = &r.per_token {
                    let best = t
                        .iter()
                        .max_by(|x, y| x.score.abs().total_cmp(&y.score.abs()));
                    if let Some(b) = best {
                        println!("         strongest token {:?} ({:+.3e})", b.token, b.score);
                    }
                }
            }
        }
        eprintln!(
            "{} candidates ({} tokens) × {} queries in {:.1}s: {:.0} candidate tokens/s (forward+backward {:.1}s, copies {:.1}s, contractions {:.1}s)",
            out.report.candidates, out.report.candidate_tokens, out.report.queries, out.report.total_s,
            out.report.candidate_tokens_per_s, out.report.model_s, out.report.copy_s, out.report.contraction_s
        );
        Ok(())
    }
}
