//! The protobuf codec of the `oip.v1` services (`build.rs` names it): prost's, except
//! that a message that is not valid protobuf (random bytes, a wrong wire type, invalid
//! UTF-8 in a string) is INVALID_ARGUMENT naming where it broke, not INTERNAL
//! (records.md: "a request message that cannot be decoded is INVALID_ARGUMENT").

use std::marker::PhantomData;

use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic_prost::ProstEncoder;

/// A [`tonic::codec::Codec`] encoding `T` and decoding `U` with prost.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
    }
}

/// Decodes `U`; a malformed message is INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf.copy_to_bytes(buf.remaining())).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes one message; INVALID_ARGUMENT naming where it breaks when it is malformed.
pub fn decode_message<U: Message + Default>(bytes: Bytes) -> Result<U, Status> {
    U::decode(bytes.clone())
        .map_err(|e| crate::error::undecodable(short_name::<U>(), &locate::<U>(&bytes), e))
}

/// `RegisterWorkersRequest` of `oip_gateway::proto::oip::v1::RegisterWorkersRequest`.
fn short_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

/// The repeated field of a batch request, for naming the record at fault.
fn list_name<U>() -> Option<&'static str> {
    Some(match short_name::<U>() {
        "RegisterWorkersRequest" => "workers",
        "ReportOrdersRequest" => "orders",
        "SubmitDeclarationsRequest" => "declarations",
        "ReportAccidentsRequest" => "accidents",
        "SubmitRequest" => "records",
        _ => return None,
    })
}

/// Where a message that failed to decode breaks: the top-level field entry that does
/// not decode on its own (" at workers[3]", " at field 2 (entry 0)"), or the byte
/// offset where the wire format itself breaks. Empty when it cannot be told.
fn locate<U: Message + Default>(bytes: &Bytes) -> String {
    let mut rest = bytes.clone();
    let mut seen: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    while rest.has_remaining() {
        let start = bytes.len() - rest.remaining();
        let step = (|| {
            let (tag, wire_type) = decode_key(&mut rest).ok()?;
            if wire_type == WireType::LengthDelimited {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                if len > rest.remaining() {
                    return None;
                }
                rest.advance(len);
            } else {
                skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?;
            }
            Some(tag)
        })();
        let Some(tag) = step else {
            return format!(" (broken at byte {start})");
        };
        let end = bytes.len() - rest.remaining();
        let entry = seen.entry(tag).or_default();
        let index = *entry;
        *entry += 1;
        if U::decode(bytes.slice(start..end)).is_err() {
            return match (tag, list_name::<U>()) {
                (1, Some(list)) => format!(" at {list}[{index}]"),
                _ => format!(" at field {tag} (entry {index})"),
            };
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn decode<U: Message + Default>(bytes: &[u8]) -> Result<U, Status> {
        decode_message(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn a_bad_string_names_its_record() {
        let good = proto::Worker {
            worker_id: "W1".into(),
            ..Default::default()
        };
        let req = proto::RegisterWorkersRequest {
            workers: vec![good.clone(), good.clone(), good],
        };
        let mut bytes = req.encode_to_vec();
        // Corrupt the last worker's id (its last byte "1" → 0xFF).
        let last = bytes.iter().rposition(|b| *b == b'1').unwrap_or(0);
        bytes[last] = 0xFF;
        let e = decode::<proto::RegisterWorkersRequest>(&bytes).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("at workers[2]"), "{}", e.message());
        assert!(
            e.message().contains("RegisterWorkersRequest"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn random_bytes_are_invalid_argument() {
        let e = decode::<proto::SubmitRequest>(&[0xFF, 0xFF, 0xFF, 0x01]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let ok = decode::<proto::SubmitRequest>(&[]).map(|r| r.records.len());
        assert_eq!(ok.ok(), Some(0));
    }
}
