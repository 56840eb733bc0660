//! The AMQP benchmark runs: `replyd bench --scenarios amqp` briefly, with a
//! few clients, answers every round trip through replyd and through the
//! bare echo server, and prints both with their ratio (BENCHMARKS.md,
//! "Message brokers").
//!
//! Without RabbitMQ on 127.0.0.1:5672 the test skips, saying so, unless
//! `REPLYD_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

mod support;

#[test]
fn amqp_scenario_prints_its_figures() {
    if !replyd_testkit::service(
        "RabbitMQ",
        5672,
        "run scripts/test, or: rabbitmq-server -detached",
    ) {
        return;
    }
    support::bench_prints_round_trips(
        "amqp",
        &["--amqp-clients", "8"],
        &["bare lapin echo (ceiling)", "replyd (job + durable reply)"],
    );
}
