//! The disk format, which also arrives from the leader inside AppendEntries
//! (log payloads) and InstallSnapshot (the state).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_raft::{codec, ClusterState, LogPayload};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        if let Ok(payload) = codec::decode::<LogPayload>(rest) {
            let bytes = codec::encode(&payload).expect("a decoded payload encodes");
            codec::decode::<LogPayload>(&bytes).expect("a re-encoded payload decodes");
        }
    } else if let Ok(state) = codec::decode::<ClusterState>(rest) {
        let bytes = codec::encode(&state).expect("a decoded state encodes");
        codec::decode::<ClusterState>(&bytes).expect("a re-encoded state decodes");
    }
});
