//! Builder unit tests: impossible settings fail with a typed error, zero durations are explained.

use super::*;
use crate::MemoryStore;

fn builder() -> CacheLayerBuilder {
    CacheLayer::builder(MemoryStore::new(1024))
}

#[test]
fn impossible_settings_fail_with_a_typed_error() {
    assert_eq!(
        builder().methods([]).build().unwrap_err(),
        ConfigError::NoCacheableMethods
    );
    assert_eq!(
        builder().methods([Method::POST]).build().unwrap_err(),
        ConfigError::UnsupportedMethod(Method::POST)
    );
    assert_eq!(
        builder().methods([Method::HEAD]).build().unwrap_err(),
        ConfigError::HeadWithoutGet
    );
    assert_eq!(
        builder().statuses([]).build().unwrap_err(),
        ConfigError::NoCacheableStatuses
    );
    assert_eq!(
        builder().statuses([200, 99]).build().unwrap_err(),
        ConfigError::InvalidStatus(99)
    );
    assert_eq!(
        builder().max_body_bytes(0).build().unwrap_err(),
        ConfigError::ZeroMaxBody
    );
    assert_eq!(
        builder().key_prefix("").build().unwrap_err(),
        ConfigError::EmptyPrefix
    );
    assert!(matches!(
        builder().key_prefix("a b").build().unwrap_err(),
        ConfigError::InvalidPrefix(_)
    ));
    assert_eq!(
        builder().lock_ttl(Duration::ZERO).build().unwrap_err(),
        ConfigError::ZeroDuration("lock_ttl")
    );
    assert!(matches!(
        builder()
            .lock_wait(Duration::from_secs(3600))
            .build()
            .unwrap_err(),
        ConfigError::LockWaitTooLong { .. }
    ));
    assert_eq!(
        builder().max_pending_writes(0).build().unwrap_err(),
        ConfigError::ZeroPendingWrites
    );
    assert_eq!(
        builder().max_fill_bytes(0).build().unwrap_err(),
        ConfigError::ZeroFillBytes
    );
    for invalid in ["", "Bad Name", "cache-control", "Cache-Control"] {
        assert_eq!(
            builder()
                .targeted_cache_control([invalid])
                .build()
                .unwrap_err(),
            ConfigError::InvalidTargetedField(invalid.to_owned())
        );
    }
    assert!(builder()
        .targeted_cache_control(["Tower-Cache-Control", "CDN-Cache-Control"])
        .build()
        .is_ok());
    assert!(builder()
        .targeted_cache_control(Vec::<String>::new())
        .build()
        .is_ok());
}

#[test]
fn zero_ttl_is_valid_and_errors_explain_themselves() {
    assert!(builder().ttl(Duration::ZERO).build().is_ok());
    let message = builder().statuses([42]).build().unwrap_err().to_string();
    assert!(message.contains("42"), "{message}");
}
