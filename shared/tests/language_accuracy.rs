//! Accuracy of `shared::language::detect` on a labelled sample of realistic tenant SMS.
//!
//! `tests/data/language_sample.tsv` holds one `label<TAB>text` per line, label `en`, `es`, `pt`
//! or `none`; blank lines and lines starting with `#` are skipped. A language label is correct
//! when `detect` returns that language (any confidence). A `none` label (text with no language
//! evidence: "ok", "👍", "123", a link) is correct when `detect` returns `None` or a confidence
//! below 0.5, because callers treat such weak guesses as no information (`merge` never lets them
//! overwrite a stronger stored language).
//!
//! Two further sets were written by someone other than the detector's author and never used to
//! tune it (`language_unseen_a.tsv`, 304 lines; `language_unseen_b.tsv`, 90 lines): they are the
//! fair measure of accuracy on messages the word list was not shaped by.
//!
//! Run with `-- --nocapture` to see the figures and every misclassified line.

use shared::language::{Language, detect};

const SAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/language_sample.tsv"
));
const UNSEEN_A: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/language_unseen_a.tsv"
));
const UNSEEN_B: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/language_unseen_b.tsv"
));
const MIN_ACCURACY: f64 = 0.97;
const NONE_MAX_CONFIDENCE: f32 = 0.5;

#[test]
fn accuracy_on_labelled_sample() {
    check("language sample", SAMPLE, 300);
}

#[test]
fn accuracy_on_unseen_sample_a() {
    check("unseen sample a", UNSEEN_A, 300);
}

#[test]
fn accuracy_on_unseen_sample_b() {
    check("unseen sample b", UNSEEN_B, 90);
}

fn check(name: &str, data: &str, min_lines: usize) {
    let labels = ["en", "es", "pt", "none"];
    let mut total = [0usize; 4];
    let mut correct = [0usize; 4];
    let mut short = 0usize;
    let mut misses = Vec::new();

    for (n, line) in data.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (label, text) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("line {}: expected label<TAB>text", n + 1));
        let index = labels
            .iter()
            .position(|l| *l == label)
            .unwrap_or_else(|| panic!("line {}: unknown label {label:?}", n + 1));
        let words = text.split_whitespace().count();
        if (1..=2).contains(&words) {
            short += 1;
        }

        let detection = detect(text);
        let ok = match (Language::from_code(label), detection) {
            (Some(expected), Some(d)) => d.language == expected,
            (Some(_), None) => false,
            (None, None) => true,
            (None, Some(d)) => d.confidence < NONE_MAX_CONFIDENCE,
        };
        total[index] += 1;
        if ok {
            correct[index] += 1;
        } else {
            let got = detection.map_or_else(
                || "None".to_owned(),
                |d| format!("{} {:.2}", d.language.code(), d.confidence),
            );
            misses.push(format!(
                "  line {:>3}  {label:<4} -> {got:<9} {text:?}",
                n + 1
            ));
        }
    }

    let lines: usize = total.iter().sum();
    let hits: usize = correct.iter().sum();
    let accuracy = hits as f64 / lines as f64;
    println!(
        "{name}: {lines} lines, {short} of 1-2 words ({:.1}%)",
        100.0 * short as f64 / lines as f64
    );
    println!(
        "{name}: overall accuracy {hits}/{lines} = {:.2}%",
        100.0 * accuracy
    );
    for (i, label) in labels.iter().enumerate() {
        if total[i] > 0 {
            println!(
                "  {label:<4} {:>3}/{:<3} = {:.2}%",
                correct[i],
                total[i],
                100.0 * correct[i] as f64 / total[i] as f64
            );
        }
    }
    println!("misclassified ({}):", misses.len());
    for miss in &misses {
        println!("{miss}");
    }

    assert!(lines >= min_lines, "{name} too small: {lines} lines");
    assert!(
        accuracy >= MIN_ACCURACY,
        "{name}: accuracy {:.2}% below {:.0}%",
        100.0 * accuracy,
        100.0 * MIN_ACCURACY
    );
}
