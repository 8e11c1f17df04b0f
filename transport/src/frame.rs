//! One codec envelope per stream direction: reading, writing, and the
//! request/response exchange built on them.

use std::fmt;

use labspan_proto::codec::{self, CodecError, HEADER_LEN};
use quinn::{Connection, ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::TransportError;

/// Payload bytes reserved before any arrive (most messages are smaller).
const PREALLOCATE_MAX: usize = 64 * 1024;

/// Why a peer reset a stream: the QUIC application error code it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorCode {
    /// The request did not decode (bad magic, bad payload, trailing bytes).
    Malformed,
    /// The stream ended before the message the header announced.
    Truncated,
    /// The header announced more than the codec's maximum size.
    Oversized,
    /// The envelope is of a version this peer does not speak.
    WrongVersion,
    /// The request did not arrive in time.
    Timeout,
    /// The peer failed to produce a reply.
    Internal,
    /// A code this build does not know (a newer peer).
    Unknown(u64),
}

impl StreamErrorCode {
    /// The QUIC application error code on the wire.
    pub fn to_varint(self) -> VarInt {
        VarInt::from_u32(match self {
            StreamErrorCode::Malformed => 1,
            StreamErrorCode::Truncated => 2,
            StreamErrorCode::Oversized => 3,
            StreamErrorCode::WrongVersion => 4,
            StreamErrorCode::Timeout => 5,
            StreamErrorCode::Internal => 6,
            StreamErrorCode::Unknown(_) => 0,
        })
    }

    /// Reads a code received in a RESET_STREAM or STOP_SENDING frame.
    pub fn from_varint(code: VarInt) -> Self {
        match code.into_inner() {
            1 => StreamErrorCode::Malformed,
            2 => StreamErrorCode::Truncated,
            3 => StreamErrorCode::Oversized,
            4 => StreamErrorCode::WrongVersion,
            5 => StreamErrorCode::Timeout,
            6 => StreamErrorCode::Internal,
            other => StreamErrorCode::Unknown(other),
        }
    }

    /// The code that tells a peer why its message was refused.
    pub fn for_codec_error(e: &CodecError) -> Self {
        match e {
            CodecError::Truncated { .. } => StreamErrorCode::Truncated,
            CodecError::Oversized { .. } => StreamErrorCode::Oversized,
            CodecError::WrongVersion { .. } => StreamErrorCode::WrongVersion,
            CodecError::BadMagic { .. }
            | CodecError::TrailingBytes { .. }
            | CodecError::Malformed(_) => StreamErrorCode::Malformed,
            CodecError::Encode(_) => StreamErrorCode::Internal,
        }
    }
}

impl fmt::Display for StreamErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamErrorCode::Malformed => f.write_str("malformed message"),
            StreamErrorCode::Truncated => f.write_str("truncated message"),
            StreamErrorCode::Oversized => f.write_str("message too large"),
            StreamErrorCode::WrongVersion => f.write_str("unsupported message version"),
            StreamErrorCode::Timeout => f.write_str("request not received in time"),
            StreamErrorCode::Internal => f.write_str("internal error in the peer"),
            StreamErrorCode::Unknown(c) => write!(f, "unknown stream error code {c}"),
        }
    }
}

fn read_err(doing: &'static str, e: ReadError) -> TransportError {
    match e {
        ReadError::Reset(code) => TransportError::Refused {
            code: StreamErrorCode::from_varint(code),
        },
        ReadError::ConnectionLost(e) => TransportError::ConnectionLost(e),
        other => TransportError::Stream {
            doing,
            reason: other.to_string(),
        },
    }
}

fn read_exact_err(doing: &'static str, needed: usize, e: ReadExactError) -> TransportError {
    match e {
        ReadExactError::FinishedEarly(got) => {
            TransportError::Codec(CodecError::Truncated { needed, got })
        }
        ReadExactError::ReadError(e) => read_err(doing, e),
    }
}

fn write_err(doing: &'static str, e: WriteError) -> TransportError {
    match e {
        WriteError::Stopped(code) => TransportError::Refused {
            code: StreamErrorCode::from_varint(code),
        },
        WriteError::ConnectionLost(e) => TransportError::ConnectionLost(e),
        other => TransportError::Stream {
            doing,
            reason: other.to_string(),
        },
    }
}

/// Reads the one message of `recv`: header, payload of the announced size,
/// then the end of the stream. An oversized header is refused before any
/// payload is buffered.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, TransportError> {
    let msg = read_message(recv).await?;
    expect_end(recv).await?;
    Ok(msg)
}

/// Reads one message (header and payload) and leaves the stream open: the
/// first message of a byte stream (console, capture), raw bytes after it.
pub async fn read_message<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, TransportError> {
    read_message_within(recv, codec::MAX_MESSAGE_SIZE).await
}

/// [`read_message`] for a stream whose messages are known to be small (the
/// image endpoint's requests and offers): a payload over `max` bytes is
/// refused before any of it is read.
pub async fn read_message_within<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<T, TransportError> {
    let mut head = [0u8; HEADER_LEN];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| read_exact_err("reading a message header", HEADER_LEN, e))?;
    let size = codec::parse_header(&head)?;
    if size > max {
        return Err(CodecError::Oversized { size, max }.into());
    }
    let payload = read_payload(recv, size).await?;
    Ok(codec::decode_payload(&payload)?)
}

/// Waits for the end of `recv`, which must carry nothing more.
pub async fn expect_end(recv: &mut RecvStream) -> Result<(), TransportError> {
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await {
        Ok(None) => Ok(()),
        Ok(Some(n)) => Err(CodecError::TrailingBytes { extra: n }.into()),
        Err(e) => Err(read_err("waiting for the end of a message", e)),
    }
}

/// Reads exactly `size` payload bytes, growing the buffer only as bytes
/// arrive: a peer that announces a large message but sends little cannot
/// make this side reserve the whole announced size.
async fn read_payload(recv: &mut RecvStream, size: usize) -> Result<Vec<u8>, TransportError> {
    let mut payload = Vec::with_capacity(size.min(PREALLOCATE_MAX));
    while payload.len() < size {
        let chunk = recv
            .read_chunk(size - payload.len(), true)
            .await
            .map_err(|e| read_err("reading a message", e))?;
        let Some(chunk) = chunk else {
            return Err(CodecError::Truncated {
                needed: HEADER_LEN + size,
                got: HEADER_LEN + payload.len(),
            }
            .into());
        };
        payload.extend_from_slice(&chunk.bytes);
    }
    Ok(payload)
}

/// Writes `msg` as the one message of `send` and finishes the stream.
pub async fn write_frame<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
) -> Result<(), TransportError> {
    write_message(send, msg).await?;
    finish(send)
}

/// Ends the sending side of `send`: the peer reads to its end.
pub fn finish(send: &mut SendStream) -> Result<(), TransportError> {
    send.finish().map_err(|e| TransportError::Stream {
        doing: "finishing a message",
        reason: e.to_string(),
    })
}

/// Writes `msg` and leaves the stream open (see [`read_message`]).
pub async fn write_message<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
) -> Result<(), TransportError> {
    let bytes = codec::encode(msg)?;
    send.write_all(&bytes)
        .await
        .map_err(|e| write_err("sending a message", e))
}

/// Sends `req` on a new stream of `conn` and waits for the reply.
pub async fn request<Req: Serialize, Rep: DeserializeOwned>(
    conn: &Connection,
    req: &Req,
) -> Result<Rep, TransportError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| TransportError::Connection {
            peer: conn.remote_address(),
            cause: e,
        })?;
    write_frame(&mut send, req).await?;
    read_frame(&mut recv).await
}
