//! The scenario shipped in `examples/` stays a valid mix.

use scalestack_bench::Scenario;

#[test]
fn the_example_mix_parses_with_its_three_weighted_requests() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/scenario-mix.toml"
    );
    let text = std::fs::read_to_string(path).expect("the example exists");
    let scenario = Scenario::from_toml(&text, path).expect("the example parses");
    let weights: Vec<u32> = scenario.requests.iter().map(|r| r.weight).collect();
    assert_eq!(weights, [80, 15, 5]);
    assert_eq!(scenario.url.as_deref(), Some("http://127.0.0.1:8080"));
}
