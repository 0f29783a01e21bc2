//! Both TOML config files, as the binaries load them (the key files of
//! `[auth]` are read later, by the verifier, so nothing here touches disk).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roompin_shared::config::{BalancerConfig, NodeConfig};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Ok(config) = BalancerConfig::from_toml(path, text) {
        // An accepted file says the same when written out and read back.
        let _ = config.members();
        let _ = config.balancer_id();
        if let Ok(out) = toml::to_string(&config) {
            let back = BalancerConfig::from_toml(path, &out);
            assert_eq!(back.ok().as_ref(), Some(&config), "{out}");
        }
    }
    if let Ok(config) = NodeConfig::from_toml(path, text) {
        if let Ok(out) = toml::to_string(&config) {
            let back = NodeConfig::from_toml(path, &out);
            assert_eq!(back.ok().as_ref(), Some(&config), "{out}");
        }
    }
});
