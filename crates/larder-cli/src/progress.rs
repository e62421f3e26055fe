//! Progress bars for long work (seeding, view builds, rebuild, verify,
//! bench). Drawn on stderr only when it is a terminal, so scripts and
//! tests see clean output.

/// A bar of `total` steps labelled `what` (set the length later when the
/// total is not known yet).
pub fn bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}
