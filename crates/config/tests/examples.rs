//! The configuration examples shipped in `examples/` stay valid: a renamed
//! key would otherwise leave the README's real-engine example broken.

use std::path::PathBuf;

use scalestack_config::Config;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[test]
fn the_real_engines_example_parses_validates_and_uses_every_engine() {
    let config = Config::from_file(&example("real-engines.toml")).expect("the example parses");
    config.validate().expect("the example validates");
    assert!(config.store.catalog.primary.starts_with("postgres://"));
    assert_eq!(config.store.shards.len(), 2);
    assert!(
        config
            .store
            .shards
            .iter()
            .all(|s| s.primary.starts_with("postgres://") && s.replicas.len() == 1)
    );
    assert!(!config.cache.l2.urls.is_empty());
    assert_eq!(config.queue.nats.url, "nats://queue-0:4222");
    assert_eq!(config.gateway.admin_token, "change-me");
}
