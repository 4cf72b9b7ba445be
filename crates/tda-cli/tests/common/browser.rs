//! Headless chromium for the HTML pages' tests: a screenshot of a page (with a `#fragment`) and
//! pixel counts of a colour. Without chromium a screenshot is skipped (returns false), except in
//! CI (`CI` set), where `.ci/run` installs it and it must run.

use std::path::Path;
use std::process::Command;

/// Pixels of `png` within 6 of `rgb` on every channel.
pub fn count_color(png: &Path, rgb: [u8; 3]) -> usize {
    count_pixels(png, |p| (0..3).all(|c| p[c].abs_diff(rgb[c]) <= 6))
}

/// Pixels of `png` (their `[r, g, b]`) for which `keep` holds.
pub fn count_pixels(png: &Path, keep: impl Fn([u8; 3]) -> bool) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| keep([p[0], p[1], p[2]]))
        .count()
}

pub fn screenshot(html: &Path, fragment: &str, out: &Path) -> bool {
    screenshot_sized(html, fragment, out, (1000, 800))
}

/// [`screenshot`] with a window of `size` (width, height) pixels.
pub fn screenshot_sized(html: &Path, fragment: &str, out: &Path, size: (u32, u32)) -> bool {
    let Ok(status) = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            &format!("--window-size={},{}", size.0, size.1),
            &format!("--screenshot={}", out.display()),
            &format!("file://{}{fragment}", html.display()),
        ])
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is needed in CI (.ci/run installs it)"
        );
        eprintln!("chromium not found: the screenshot check is skipped");
        return false;
    };
    assert!(
        status.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    true
}
