//! Compact JSON for the journal's hot path, byte for byte what
//! `serde_json::to_writer` writes, at a fraction of its cost for the records
//! a redirect appends.
//!
//! A click is some 400 bytes of keys, ids and short strings. serde_json checks
//! each byte of each string against its escape table, one at a time; here a
//! string is checked eight bytes at a time and copied in one piece when
//! nothing in it needs escaping, which is nearly always. What this writer does
//! not handle itself (floats, bytes, 128-bit integers, non-string map keys,
//! serde_json's own raw values, an error from the value) makes [`write`] start
//! again with serde_json, so the output never differs.

use std::fmt::Display;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// Appends the compact JSON of `value` to `out`, exactly as
/// `serde_json::to_writer` would; on error `out` may hold a partial value.
pub fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), serde_json::Error> {
    let start = out.len();
    if value.serialize(&mut Writer { out: &mut *out }).is_ok() {
        return Ok(());
    }
    out.truncate(start);
    serde_json::to_writer(out, value)
}

/// Something this writer leaves to serde_json.
#[derive(Debug)]
struct Unsupported;

impl Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("left to serde_json")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: Display>(_: T) -> Self {
        Unsupported
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes of `w` is below 0x20, a quote or a backslash
/// (bytes of 0x80 and up never are: JSON strings carry UTF-8 as it is).
#[inline]
fn needs_escape(w: u64) -> bool {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    (below_space | zero(quote) | zero(backslash)) != 0
}

/// What follows the backslash when serde_json escapes a byte (`u` for
/// `\u00XX`); 0 for bytes it writes as they are.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether no byte of `bytes` needs escaping: eight at a time, the last
/// word overlapping the one before it; a short string byte by byte.
#[inline]
fn clean(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().all(|&b| ESCAPE[usize::from(b)] == 0);
    }
    // A word that cannot be read (never) reads as zeros, which need escaping.
    let word = |at: usize| {
        bytes.get(at..at + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()).map_or(0, u64::from_le_bytes)
    };
    let mut at = 0;
    while at + 8 < n {
        if needs_escape(word(at)) {
            return false;
        }
        at += 8;
    }
    !needs_escape(word(n - 8))
}

/// Appends `s` as a JSON string: in one piece when nothing in it needs
/// escaping (nearly always), else byte by byte as serde_json does.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if clean(bytes) {
        out.extend_from_slice(bytes);
    } else {
        let mut from = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let e = ESCAPE[usize::from(b)];
            if e == 0 {
                continue;
            }
            out.extend_from_slice(&bytes[from..i]);
            if e == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', e]);
            }
            from = i + 1;
        }
        out.extend_from_slice(&bytes[from..]);
    }
    out.push(b'"');
}

fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The integer methods of a serializer, each passing its value to `$via`.
macro_rules! integers {
    ($via:ident) => {
        integers!($via: serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
            serialize_u8(u8), serialize_u16(u16), serialize_u32(u32), serialize_u64(u64));
    };
    ($via:ident: $($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> Result<(), Unsupported> {
            self.$via(v)
        }
    )*};
}

/// Serializer methods for what is left to serde_json.
macro_rules! refuse {
    ($($method:ident($ty:ty)),*) => {$(
        fn $method(self, _: $ty) -> Result<(), Unsupported> {
            Err(Unsupported)
        }
    )*};
}

/// The methods a value and a map key share: strings, characters, unit
/// variants as their names, newtype structs as what they wrap.
macro_rules! strings {
    () => {
        fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
            write_str(self.out, v);
            Ok(())
        }
        fn serialize_char(self, v: char) -> Result<(), Unsupported> {
            write_str(self.out, v.encode_utf8(&mut [0; 4]));
            Ok(())
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
        ) -> Result<(), Unsupported> {
            write_str(self.out, variant);
            Ok(())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            value: &T,
        ) -> Result<(), Unsupported> {
            if name.starts_with(SERDE_JSON_PRIVATE) {
                return Err(Unsupported);
            }
            value.serialize(self)
        }
    };
}

