//! The SNS benchmark runs: `replyd bench --scenarios sns` briefly, with a
//! few clients, against moto_server (SNS and SQS on 127.0.0.1:5000):
//! every round trip through replyd over plain SQS queues and over SNS
//! topics is answered, and both are printed with their ratio
//! (BENCHMARKS.md, "SQS and SNS round trips on moto").

#![cfg(feature = "sns")]

mod support;

#[test]
fn sns_scenario_prints_its_figures() {
    if !replyd_testkit::service(
        "SNS and SQS (moto_server)",
        5000,
        "run scripts/test, or: moto_server -H 127.0.0.1 -p 5000 (pip install moto[server])",
    ) {
        return;
    }
    support::bench_prints_round_trips(
        "sns",
        &["--broker-clients", "4"],
        &["replyd over SQS", "replyd over SNS"],
    );
}
