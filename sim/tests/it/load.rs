use std::{collections::HashSet, time::Duration};

use sim::load::{LoadOptions, run};

use crate::{Hook, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_run_reports_sane_numbers() {
    let hook = Hook::spawn(None).await;
    let mut opts = LoadOptions::new(&hook.url, TOKEN);
    opts.count = 200;
    opts.concurrency = 8;
    let report = run(opts).await.unwrap();

    assert_eq!(report.requested, 200);
    assert_eq!(report.sent, 200);
    assert_eq!(report.unsent, 0);
    assert_eq!(report.errors, 0);
    assert_eq!(report.duplicates, 0);
    assert_eq!(
        report.statuses.get(&200),
        Some(&200),
        "{:?}",
        report.statuses
    );
    assert_eq!(report.statuses.len(), 1);
    assert!(report.elapsed_s > 0.0);
    assert!(report.throughput_rps > 0.0);
    let l = &report.latency_ms;
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    // elapsed_s is rounded to the millisecond: on a run of a few milliseconds that rounding alone
    // moves the product by up to half a millisecond's worth of requests.
    assert!(
        (report.throughput_rps * report.elapsed_s - 200.0).abs()
            < 10.0 + report.throughput_rps * 0.0005,
        "{report:?}"
    );
    hook.seen(|s| {
        assert_eq!(s.rejected, 0);
        assert_eq!(s.sids.iter().collect::<HashSet<_>>().len(), 200);
    });

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["statuses"]["200"], 200);
    for key in ["sent", "errors", "elapsed_s", "throughput_rps"] {
        assert!(json[key].is_number(), "{key}");
    }
    for key in ["p50", "p90", "p99", "max"] {
        assert!(json["latency_ms"][key].is_number(), "{key}");
    }
}

#[tokio::test]
async fn duplicates_resend_earlier_messages() {
    let hook = Hook::spawn(None).await;
    let mut opts = LoadOptions::new(&hook.url, TOKEN);
    opts.count = 200;
    opts.concurrency = 4;
    opts.duplicate_ratio = 0.25;
    opts.numbers = 5;
    opts.seed = Some(42);
    let report = run(opts).await.unwrap();
    assert_eq!(report.statuses.get(&200), Some(&200));
    assert!(
        (20..80).contains(&report.duplicates),
        "{}",
        report.duplicates
    );
    hook.seen(|s| {
        assert_eq!(s.sids.len(), 200);
        let distinct = s.sids.iter().collect::<HashSet<_>>().len();
        assert_eq!(distinct, 200 - report.duplicates);
    });
}

#[tokio::test]
async fn signed_url_differs_from_post_url() {
    let public = "https://sms.example.com/webhook/twilio/sms";
    let hook = Hook::spawn(Some(public)).await;
    let mut opts = LoadOptions::new(&hook.url, TOKEN);
    opts.count = 20;
    opts.concurrency = 2;
    let unsigned = run(opts.clone()).await.unwrap();
    assert_eq!(unsigned.statuses.get(&403), Some(&20));
    opts.signed_url = Some(public.into());
    let signed = run(opts).await.unwrap();
    assert_eq!(signed.statuses.get(&200), Some(&20));
}

#[tokio::test]
async fn rate_spaces_requests_on_one_schedule() {
    let hook = Hook::spawn(None).await;
    let mut opts = LoadOptions::new(&hook.url, TOKEN);
    opts.count = 20;
    opts.concurrency = 4;
    opts.rate = 200.0;
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 20);
    // The 20th request is due 19/200 s after the start.
    assert!(report.elapsed_s >= 0.095, "{}", report.elapsed_s);
    assert!(report.throughput_rps <= 215.0, "{}", report.throughput_rps);
}

#[tokio::test]
async fn max_duration_bounds_the_run() {
    let hook = Hook::spawn(None).await;
    let mut opts = LoadOptions::new(&hook.url, TOKEN);
    opts.count = 100;
    opts.concurrency = 2;
    opts.rate = 10.0;
    opts.max_duration = Duration::from_millis(250);
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 3, "due at 0, 0.1 and 0.2 s");
    assert_eq!(report.unsent, 97);
    assert!(report.elapsed_s < 1.0);
}

#[tokio::test]
async fn connection_errors_are_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = LoadOptions::new(format!("http://127.0.0.1:{port}/sms"), TOKEN);
    opts.count = 10;
    opts.concurrency = 2;
    let report = run(opts).await.unwrap();
    assert_eq!(report.sent, 10);
    assert_eq!(report.errors, 10);
    assert!(report.statuses.is_empty());
    assert!(report.error_sample.is_some());
    assert_eq!(report.latency_ms.max, 0.0);
}

#[tokio::test]
async fn bad_options_are_refused() {
    let base = LoadOptions::new("http://127.0.0.1:9/sms", TOKEN);
    let mut o = base.clone();
    o.concurrency = 0;
    assert!(run(o).await.is_err());
    let mut o = base.clone();
    o.duplicate_ratio = 1.5;
    assert!(run(o).await.is_err());
    let mut o = base.clone();
    o.rate = -1.0;
    assert!(run(o).await.is_err());
    let mut o = base;
    o.url = "not a url".into();
    assert!(run(o).await.is_err());
}
