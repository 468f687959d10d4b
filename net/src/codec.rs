//! The wire codec: how a message becomes bytes and how bytes travel as frames.
//!
//! This module is the only place that calls postcard for wire messages, so the
//! serialization format can change in one place. A frame is a 4-byte big-endian
//! length followed by that many payload bytes. Readers check the length against a
//! limit before allocating anything, so a peer cannot make us reserve memory by
//! announcing a huge frame.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame any shoal peer sends or accepts.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
const LENGTH_PREFIX_BYTES: usize = 4;

/// How much buffer a reader reserves up front; it grows as bytes actually arrive,
/// so a truncated frame never costs its announced size.
const INITIAL_READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("could not encode a message: {0}")]
    Encode(#[source] postcard::Error),

    #[error(
        "received a malformed message of {len} bytes ({detail}); \
         the peer may run a different shoal version"
    )]
    Decode { len: usize, detail: String },

    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },

    #[error("the peer closed the stream before sending a message")]
    Closed,

    #[error("the stream ended in the middle of a frame: got {received} of {expected} bytes")]
    Truncated { expected: usize, received: usize },

    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serializes `v` into a message payload.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_stdvec(v).map_err(CodecError::Encode)
}

/// Deserializes a whole message payload; trailing bytes are an error because they
/// mean the two sides disagree about the message's shape.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    match postcard::take_from_bytes::<T>(b) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(CodecError::Decode {
            len: b.len(),
            detail: format!("{} trailing bytes after the message", rest.len()),
        }),
        Err(e) => Err(CodecError::Decode {
            len: b.len(),
            detail: e.to_string(),
        }),
    }
}

/// Writes one frame: the payload's length as 4 big-endian bytes, then the payload.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), CodecError> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(CodecError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let len = u32::try_from(payload.len()).expect("MAX_FRAME_BYTES fits in u32");
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame whose payload is at most `max` bytes.
///
/// A stream that ends before the first byte of a frame gives [`CodecError::Closed`];
/// one that ends inside a frame gives [`CodecError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let got = read_fully(r, &mut prefix).await?;
    if got == 0 {
        return Err(CodecError::Closed);
    }
    if got < LENGTH_PREFIX_BYTES {
        return Err(CodecError::Truncated {
            expected: LENGTH_PREFIX_BYTES,
            received: got,
        });
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max });
    }
    let mut payload = Vec::with_capacity(len.min(INITIAL_READ_BUFFER));
    let received = r.take(len as u64).read_to_end(&mut payload).await?;
    if received < len {
        return Err(CodecError::Truncated {
            expected: LENGTH_PREFIX_BYTES + len,
            received: LENGTH_PREFIX_BYTES + received,
        });
    }
    Ok(payload)
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
async fn read_fully<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// Encodes `msg` and writes it as one frame.
pub async fn send_msg<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    let payload = encode(msg)?;
    write_frame(w, &payload).await
}

/// Reads one frame of at most `max` bytes and decodes it.
pub async fn recv_msg<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<T, CodecError> {
    let payload = read_frame(r, max).await?;
    decode(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping { seq: u64 },
        Put { key: String, value: Vec<u8> },
        Empty,
    }

    fn sample_messages() -> Vec<Message> {
        vec![
            Message::Ping { seq: 0 },
            Message::Ping { seq: u64::MAX },
            Message::Put {
                key: "ключ".into(),
                value: vec![0, 1, 2, 255],
            },
            Message::Put {
                key: String::new(),
                value: vec![7; 100_000],
            },
            Message::Empty,
        ]
    }

    #[test]
    fn encode_decode_round_trips() {
        for msg in sample_messages() {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<Message>(&bytes).unwrap(), msg);
        }
    }

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let mut wire = Vec::new();
        for msg in sample_messages() {
            send_msg(&mut wire, &msg).await.unwrap();
        }
        let mut reader = wire.as_slice();
        for msg in sample_messages() {
            assert_eq!(
                recv_msg::<Message, _>(&mut reader, MAX_FRAME_BYTES)
                    .await
                    .unwrap(),
                msg
            );
        }
        assert!(matches!(
            recv_msg::<Message, _>(&mut reader, MAX_FRAME_BYTES).await,
            Err(CodecError::Closed)
        ));
    }

    #[tokio::test]
    async fn empty_payload_is_a_valid_frame() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[]).await.unwrap();
        assert_eq!(wire, [0, 0, 0, 0]);
        assert_eq!(
            read_frame(&mut wire.as_slice(), 0).await.unwrap(),
            Vec::<u8>::new()
        );
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_reading_the_payload() {
        // The stream announces 4 GiB but carries no payload: reaching the limit check
        // (and not a truncation error) shows the length was judged before any read
        // or allocation of the payload.
        let wire = [0xff, 0xff, 0xff, 0xff];
        let err = read_frame(&mut wire.as_slice(), MAX_FRAME_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                len: 0xffff_ffff,
                max: MAX_FRAME_BYTES
            }
        ));
        assert_eq!(
            err.to_string(),
            "a frame of 4294967295 bytes exceeds the limit of 16777216 bytes"
        );

        let mut small = Vec::new();
        write_frame(&mut small, &[1, 2, 3, 4, 5]).await.unwrap();
        let err = read_frame(&mut small.as_slice(), 4).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "a frame of 5 bytes exceeds the limit of 4 bytes"
        );
    }

    #[tokio::test]
    async fn writer_refuses_a_payload_over_the_limit() {
        let mut wire = Vec::new();
        let payload = vec![0u8; MAX_FRAME_BYTES + 1];
        let err = write_frame(&mut wire, &payload).await.unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
        assert!(
            wire.is_empty(),
            "nothing may be written for a refused frame"
        );
    }

    #[tokio::test]
    async fn truncated_frames_are_reported_as_truncated() {
        // (wire bytes, expected error text)
        let cases: &[(&[u8], &str)] = &[
            (
                &[0, 0],
                "the stream ended in the middle of a frame: got 2 of 4 bytes",
            ),
            (
                &[0, 0, 0, 5, 1, 2],
                "the stream ended in the middle of a frame: got 6 of 9 bytes",
            ),
            (
                &[0, 0, 0, 1],
                "the stream ended in the middle of a frame: got 4 of 5 bytes",
            ),
            (&[], "the peer closed the stream before sending a message"),
        ];
        for (wire, expected) in cases {
            let err = read_frame(&mut &wire[..], MAX_FRAME_BYTES)
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), *expected, "wire {wire:?}");
        }
    }

    #[test]
    fn garbage_payloads_fail_to_decode_with_a_clear_error() {
        // (payload, words the error must contain)
        let cases: &[(&[u8], &str)] = &[
            (&[], "malformed message of 0 bytes"),
            (&[9], "malformed message of 1 bytes"),
            (
                &[1, 0xff, 0xff, 0xff, 0xff, 0xff],
                "malformed message of 6 bytes",
            ),
            (&[2, 0], "1 trailing bytes after the message"),
        ];
        for (payload, expected) in cases {
            let err = decode::<Message>(payload).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expected), "payload {payload:?}: {text}");
            assert!(text.contains("different shoal version"), "{text}");
        }
    }
}
