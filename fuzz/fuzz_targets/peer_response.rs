//! Every response a member decodes from the member it called.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_fuzz::wire::PeerResponse;
use shoal_net::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = codec::decode::<PeerResponse>(data) {
        let bytes = codec::encode(&response).expect("a decoded response encodes");
        codec::decode::<PeerResponse>(&bytes).expect("a re-encoded response decodes");
    }
});
