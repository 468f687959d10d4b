//! Frames of the streams an agent and the mesh read: the task stream, the
//! endpoint stream, mesh replies. The first byte picks the message type.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_fuzz::wire::{EndpointFeed, MeshConnect, MeshReply, TaskFeed, TaskReport};
use shoal_net::codec;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(value) = codec::decode::<T>(data) {
        let bytes = codec::encode(&value).expect("a decoded message encodes");
        codec::decode::<T>(&bytes).expect("a re-encoded message decodes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => round_trip::<TaskFeed>(rest),
        1 => round_trip::<EndpointFeed>(rest),
        2 => round_trip::<MeshReply>(rest),
        3 => round_trip::<MeshConnect>(rest),
        _ => round_trip::<TaskReport>(rest),
    }
});
