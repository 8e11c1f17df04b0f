//! Fuzzes the codec's decoder: any bytes must give a message or a
//! `CodecError`, never a panic or a huge allocation; whatever decodes must
//! re-encode to the same message.
#![no_main]

use labspan_proto::codec;
use labspan_proto::msg::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = codec::decode::<Request>(data) {
        let bytes = codec::encode(&req).expect("a decoded request re-encodes");
        assert_eq!(codec::decode::<Request>(&bytes).ok(), Some(req));
    }
    if let Ok(reply) = codec::decode::<Reply>(data) {
        let bytes = codec::encode(&reply).expect("a decoded reply re-encodes");
        assert_eq!(codec::decode::<Reply>(&bytes).ok(), Some(reply));
    }
    let _ = codec::decode::<Vec<String>>(data);
    if let Some(head) = data.first_chunk::<{ codec::HEADER_LEN }>() {
        let _ = codec::parse_header(head);
    }
});
