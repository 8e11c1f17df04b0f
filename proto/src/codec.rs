//! The one place labspan turns messages into bytes and back.
//!
//! Every message on the wire or on disk (Raft entries, snapshots, requests,
//! replies) is an *envelope*: a fixed 8-byte header followed by a bincode 2
//! payload (serde, standard config: little-endian varints).
//!
//! ```text
//!  0      2         4                 8
//!  +------+---------+-----------------+--------------------+
//!  | "LS" | version | payload length  | payload (bincode)  |
//!  |      | u16 BE  | u32 BE          | `length` bytes     |
//!  +------+---------+-----------------+--------------------+
//! ```
//!
//! The version is checked before anything else is read, so a peer running an
//! incompatible release gets [`CodecError::WrongVersion`], not garbage. The
//! length lets a stream reader know how much to read (see [`parse_header`])
//! and refuse an oversized message before buffering it. Decoding never panics
//! and never allocates more than [`MAX_MESSAGE_SIZE`] whatever the input.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"LS";

/// Version of the envelope and of the payload schema; bump on any breaking change.
pub const VERSION: u16 = 7;

/// Size of the envelope header: magic, version, payload length.
pub const HEADER_LEN: usize = 8;

/// Largest payload accepted or produced (16 MiB): big enough for a lab spec
/// or a snapshot of a large cluster, small enough that a hostile peer cannot
/// make a coordinator buffer gigabytes.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Why bytes could not be turned into a message (or a message into bytes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended before the header or the payload was complete.
    #[error("truncated message: need {needed} bytes, got {got}; the sender stopped early or the data is cut")]
    Truncated { needed: usize, got: usize },
    /// The first two bytes are not the labspan magic.
    #[error("not a labspan message: magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic { found: [u8; 2] },
    /// The envelope was written by an incompatible release.
    #[error("message version {found} is not supported (this build speaks version {VERSION}); upgrade the older side")]
    WrongVersion { found: u16 },
    /// The payload is larger than [`MAX_MESSAGE_SIZE`].
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    Oversized { size: usize, max: usize },
    /// Bytes follow the payload the header announced, or the payload decodes
    /// to a message shorter than its declared length.
    #[error("{extra} unexpected trailing bytes after the message")]
    TrailingBytes { extra: usize },
    /// The payload is not a valid encoding of the expected message type.
    #[error("malformed message payload: {0}")]
    Malformed(String),
    /// The message cannot be encoded (a type bincode cannot represent).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    // The limit bounds every allocation the decoder makes (a hostile length
    // prefix inside the payload cannot reserve more than this).
    bincode::config::standard().with_limit::<MAX_MESSAGE_SIZE>()
}

/// The size of `msg`'s payload once encoded, without encoding it into
/// memory: a sender that batches (Raft's AppendEntries) keeps under
/// [`MAX_MESSAGE_SIZE`] with it.
pub fn payload_len<T: Serialize + ?Sized>(msg: &T) -> Result<usize, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(msg, &mut size, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(size.bytes_written)
}

/// Encodes `msg` into a complete envelope.
pub fn encode<T: Serialize + ?Sized>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let size = out.len() - HEADER_LEN;
    if size > MAX_MESSAGE_SIZE {
        return Err(CodecError::Oversized {
            size,
            max: MAX_MESSAGE_SIZE,
        });
    }
    let header = header(size);
    out[..HEADER_LEN].copy_from_slice(&header);
    Ok(out)
}

/// Builds the header announcing a payload of `size` bytes (`size` ≤ [`MAX_MESSAGE_SIZE`]).
fn header(size: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&MAGIC);
    h[2..4].copy_from_slice(&VERSION.to_be_bytes());
    // MAX_MESSAGE_SIZE fits in u32, so this never saturates for a valid size.
    let len = u32::try_from(size).unwrap_or(u32::MAX);
    h[4..8].copy_from_slice(&len.to_be_bytes());
    h
}

/// Checks an envelope header and returns the payload length it announces.
///
/// Stream readers call this on the first [`HEADER_LEN`] bytes, then read
/// exactly that many payload bytes: an oversized message is refused before
/// any of its payload is buffered.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let magic = [h[0], h[1]];
    if magic != MAGIC {
        return Err(CodecError::BadMagic { found: magic });
    }
    let version = u16::from_be_bytes([h[2], h[3]]);
    if version != VERSION {
        return Err(CodecError::WrongVersion { found: version });
    }
    let size = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if size > MAX_MESSAGE_SIZE {
        return Err(CodecError::Oversized {
            size,
            max: MAX_MESSAGE_SIZE,
        });
    }
    Ok(size)
}

/// Decodes one complete envelope; `bytes` must hold exactly one message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (payload, after) = split_envelope(bytes)?;
    if !after.is_empty() {
        return Err(CodecError::TrailingBytes { extra: after.len() });
    }
    decode_payload(payload)
}

/// Decodes the first envelope of `bytes`; returns it and the bytes after it.
///
/// A message stream longer than [`MAX_MESSAGE_SIZE`] (a Raft snapshot) is a
/// sequence of envelopes, each within the limit, read back with this one
/// message at a time.
pub fn decode_first<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    let (payload, after) = split_envelope(bytes)?;
    Ok((decode_payload(payload)?, after))
}

