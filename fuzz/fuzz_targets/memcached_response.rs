//! Feeds arbitrary bytes to the memcached response parser, as a server (or
//! anything pretending to be one) could. The parser must return a response,
//! "need more" or an error: never panic, never claim more bytes than it got.
//!
//! `cargo +nightly fuzz run memcached_response -- -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match larder_memcached::proto::parse(&data[at..], 1 << 16) {
            Ok(Some((_, n))) => {
                assert!(n > 0, "a response consumed nothing");
                assert!(at + n <= data.len(), "consumed past the input");
                at += n;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