impl<'b> Writer<'b> {
    /// Opens `{"variant":` and then `open`; the compound closes both.
    fn variant<'a>(&'a mut self, variant: &str, open: &[u8], close: &'static [u8]) -> Compound<'a, 'b> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.extend_from_slice(open);
        Compound { w: self, first: true, close }
    }

    fn int(&mut self, n: impl itoa::Integer) -> Result<(), Unsupported> {
        write_int(self.out, n);
        Ok(())
    }
}

/// serde_json's own types (raw values, arbitrary-precision numbers) are
/// structs with these names.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

impl<'a, 'b> ser::Serializer for &'a mut Writer<'b> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Compound<'a, 'b>;
    type SerializeTuple = Compound<'a, 'b>;
    type SerializeTupleStruct = Compound<'a, 'b>;
    type SerializeTupleVariant = Compound<'a, 'b>;
    type SerializeMap = Compound<'a, 'b>;
    type SerializeStruct = Compound<'a, 'b>;
    type SerializeStructVariant = Compound<'a, 'b>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    integers!(int);
    refuse!(serialize_f32(f32), serialize_f64(f64));
    strings!();
    refuse!(serialize_bytes(&[u8]));
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_none()
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a, 'b>, Unsupported> {
        self.out.push(b'[');
        Ok(Compound { w: self, first: true, close: b"]" })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a, 'b>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Compound<'a, 'b>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a, 'b>, Unsupported> {
        Ok(self.variant(variant, b":[", b"]}"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a, 'b>, Unsupported> {
        self.out.push(b'{');
        Ok(Compound { w: self, first: true, close: b"}" })
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Compound<'a, 'b>, Unsupported> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            return Err(Unsupported);
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a, 'b>, Unsupported> {
        Ok(self.variant(variant, b":{", b"}}"))
    }
}

/// An array or an object being written; `close` ends it (and the variant
/// object around it, if any).
struct Compound<'a, 'b> {
    w: &'a mut Writer<'b>,
    first: bool,
    close: &'static [u8],
}

impl Compound<'_, '_> {
    fn comma(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.w.out.push(b',');
        }
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.comma();
        value.serialize(&mut *self.w)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Unsupported> {
        self.comma();
        write_str(self.w.out, key);
        self.w.out.push(b':');
        value.serialize(&mut *self.w)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.w.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// The compound traits whose parts are elements of an array.
macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = Unsupported;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
                self.element(value)
            }
            fn end(self) -> Result<(), Unsupported> {
                Compound::end(self)
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.comma();
        key.serialize(Key { out: &mut *self.w.out })
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.w.out.push(b':');
        value.serialize(&mut *self.w)
    }
    fn end(self) -> Result<(), Unsupported> {
        Compound::end(self)
    }
}

/// The compound traits whose parts are the fields of an object.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = Unsupported;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Unsupported> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), Unsupported> {
                Compound::end(self)
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

/// A map key: strings as they are, integers quoted (as serde_json writes
/// them); anything else is left to serde_json.
struct Key<'a> {
    out: &'a mut Vec<u8>,
}

