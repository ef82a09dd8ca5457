//! CBOR in both directions.
//!
//! Reading is tolerant, because four SDK families encode differently
//! (PROTOCOL.md 3.1, 9.2): definite and indefinite lengths (Java writes every
//! map indefinite and long text chunked), `null` for any optional field
//! (treated as absent), unknown keys (ignored), and floats with an integral
//! value where an integer is expected (Node encodes integers above 2^53 as
//! float64). Decoding is done by `ciborium` into a value tree, which reads
//! strings in bounded chunks, so a lying length cannot make it allocate.
//!
//! Writing is strict: definite lengths, shortest integer heads, byte strings
//! for payloads, text for everything textual, no tags and never `null`.

use ciborium::value::Value;
use ciborium_ll::{simple, Encoder, Header};

/// Why a payload is not the request it should be. The message is what the
/// client sees as `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

pub type FieldResult<T> = Result<T, FieldError>;

/// Decodes one CBOR data item from `payload`.
pub fn decode(payload: &[u8]) -> Result<Value, String> {
    ciborium::de::from_reader(payload).map_err(|e| format!("payload is not CBOR: {e}"))
}

/// Read access to a CBOR map, by text key. `path` names the map in error
/// messages (`definition.exportDefinition.kinesis[0]`).
#[derive(Clone, Copy)]
pub struct MapReader<'a> {
    entries: &'a [(Value, Value)],
    path: &'a str,
}

impl<'a> MapReader<'a> {
    pub fn new(value: &'a Value, path: &'a str) -> FieldResult<Self> {
        match value {
            Value::Map(entries) => Ok(MapReader { entries, path }),
            _ => Err(FieldError(format!("{} must be a map", display_path(path)))),
        }
    }

    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The value under `key`; `null` counts as absent. Keys other than text
    /// never match, and the first of duplicated keys wins.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.entries.iter().find_map(|(k, v)| match (k, v) {
            (Value::Null, _) | (_, Value::Null) => None,
            (Value::Text(k), v) if k == key => Some(v),
            _ => None,
        })
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn wrong_type(&self, key: &str, expected: &str) -> FieldError {
        FieldError(format!("{} must be {expected}", self.field(key)))
    }

    pub fn required<T>(&self, key: &str, value: FieldResult<Option<T>>) -> FieldResult<T> {
        value?.ok_or_else(|| FieldError(format!("{} is required", self.field(key))))
    }

    pub fn text(&self, key: &str) -> FieldResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong_type(key, "a text string")),
        }
    }

    /// An integer in the signed 64-bit range; an integral float is accepted.
    pub fn int(&self, key: &str) -> FieldResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => i64::try_from(i128::from(*i))
                .map(Some)
                .map_err(|_| self.wrong_type(key, "a 64-bit signed integer")),
            Some(Value::Float(f))
                if f.fract() == 0.0 && *f >= -(2f64.powi(63)) && *f < 2f64.powi(63) =>
            {
                // Truncation is exact: the value is integral and in range.
                Ok(Some(*f as i64))
            }
            Some(_) => Err(self.wrong_type(key, "an integer")),
        }
    }

    /// An integer checked against the model's bounds.
    pub fn int_in(&self, key: &str, min: i64, max: i64) -> FieldResult<Option<i64>> {
        match self.int(key)? {
            Some(v) if v < min || v > max => Err(FieldError(format!(
                "{} must be between {min} and {max}, got {v}",
                self.field(key)
            ))),
            v => Ok(v),
        }
    }

    pub fn bool(&self, key: &str) -> FieldResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(key, "a boolean")),
        }
    }

    /// A byte string; a text string gives its UTF-8 bytes, because
    /// greengrasssdk 1.5.0 does not type-check and sends a Python `str`
    /// payload as CBOR text (PROTOCOL.md 9.3; weir decision).
    pub fn bytes(&self, key: &str) -> FieldResult<Option<Vec<u8>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(Value::Text(s)) => Ok(Some(s.clone().into_bytes())),
            Some(_) => Err(self.wrong_type(key, "a byte string")),
        }
    }

    pub fn map(&self, key: &str, path: &'a str) -> FieldResult<Option<MapReader<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => MapReader::new(v, path).map(Some),
        }
    }

    pub fn array(&self, key: &str) -> FieldResult<Option<&'a [Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(self.wrong_type(key, "an array")),
        }
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "the request"
    } else {
        path
    }
}

/// Length field and op byte before a frame's payload.
const FRAME_HEADER: usize = 5;

/// A minimal CBOR writer over a `Vec<u8>`.
pub struct Writer {
    buf: Vec<u8>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::with_capacity(128)
    }
}

