//! The disk format of everything this crate stores: log entries, the vote and
//! snapshots. This is the only place that names postcard, so the format can be
//! swapped (behind a new version tag) without touching the store.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode a stored record: {0}")]
    Encode(#[source] postcard::Error),
    #[error(
        "a stored record cannot be decoded ({0}); the file is damaged or was written by an \
         incompatible shoal version"
    )]
    Decode(#[source] postcard::Error),
    #[error(
        "a stored record has {0} unexpected trailing bytes; the file is damaged or was written \
         by an incompatible shoal version"
    )]
    TrailingBytes(usize),
}

/// Encodes `value` in the stored format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(value).map_err(CodecError::Encode)
}

/// Decodes a value written by [`encode`]. The whole input must be one value: trailing
/// bytes mean the record is not what the caller expects.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(CodecError::Decode)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let value: (u64, String, Vec<u8>) = (7, "seven".to_owned(), vec![1, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes).unwrap(), value);

        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&longer),
            Err(CodecError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&bytes[..bytes.len() - 1]),
            Err(CodecError::Decode(_))
        ));
    }
}
