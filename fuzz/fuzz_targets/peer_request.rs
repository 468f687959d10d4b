//! Every request a member decodes from another member (Raft RPCs, heartbeats,
//! forwarded operations, task reports, mesh connects).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_fuzz::wire::PeerRequest;
use shoal_net::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = codec::decode::<PeerRequest>(data) {
        // Whatever decodes must encode again (the daemon answers and forwards).
        let bytes = codec::encode(&request).expect("a decoded request encodes");
        codec::decode::<PeerRequest>(&bytes).expect("a re-encoded request decodes");
    }
});
