//! Opt-out and opt-in detection measured on a labelled set of messages in English, Spanish and
//! Portuguese (`data/optout_labelled.tsv`: keywords, revocation phrases, and ordinary replies that
//! look like them). Prints precision and recall per class.

use shared::optout::{self, OptChange};

#[test]
fn precision_and_recall_on_the_labelled_set() {
    let table = include_str!("data/optout_labelled.tsv");
    // (true positives, false positives, false negatives) per class.
    let mut counts = [(0, 0, 0); 2];
    let mut mistakes = Vec::new();
    let mut rows = 0;
    for line in table.lines().skip(1) {
        let (text, label) = line.split_once('\t').expect("text<TAB>label");
        let text: String = serde_json::from_str(text).expect("a JSON string");
        let want = match label {
            "opt_out" => Some(OptChange::OptOut),
            "opt_in" => Some(OptChange::OptIn),
            "none" => None,
            other => panic!("unknown label {other}"),
        };
        let got = optout::detect(&text).map(|d| d.change);
        for (i, class) in [OptChange::OptOut, OptChange::OptIn]
            .into_iter()
            .enumerate()
        {
            match (got == Some(class), want == Some(class)) {
                (true, true) => counts[i].0 += 1,
                (true, false) => counts[i].1 += 1,
                (false, true) => counts[i].2 += 1,
                (false, false) => {}
            }
        }
        if got != want {
            mistakes.push(format!("{text:?}: got {got:?}, labelled {label}"));
        }
        rows += 1;
    }
    assert!(rows >= 300, "{rows} messages");
    for (name, (tp, fp, fn_)) in ["opt-out", "opt-in"].iter().zip(counts) {
        let precision = tp as f64 / (tp + fp).max(1) as f64;
        let recall = tp as f64 / (tp + fn_).max(1) as f64;
        println!(
            "{name}: precision {precision:.3} ({tp}/{}), recall {recall:.3} ({tp}/{})",
            tp + fp,
            tp + fn_
        );
        assert!(precision >= 0.98 && recall >= 0.95, "{name}: {mistakes:#?}");
    }
    println!(
        "{} of {rows} labelled as labelled; mistakes: {mistakes:#?}",
        rows - mistakes.len()
    );
}