// Writing into a Vec cannot fail; the io::Result of ciborium's generic writer
// is an artefact of its signature.
const VEC_WRITE: &str = "writing CBOR into a Vec cannot fail";

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// A writer whose buffer starts with room for a frame header, so the
    /// finished frame needs no second copy ([`Writer::into_frame`]).
    pub fn for_frame(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(FRAME_HEADER + capacity);
        buf.resize(FRAME_HEADER, 0);
        Writer { buf }
    }

    /// The frame `length | op | payload` of a writer made by
    /// [`Writer::for_frame`].
    pub fn into_frame(mut self, op: u8) -> Vec<u8> {
        let len = i32::try_from(self.buf.len() - 4).expect("answer frames stay below 2^31 bytes");
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf[4] = op;
        self.buf
    }

    fn enc(&mut self) -> Encoder<&mut Vec<u8>> {
        Encoder::from(&mut self.buf)
    }

    pub fn map(&mut self, len: usize) -> &mut Self {
        self.enc().push(Header::Map(Some(len))).expect(VEC_WRITE);
        self
    }

    pub fn array(&mut self, len: usize) -> &mut Self {
        self.enc().push(Header::Array(Some(len))).expect(VEC_WRITE);
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.enc().text(value, None).expect(VEC_WRITE);
        self
    }

    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.enc().bytes(value, None).expect(VEC_WRITE);
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        let header = if value >= 0 {
            Header::Positive(value.unsigned_abs())
        } else {
            // CBOR stores a negative n as -1 - n.
            Header::Negative(!(value as u64))
        };
        self.enc().push(header).expect(VEC_WRITE);
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        let simple = if value { simple::TRUE } else { simple::FALSE };
        self.enc().push(Header::Simple(simple)).expect(VEC_WRITE);
        self
    }

    /// A key and a text value.
    pub fn kv_text(&mut self, key: &str, value: &str) -> &mut Self {
        self.text(key).text(value)
    }

    pub fn kv_int(&mut self, key: &str, value: i64) -> &mut Self {
        self.text(key).int(value)
    }

    pub fn kv_bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.text(key).bool(value)
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Optional fields are written only when present; this counts them for the
/// definite-length map header.
pub fn count_present(fields: &[bool]) -> usize {
    fields.iter().filter(|present| **present).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_use_the_shortest_head() {
        let mut w = Writer::default();
        w.array(7)
            .int(0)
            .int(23)
            .int(24)
            .int(256)
            .int(-1)
            .int(-25)
            .int(1 << 40);
        assert_eq!(
            w.into_vec(),
            [
                &[0x87, 0x00, 0x17, 0x18, 0x18, 0x19, 0x01, 0x00, 0x20, 0x38, 0x18][..],
                &[0x1b, 0, 0, 1, 0, 0, 0, 0, 0]
            ]
            .concat()
        );
    }

    #[test]
    fn reader_tolerates_what_the_sdks_send() {
        // {_ "a": null, "b": 7.0 (float64), "c": (_ "x" "y"), "d": h'01', "e": "hi", "z": 1} from Java/Node styles
        let bytes = [
            0xbf, 0x61, b'a', 0xf6, 0x61, b'b', 0xfb, 0x40, 0x1c, 0, 0, 0, 0, 0, 0, 0x61, b'c',
            0x7f, 0x61, b'x', 0x61, b'y', 0xff, 0x61, b'd', 0x41, 0x01, 0x61, b'e', 0x62, b'h',
            b'i', 0x61, b'z', 0x01, 0xff,
        ];
        let value = decode(&bytes).unwrap();
        let map = MapReader::new(&value, "").unwrap();
        assert_eq!(map.text("a"), Ok(None));
        assert_eq!(map.int("b"), Ok(Some(7)));
        assert_eq!(map.text("c"), Ok(Some("xy".into())));
        assert_eq!(map.bytes("d"), Ok(Some(vec![1])));
        assert_eq!(map.bytes("e"), Ok(Some(b"hi".to_vec())));
        assert!(map.int("e").is_err());
        assert_eq!(
            map.int_in("z", 2, 3).unwrap_err().0,
            "z must be between 2 and 3, got 1"
        );
    }

    #[test]
    fn a_lying_length_is_an_error_not_an_allocation() {
        // byte string claiming 2^62 bytes
        let bytes = [0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        assert!(decode(&bytes).is_err());
        // array claiming 2^62 items
        let bytes = [0x9b, 0x40, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(decode(&bytes).is_err());
    }
}

/// A borrowed CBOR value for the writer: the shapes weir's responses use.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Int(i64),
    Bool(bool),
    Text(&'a str),
    Map(Fields<'a>),
    Array(Vec<Field<'a>>),
}

/// The present fields of a map, in the model's key order.
pub type Fields<'a> = Vec<(&'static str, Field<'a>)>;

impl Writer {
    pub fn field(&mut self, field: &Field<'_>) -> &mut Self {
        match field {
            Field::Int(v) => self.int(*v),
            Field::Bool(v) => self.bool(*v),
            Field::Text(v) => self.text(v),
            Field::Map(fields) => self.fields(fields),
            Field::Array(items) => {
                self.array(items.len());
                for item in items {
                    self.field(item);
                }
                self
            }
        }
    }

    pub fn fields(&mut self, fields: &[(&'static str, Field<'_>)]) -> &mut Self {
        self.map(fields.len());
        for (key, value) in fields {
            self.text(key).field(value);
        }
        self
    }
}

/// Builds a [`Fields`] list, skipping absent optional values.
#[derive(Default)]
pub struct FieldsBuilder<'a>(Fields<'a>);

impl<'a> FieldsBuilder<'a> {
    pub fn put(mut self, key: &'static str, value: Field<'a>) -> Self {
        self.0.push((key, value));
        self
    }
    pub fn text(self, key: &'static str, value: &'a str) -> Self {
        self.put(key, Field::Text(value))
    }
    pub fn int(self, key: &'static str, value: i64) -> Self {
        self.put(key, Field::Int(value))
    }
    pub fn opt_text(self, key: &'static str, value: &'a Option<String>) -> Self {
        match value {
            Some(v) => self.text(key, v),
            None => self,
        }
    }
    pub fn opt_int(self, key: &'static str, value: Option<i64>) -> Self {
        match value {
            Some(v) => self.int(key, v),
            None => self,
        }
    }
    pub fn opt_bool(self, key: &'static str, value: Option<bool>) -> Self {
        match value {
            Some(v) => self.put(key, Field::Bool(v)),
            None => self,
        }
    }
    pub fn opt_map(self, key: &'static str, value: Option<Fields<'a>>) -> Self {
        match value {
            Some(v) => self.put(key, Field::Map(v)),
            None => self,
        }
    }
    pub fn build(self) -> Fields<'a> {
        self.0
    }
}
