//! Refuses request fields this server does not know. prost drops unknown
//! fields while decoding, so a newer hubble CLI sending a filter field we
//! lack would get every flow instead of the ones it asked for. The Observer
//! service decodes with [`CheckedCodec`], which first walks the request bytes
//! against the descriptors of our protos (written by `build.rs`) and answers
//! `InvalidArgument` naming the first unknown field number.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use prost_types::FileDescriptorSet;
use prost_types::field_descriptor_proto::Type;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::proto::observer::{
    GetAgentEventsRequest, GetAgentEventsResponse, GetDebugEventsRequest, GetDebugEventsResponse,
    GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse,
    GetNodesRequest, GetNodesResponse, ServerStatusRequest, ServerStatusResponse,
};
use crate::proto::peer::{ChangeNotification, NotifyRequest};

/// Descriptors of every message in our protos and their imports.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hubble_descriptor.bin"));

/// Nesting deeper than this is left to prost, which refuses it.
const MAX_DEPTH: usize = 100;

/// A message type the codec decodes; requests name their proto type so that
/// their unknown fields are refused, responses (read by our client) do not.
pub trait WireChecked {
    /// Full proto name of a request type, `None` for responses.
    const CHECKED_AS: Option<&'static str>;
}

macro_rules! wire_checked {
    ($($ty:ty => $name:expr),* $(,)?) => {
        $(impl WireChecked for $ty { const CHECKED_AS: Option<&'static str> = $name; })*
    };
}

wire_checked! {
    GetFlowsRequest => Some("observer.GetFlowsRequest"),
    GetAgentEventsRequest => Some("observer.GetAgentEventsRequest"),
    GetDebugEventsRequest => Some("observer.GetDebugEventsRequest"),
    GetNodesRequest => Some("observer.GetNodesRequest"),
    GetNamespacesRequest => Some("observer.GetNamespacesRequest"),
    ServerStatusRequest => Some("observer.ServerStatusRequest"),
    NotifyRequest => Some("peer.NotifyRequest"),
    // A newer server may send fields we lack; a reader just ignores them.
    GetFlowsResponse => None,
    GetAgentEventsResponse => None,
    GetDebugEventsResponse => None,
    GetNodesResponse => None,
    GetNamespacesResponse => None,
    ServerStatusResponse => None,
    ChangeNotification => None,
}

/// A field of a message: its name and, for message fields, the message type.
struct Field {
    name: String,
    message: Option<String>,
}

/// Known field numbers of every message, by full proto name.
type Schema = HashMap<String, HashMap<u32, Field>>;

fn add_messages(schema: &mut Schema, prefix: &str, messages: &[prost_types::DescriptorProto]) {
    for message in messages {
        let full = format!("{prefix}.{}", message.name());
        let fields = message
            .field
            .iter()
            .map(|f| {
                let nested = (f.r#type() == Type::Message)
                    .then(|| f.type_name().trim_start_matches('.').to_string());
                (
                    u32::try_from(f.number()).unwrap_or(0),
                    Field {
                        name: f.name().to_string(),
                        message: nested,
                    },
                )
            })
            .collect();
        schema.insert(full.clone(), fields);
        add_messages(schema, &full, &message.nested_type);
    }
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = Schema::new();
        // Written by our own build script: a failure here is a build defect,
        // and an empty schema would only make the check lenient.
        if let Ok(set) = FileDescriptorSet::decode(DESCRIPTORS) {
            for file in &set.file {
                add_messages(&mut schema, file.package(), &file.message_type);
            }
        }
        schema
    })
}

/// A field number the server's protos do not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Proto type that holds the field.
    pub message: String,
    /// Path of fields from the request down to that message.
    pub path: String,
    /// The unknown field number.
    pub number: u32,
}

impl std::fmt::Display for UnknownField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown field number {} in {} (at {}): this server does not implement it and \
             refuses rather than ignore it; drop the flag that sets it or upgrade Myelin",
            self.number, self.message, self.path
        )
    }
}

/// Walks `buf` as a `message`; the first field number not in our protos is
/// an error. Malformed bytes end the walk: prost's decode reports them.
pub fn find_unknown_field(message: &str, buf: &[u8]) -> Result<(), UnknownField> {
    walk(schema(), message, message, buf, 0)
}

fn walk(
    schema: &Schema,
    message: &str,
    path: &str,
    mut buf: &[u8],
    depth: usize,
) -> Result<(), UnknownField> {
    let Some(fields) = schema.get(message) else {
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    while buf.has_remaining() {
        let Ok((number, wire_type)) = decode_key(&mut buf) else {
            return Ok(());
        };
        let Some(field) = fields.get(&number) else {
            return Err(UnknownField {
                message: message.to_string(),
                path: path.to_string(),
                number,
            });
        };
        match (&field.message, wire_type) {
            (Some(nested), WireType::LengthDelimited) => {
                let Some(len) = decode_varint(&mut buf)
                    .ok()
                    .and_then(|l| usize::try_from(l).ok())
                    .filter(|l| *l <= buf.len())
                else {
                    return Ok(());
                };
                let (inner, rest) = buf.split_at(len);
                walk(
                    schema,
                    nested,
                    &format!("{path}.{}", field.name),
                    inner,
                    depth + 1,
                )?;
                buf = rest;
            }
            _ => {
                if skip_field(wire_type, number, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// tonic codec of the Observer service: prost encoding, and decoding that
/// refuses unknown request fields.
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireChecked + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(PhantomData)
    }
}

/// Decoder half of [`CheckedCodec`].
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + WireChecked> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        if let Some(message) = U::CHECKED_AS {
            find_unknown_field(message, &bytes)
                .map_err(|unknown| Status::invalid_argument(unknown.to_string()))?;
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("failed to decode the request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::flow::FlowFilter;
    use prost::encoding::{encode_key, encode_varint};

    #[test]
    fn known_fields_pass_and_an_unknown_filter_field_is_named() {
        let request = GetFlowsRequest {
            number: 3,
            whitelist: vec![FlowFilter {
                source_pod: vec!["default/a".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        assert_eq!(
            find_unknown_field("observer.GetFlowsRequest", &bytes),
            Ok(())
        );

        // The same whitelist filter with a field 77 (unknown) appended.
        let mut filter = FlowFilter {
            source_pod: vec!["default/a".into()],
            ..Default::default()
        }
        .encode_to_vec();
        encode_key(77, WireType::Varint, &mut filter);
        encode_varint(1, &mut filter);
        let mut bytes = Vec::new();
        encode_key(6, WireType::LengthDelimited, &mut bytes);
        encode_varint(filter.len() as u64, &mut bytes);
        bytes.extend_from_slice(&filter);
        assert_eq!(
            find_unknown_field("observer.GetFlowsRequest", &bytes),
            Err(UnknownField {
                message: "flow.FlowFilter".into(),
                path: "observer.GetFlowsRequest.whitelist".into(),
                number: 77,
            })
        );
    }
}
