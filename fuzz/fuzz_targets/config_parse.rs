//! `Config::parse` on arbitrary UTF-8 never panics. Relative paths resolve under `/fuzz`, which
//! does not exist, so any `peers_file` read fails cleanly.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sealpipe::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse(text, Path::new("/fuzz/config.toml")) {
            // Errors are rendered into logs: formatting them must not panic either.
            let _ = e.to_string();
        }
    }
});
