//! Our number reading against libphonenumber's over written forms of numbers from the US, Canada,
//! Puerto Rico, the Dominican Republic, Mexico, Brazil, Portugal, Spain and the UK, valid and
//! invalid (`data/phone_forms.tsv`, made by `data/make_phone_forms.py` with Python's
//! `phonenumbers`, region US; the script's header lists the few rules we add on top).

use phonenumber::country::Id;
use shared::phone;

#[test]
fn every_written_form_reads_as_libphonenumber_reads_it() {
    let table = include_str!("data/phone_forms.tsv");
    let mut rows = 0;
    let mut wrong = Vec::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let written: String = serde_json::from_str(cols[0]).expect("a JSON string");
        let send = match phone::recipient(&written, Id::US) {
            Ok(to) => to.as_str().to_owned(),
            Err(why) => format!("refuse: {why}"),
        };
        let inbound = match phone::normalize(&written, Id::US) {
            Ok(e164) => e164.as_str().to_owned(),
            Err(_) => "keep".to_owned(),
        };
        if send != cols[1] || inbound != cols[2] {
            wrong.push(format!(
                "{written:?}: send {send} (want {}), inbound {inbound} (want {}) [{}]",
                cols[1], cols[2], cols[3]
            ));
        }
        rows += 1;
    }
    assert!(rows >= 300, "{rows} forms");
    println!(
        "{} of {rows} written forms agree with libphonenumber",
        rows - wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