impl Key<'_> {
    fn quoted(self, n: impl itoa::Integer) -> Result<(), Unsupported> {
        self.out.push(b'"');
        write_int(self.out, n);
        self.out.push(b'"');
        Ok(())
    }
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Impossible<(), Unsupported>;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    strings!();
    integers!(quoted);
    refuse!(serialize_bool(bool), serialize_f32(f32), serialize_f64(f64), serialize_bytes(&[u8]));
    fn serialize_none(self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    /// Checks that `write` writes what serde_json writes; true when this
    /// writer did it without falling back.
    fn same<T: Serialize + ?Sized>(value: &T) -> bool {
        let mut fast = b"prefix".to_vec();
        write(&mut fast, value).unwrap();
        let mut slow = b"prefix".to_vec();
        serde_json::to_writer(&mut slow, value).unwrap();
        assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&slow));
        value.serialize(&mut Writer { out: &mut Vec::new() }).is_ok()
    }

    #[test]
    fn every_byte_in_every_position_of_a_word_is_escaped_as_serde_json_escapes_it() {
        for b in 0..=0x7fu8 {
            for at in 0..17 {
                let mut s = "abcdefghijklmnopq".to_string().into_bytes();
                s[at] = b;
                assert!(same(std::str::from_utf8(&s).unwrap()));
            }
        }
    }

    #[test]
    fn strings_of_any_length_and_content_come_out_as_serde_json_writes_them() {
        // A small deterministic generator over a pool of awkward characters.
        let pool = [
            'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\u{1}', '\u{1f}', '\u{7f}', 'é', '€', '😀',
            '\u{2028}',
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..64 {
            for _ in 0..20 {
                let s: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        pool[(seed % pool.len() as u64) as usize]
                    })
                    .collect();
                assert!(same(&s));
            }
        }
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i32, String),
        Struct { x: i64, tag: Option<&'static str> },
    }

    #[derive(Serialize)]
    struct Wrapper(u64);

    #[derive(Serialize)]
    struct Record<'a> {
        id: uuid::Uuid,
        #[serde(with = "time::serde::rfc3339")]
        at: time::OffsetDateTime,
        name: &'a str,
        missing: Option<String>,
        flags: Vec<bool>,
        shapes: Vec<Shape>,
        wrapped: Wrapper,
        counts: BTreeMap<u32, i16>,
        labels: BTreeMap<String, char>,
        empty: Vec<u8>,
        unit: (),
        #[serde(flatten)]
        extra: BTreeMap<&'a str, i8>,
    }

    #[test]
    fn records_of_every_shape_come_out_as_serde_json_writes_them() {
        let record = Record {
            id: uuid::Uuid::now_v7(),
            at: time::OffsetDateTime::now_utc(),
            name: "caf\u{e9} \"quoted\" \\ back",
            missing: None,
            flags: vec![true, false],
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(-3, "t".into()),
                Shape::Struct { x: i64::MIN, tag: Some("\u{0}") },
            ],
            wrapped: Wrapper(u64::MAX),
            counts: BTreeMap::from([(1, -1), (u32::MAX, i16::MIN)]),
            labels: BTreeMap::from([("k\n".to_string(), '"')]),
            empty: Vec::new(),
            unit: (),
            extra: BTreeMap::from([("flat", 1)]),
        };
        assert!(same(&record), "written here, not by serde_json");
        let click = crate::events::EnvelopeOf::new(
            "link.clicked",
            crate::tenant::TenantId::new(),
            "anonymous",
            &record,
        );
        assert!(same(&click));
    }

    #[test]
    fn what_this_writer_leaves_to_serde_json_comes_out_the_same() {
        // Floats, raw values, bytes, non-string keys and 128-bit integers.
        let envelope = crate::events::Envelope::new(
            "note.created",
            crate::tenant::TenantId::new(),
            "system",
            json!({ "a": [1, "b"] }),
        );
        for native in [
            same(&json!({ "pi": 3.25, "nested": [1.5e300, -0.0, 1], "s": "x" })),
            same(&envelope),
            same(&serde_bytes_like()),
            same(&BTreeMap::from([(true, 1)])),
            same(&u128::MAX),
            same(&f64::NAN),
        ] {
            assert!(!native, "left to serde_json");
        }
        assert!(same(&json!({ "n": -1, "s": "x", "a": [null, true] })), "integers are written here");
    }

    fn serde_bytes_like() -> impl Serialize {
        struct Bytes;
        impl Serialize for Bytes {
            fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b"\x00\xff")
            }
        }
        Bytes
    }

    #[test]
    fn an_error_from_the_value_is_serde_jsons_error() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no"))
            }
        }
        let mut out = Vec::new();
        assert_eq!(write(&mut out, &Fails).unwrap_err().to_string(), "no");
    }
}
