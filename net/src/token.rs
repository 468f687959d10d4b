//! Join tokens: `SHOAL-1-<CA fingerprint>-<secret>`.
//!
//! The fingerprint (64 hex characters, SHA-256 of the CA certificate) lets a
//! joiner authenticate the cluster before it trusts anything the cluster says; the
//! secret (at least 128 random bits as hex) lets the cluster authenticate the
//! joiner. Managers store only a hash of the secret. Parse errors never echo the
//! secret, since tokens end up in logs and terminals.

use std::fmt;
use std::str::FromStr;

const PREFIX: &str = "SHOAL";
const VERSION: &str = "1";
const FINGERPRINT_HEX_LEN: usize = 64;
/// 128 bits of randomness as hex.
pub const MIN_SECRET_LEN: usize = 32;
/// Tokens are pasted by people; nothing legitimate is longer than this.
pub const MAX_SECRET_LEN: usize = 128;
const GENERATED_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is empty; pass the token printed by `shoal join-token` on a manager")]
    Empty,

    #[error("this is not a shoal join token: it must start with `SHOAL-`")]
    WrongPrefix,

    #[error("join token version {version:?} is not supported: this shoal understands version 1 (SHOAL-1-...)")]
    UnsupportedVersion { version: String },

    #[error(
        "the join token must have four parts separated by `-`: SHOAL-1-<fingerprint>-<secret>"
    )]
    Malformed,

    #[error(
        "the fingerprint in the join token must be {FINGERPRINT_HEX_LEN} hex characters, \
         but it has {len} characters{non_hex}",
        non_hex = if *.has_non_hex { ", some of them not hex" } else { "" }
    )]
    BadFingerprint { len: usize, has_non_hex: bool },

    #[error(
        "the secret in the join token must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} hex characters, \
         but it has {len}"
    )]
    BadSecretLength { len: usize },

    #[error("the secret in the join token must be hex characters (0-9, a-f) only")]
    SecretNotHex,
}

/// A parsed join token. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the cluster CA certificate.
    pub fingerprint: String,
    /// Lowercase hex secret.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("fingerprint", &self.fingerprint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.fingerprint, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses a token, tolerating surrounding whitespace and upper-case hex (both
/// creep in when tokens are copied by hand); the result is lowercase.
pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(TokenError::Empty);
    }
    let mut parts = s.splitn(4, '-');
    if parts.next() != Some(PREFIX) {
        return Err(TokenError::WrongPrefix);
    }
    let version = parts.next().ok_or(TokenError::Malformed)?;
    if version != VERSION {
        return Err(TokenError::UnsupportedVersion {
            version: version.chars().take(16).collect(),
        });
    }
    let fingerprint = parts.next().ok_or(TokenError::Malformed)?;
    let secret = parts.next().ok_or(TokenError::Malformed)?;
    if secret.contains('-') {
        return Err(TokenError::Malformed);
    }
    if fingerprint.len() != FINGERPRINT_HEX_LEN || !is_hex(fingerprint) {
        return Err(TokenError::BadFingerprint {
            len: fingerprint.chars().count(),
            has_non_hex: !is_hex(fingerprint),
        });
    }
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len()) {
        return Err(TokenError::BadSecretLength {
            len: secret.chars().count(),
        });
    }
    if !is_hex(secret) {
        return Err(TokenError::SecretNotHex);
    }
    Ok(JoinToken {
        fingerprint: fingerprint.to_ascii_lowercase(),
        secret: secret.to_ascii_lowercase(),
    })
}

/// A fresh secret: 128 bits from the operating system's generator, as 32
/// lowercase hex characters.
pub fn generate_secret() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    crate::pki::hex(&bytes)
}

/// A secret derived from a key and a label: the first 128 bits of
/// HMAC-SHA256(key, label) as 32 lowercase hex characters. Whoever holds the key
/// (the managers, holding the CA key) can show the same token again without
/// storing the secret; a new label gives an unrelated secret.
pub fn derive_secret(key: &[u8], label: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, label.as_bytes());
    crate::pki::hex(&tag.as_ref()[..GENERATED_SECRET_BYTES])
}

/// Lowercase hex SHA-256 of a secret: what managers store instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    crate::pki::sha256_hex(secret.as_bytes())
}

