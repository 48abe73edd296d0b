//! WeCom kf callback XML: the outer `<Encrypt>` envelope and the decrypted event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::wecom_kf::{encrypted_field, parse_callback};

fuzz_target!(|data: &[u8]| {
    let _ = encrypted_field(data);
    let _ = parse_callback(data);
});
