//! Length-prefixed framing: any byte stream gives frames within the limit or a
//! clean error, never a panic or an allocation of the announced size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_net::codec;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    futures::executor::block_on(async {
        loop {
            match codec::read_frame(&mut reader, MAX).await {
                Ok(payload) => assert!(payload.len() <= MAX),
                Err(_) => break,
            }
        }
    });
});
