//! The Kafka benchmark runs: `replyd bench --scenarios kafka` briefly, with
//! a few clients, on librdkafka's mock cluster in the bench's process,
//! answers every round trip through replyd and through the bare echo, and
//! prints both with their ratio (BENCHMARKS.md, "Kafka round trips").

#![cfg(feature = "kafka")]

mod support;

#[test]
fn kafka_scenario_prints_its_figures() {
    support::bench_prints_round_trips(
        "kafka",
        &["--kafka-clients", "8"],
        &["bare echo (ceiling)", "replyd (job + durable reply)"],
    );
}
