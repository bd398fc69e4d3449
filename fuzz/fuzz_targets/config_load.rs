//! The config loader on arbitrary text, as TOML and as YAML: a diagnostic or a config, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let registry = sluice_core::Registry::default();
    let path = std::path::Path::new("fuzz.toml");
    for format in [config::FileFormat::Toml, config::FileFormat::Yaml] {
        if let Err(diags) = sluice_config::load_str(text, format, path, &registry) {
            for d in diags {
                let _ = d.to_string();
            }
        }
    }
});