/// The payload of the first envelope of `bytes` (header checked, whole
/// payload present) and the bytes after it.
fn split_envelope(bytes: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(CodecError::Truncated {
            needed: HEADER_LEN,
            got: bytes.len(),
        });
    };
    let size = parse_header(head)?;
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < size {
        return Err(CodecError::Truncated {
            needed: HEADER_LEN + size,
            got: bytes.len(),
        });
    }
    Ok(rest.split_at(size))
}

/// Decodes a payload whose header was already checked with [`parse_header`].
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    if payload.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::Oversized {
            size: payload.len(),
            max: MAX_MESSAGE_SIZE,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Put { key: String, value: Vec<u8> },
        Many(BTreeMap<String, Vec<u32>>),
    }

    fn put() -> Msg {
        Msg::Put {
            key: "lab/sip".into(),
            value: vec![1, 2, 3],
        }
    }

    #[test]
    fn decode_first_reads_a_stream_one_message_at_a_time() -> Result<(), CodecError> {
        let mut stream = encode(&Msg::Ping(1))?;
        stream.extend(encode(&put())?);
        let (first, rest) = decode_first::<Msg>(&stream)?;
        assert_eq!(first, Msg::Ping(1));
        let (second, rest) = decode_first::<Msg>(rest)?;
        assert_eq!(second, put());
        assert!(rest.is_empty());
        let cut = &stream[..stream.len() - 1];
        let (_, rest) = decode_first::<Msg>(cut)?;
        assert!(matches!(
            decode_first::<Msg>(rest),
            Err(CodecError::Truncated { .. })
        ));
        Ok(())
    }

    #[test]
    fn round_trip_keeps_the_message() -> Result<(), CodecError> {
        let bytes = encode(&put())?;
        assert_eq!(&bytes[..2], b"LS");
        assert_eq!(decode::<Msg>(&bytes)?, put());
        Ok(())
    }

    #[test]
    fn other_version_is_refused() -> Result<(), CodecError> {
        let mut bytes = encode(&put())?;
        let other = VERSION + 1;
        bytes[2..4].copy_from_slice(&other.to_be_bytes());
        assert_eq!(
            decode::<Msg>(&bytes),
            Err(CodecError::WrongVersion { found: other })
        );
        Ok(())
    }

    #[test]
    fn bad_magic_is_refused() -> Result<(), CodecError> {
        let mut bytes = encode(&put())?;
        bytes[0] = b'X';
        assert!(matches!(
            decode::<Msg>(&bytes),
            Err(CodecError::BadMagic { .. })
        ));
        Ok(())
    }

    #[test]
    fn every_truncation_is_refused() -> Result<(), CodecError> {
        let bytes = encode(&put())?;
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode::<Msg>(&bytes[..cut]),
                    Err(CodecError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        Ok(())
    }

    #[test]
    fn trailing_bytes_are_refused() -> Result<(), CodecError> {
        let mut bytes = encode(&put())?;
        bytes.push(0);
        assert_eq!(
            decode::<Msg>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        );
        // A header that announces more payload than the message uses.
        let mut padded = encode(&Msg::Ping(7))?;
        padded.push(0);
        let len = (padded.len() - HEADER_LEN) as u32;
        padded[4..8].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode::<Msg>(&padded),
            Err(CodecError::TrailingBytes { extra: 1 })
        );
        Ok(())
    }

    #[test]
    fn oversized_header_is_refused_before_reading_payload() {
        let mut h = header(0);
        h[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_header(&h),
            Err(CodecError::Oversized { .. })
        ));
        assert!(matches!(
            decode::<Msg>(&h),
            Err(CodecError::Oversized { .. })
        ));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let big = vec![0u8; MAX_MESSAGE_SIZE + 1];
        assert!(matches!(encode(&big), Err(CodecError::Oversized { .. })));
    }

    #[test]
    fn hostile_inner_length_does_not_allocate() -> Result<(), CodecError> {
        // A Vec<u8> whose varint length claims u64::MAX elements.
        let mut payload = vec![253u8];
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut bytes = header(payload.len()).to_vec();
        bytes.extend_from_slice(&payload);
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Msg>(&bytes);
            let _ = decode::<Vec<String>>(&bytes);
        }

        #[test]
        fn arbitrary_payloads_behind_a_valid_header_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..256)
        ) {
            let mut bytes = header(payload.len()).to_vec();
            bytes.extend_from_slice(&payload);
            let _ = decode::<Msg>(&bytes);
            let _ = decode::<BTreeMap<String, Vec<u32>>>(&bytes);
        }

        #[test]
        fn any_message_round_trips(key in ".{0,20}", value in proptest::collection::vec(any::<u8>(), 0..64), n in any::<u64>()) {
            let many = Msg::Many(BTreeMap::from([(key.clone(), vec![n as u32])]));
            for msg in [Msg::Put { key: key.clone(), value: value.clone() }, Msg::Ping(n), many] {
                let bytes = encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decode::<Msg>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, msg);
            }
        }
    }
}