/// Whether `secret` hashes to `hash_hex`, compared in constant time so response
/// timing does not reveal how much of the hash matched.
pub fn secret_matches(secret: &str, hash_hex: &str) -> bool {
    let actual = hash_secret(secret);
    let expected = hash_hex.to_ascii_lowercase();
    if actual.len() != expected.len() {
        return false;
    }
    let difference = actual
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const SECRET: &str = "00112233445566778899aabbccddeeff";

    /// Ok((fingerprint, secret)) or Err(error text).
    type Expected<'a> = Result<(&'a str, &'a str), &'a str>;

    fn check(input: &str, expected: Expected) {
        match (parse(input), expected) {
            (Ok(token), Ok((fp, secret))) => {
                assert_eq!(token.fingerprint, fp, "{input:?}");
                assert_eq!(token.secret, secret, "{input:?}");
            }
            (Err(err), Err(text)) => {
                assert_eq!(err.to_string(), text, "{input:?}");
                assert!(!err.to_string().contains(SECRET), "error echoes the secret");
            }
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_good_tokens_and_explains_bad_ones() {
        let long_secret = "ab".repeat(64);
        let cases: Vec<(String, Expected)> = vec![
            (format!("SHOAL-1-{FP}-{SECRET}"), Ok((FP, SECRET))),
            (format!("  SHOAL-1-{FP}-{SECRET}\n"), Ok((FP, SECRET))),
            (
                format!("SHOAL-1-{}-{}", FP.to_uppercase(), SECRET.to_uppercase()),
                Ok((FP, SECRET)),
            ),
            (format!("SHOAL-1-{FP}-{long_secret}"), Ok((FP, long_secret.as_str()))),
            (
                String::new(),
                Err("the join token is empty; pass the token printed by `shoal join-token` on a manager"),
            ),
            (
                format!("SWARM-1-{FP}-{SECRET}"),
                Err("this is not a shoal join token: it must start with `SHOAL-`"),
            ),
            (
                format!("shoal-1-{FP}-{SECRET}"),
                Err("this is not a shoal join token: it must start with `SHOAL-`"),
            ),
            (
                format!("SHOAL-2-{FP}-{SECRET}"),
                Err("join token version \"2\" is not supported: this shoal understands version 1 (SHOAL-1-...)"),
            ),
            (
                "SHOAL-1".into(),
                Err("the join token must have four parts separated by `-`: SHOAL-1-<fingerprint>-<secret>"),
            ),
            (
                format!("SHOAL-1-{FP}"),
                Err("the join token must have four parts separated by `-`: SHOAL-1-<fingerprint>-<secret>"),
            ),
            (
                format!("SHOAL-1-{}-{SECRET}", &FP[1..]),
                Err("the fingerprint in the join token must be 64 hex characters, but it has 63 characters"),
            ),
            (
                format!("SHOAL-1-{}g-{SECRET}", &FP[1..]),
                Err(
                    "the fingerprint in the join token must be 64 hex characters, but it has 64 characters, \
                     some of them not hex",
                ),
            ),
            (
                format!("SHOAL-1-{FP}-{}", &SECRET[1..]),
                Err("the secret in the join token must be 32 to 128 hex characters, but it has 31"),
            ),
            (
                format!("SHOAL-1-{FP}-{long_secret}0"),
                Err("the secret in the join token must be 32 to 128 hex characters, but it has 129"),
            ),
            (
                format!("SHOAL-1-{FP}-{}z", &SECRET[1..]),
                Err("the secret in the join token must be hex characters (0-9, a-f) only"),
            ),
            (
                format!("SHOAL-1-{FP}-{SECRET}-extra"),
                Err("the join token must have four parts separated by `-`: SHOAL-1-<fingerprint>-<secret>"),
            ),
        ];
        for (input, expected) in cases {
            check(&input, expected);
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        let token = JoinToken {
            fingerprint: FP.into(),
            secret: generate_secret(),
        };
        let text = token.to_string();
        assert!(text.starts_with("SHOAL-1-"));
        assert_eq!(parse(&text).unwrap(), token);
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = parse(&format!("SHOAL-1-{FP}-{SECRET}")).unwrap();
        let debug = format!("{token:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains(FP), "{debug}");
    }

    #[test]
    fn generated_secrets_are_32_lowercase_hex_and_differ() {
        let a = generate_secret();
        let b = generate_secret();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn derived_secrets_are_stable_per_key_and_label_and_parse() {
        let a = derive_secret(b"key one", "join-token/manager/1");
        assert_eq!(a, derive_secret(b"key one", "join-token/manager/1"));
        assert_ne!(a, derive_secret(b"key one", "join-token/manager/2"));
        assert_ne!(a, derive_secret(b"key two", "join-token/manager/1"));
        // RFC 4231 test case 2, truncated to 128 bits.
        assert_eq!(
            derive_secret(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c7"
        );
        let token = parse(&format!("SHOAL-1-{FP}-{a}")).unwrap();
        assert_eq!(token.secret, a);
    }

    #[test]
    fn secret_matches_only_its_own_hash() {
        let secret = generate_secret();
        let hash = hash_secret(&secret);
        assert_eq!(hash.len(), 64);
        assert!(secret_matches(&secret, &hash));
        assert!(secret_matches(&secret, &hash.to_uppercase()));
        assert!(!secret_matches(&generate_secret(), &hash));
        assert!(!secret_matches(&secret, &hash[1..]));
        assert!(!secret_matches(&secret, ""));
        assert!(!secret_matches(&secret, &secret));
    }
}
