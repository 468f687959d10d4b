//! The join handshake, on the side of the member that serves an
//! unauthenticated joiner: the request frame, the joiner's public key (which
//! the leader signs), and the token and certificate parsers.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::wire::{JoinAccepted, JoinRequest};
use shoal_net::{codec, pki, token, ClusterCa};

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("fuzz").expect("a CA"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(request) = codec::decode::<JoinRequest>(rest) {
                let _ = ca().issue_node_cert(7, &request.public_key_der);
                let _ = token::secret_matches(&request.secret, &token::hash_secret("x"));
            }
        }
        1 => {
            let _ = ca().issue_node_cert(7, rest);
        }
        2 => {
            let _ = pki::node_id_from_cert_der(rest);
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = token::parse(text);
                let _ = pki::fingerprint_of_pem(text);
            }
        }
        _ => {
            let _ = codec::decode::<JoinAccepted>(rest);
        }
    }
});
