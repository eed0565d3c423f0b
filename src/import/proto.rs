//! A protobuf wire-format reader, just enough to decode ONNX files without generated code.
//!
//! A message is a sequence of fields, each a key (`field number << 3 | wire type`) followed
//! by a varint, a 4- or 8-byte little-endian word, or a length-prefixed byte string (a
//! nested message, a string, bytes or a packed repeated field). The reader borrows the
//! input and never allocates from a length it reads: a length-prefixed field is a slice of
//! the input, checked against what is left before it is taken, so arbitrary bytes give a
//! [`ProtoError`] with the byte offset at fault, never a panic or a huge allocation.

use thiserror::Error;

/// What is wrong with the bytes at an offset.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProtoErrorKind {
    /// The input ends inside a field.
    #[error("the input ends inside a field")]
    Truncated,
    /// A varint runs over ten bytes.
    #[error("a varint is longer than ten bytes")]
    VarintTooLong,
    /// The key names field number 0, which protobuf reserves.
    #[error("field number 0 is invalid")]
    FieldZero,
    /// A wire type this reader does not know (or the deprecated groups, 3 and 4).
    #[error("unsupported wire type {0}")]
    WireType(u8),
    /// A length prefix runs past the end of the enclosing message.
    #[error("a length of {len} bytes runs past the end of the input ({left} bytes left)")]
    Length {
        /// The declared length.
        len: u64,
        /// The bytes left in the enclosing message.
        left: usize,
    },
    /// A field has a wire type its schema does not allow.
    #[error("field {field} of {message} has wire type {wire}, expected {expected}")]
    FieldType {
        /// The message being decoded (`NodeProto`).
        message: &'static str,
        /// The field number.
        field: u32,
        /// The wire type found.
        wire: u8,
        /// What the schema says, in words.
        expected: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("field {field} of {message} is not valid UTF-8")]
    Utf8 {
        /// The message being decoded.
        message: &'static str,
        /// The field number.
        field: u32,
    },
    /// A packed field's length is not a multiple of its element size.
    #[error("a packed field of {len} bytes is not a whole number of {size}-byte elements")]
    Packed {
        /// The field's length in bytes.
        len: usize,
        /// The element size.
        size: usize,
    },
}

/// An error at a byte offset of the input.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("byte {offset}: {kind}")]
pub struct ProtoError {
    /// The offset from the start of the file.
    pub offset: usize,
    /// What is wrong.
    pub kind: ProtoErrorKind,
}

/// The payload of one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: a nested message, string, bytes or packed repeated scalars.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl Wire<'_> {
    /// The wire type number.
    fn number(&self) -> u8 {
        match self {
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Bytes(_) => 2,
            Wire::Fixed32(_) => 5,
        }
    }
}

/// One decoded field: its number, payload and where its payload starts.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    /// The field number.
    pub number: u32,
    /// The payload.
    pub wire: Wire<'a>,
    /// The offset of the payload from the start of the file.
    pub offset: usize,
    /// The message the field belongs to, for error messages.
    message: &'static str,
}

/// Reads the fields of one message in order.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The offset of `bytes[0]` from the start of the file.
    base: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over a whole message (or file) named `message` in errors.
    pub fn new(bytes: &'a [u8], message: &'static str) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            base: 0,
            message,
        }
    }

    /// A reader over the nested message in `field`.
    pub fn nested(field: &Field<'a>, message: &'static str) -> Result<Reader<'a>, ProtoError> {
        Ok(Reader {
            bytes: field.bytes()?,
            pos: 0,
            base: field.offset,
            message,
        })
    }

    fn error(&self, at: usize, kind: ProtoErrorKind) -> ProtoError {
        ProtoError {
            offset: self.base + at,
            kind,
        }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.error(start, ProtoErrorKind::Truncated));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error(start, ProtoErrorKind::VarintTooLong))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.error(start, ProtoErrorKind::Truncated))?;
        self.pos = end;
        Ok(&self.bytes[start..end])
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>, ProtoError> {
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let key_at = self.pos;
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).unwrap_or(u32::MAX);
        if number == 0 {
            return Err(self.error(key_at, ProtoErrorKind::FieldZero));
        }
        let offset = self.base + self.pos;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            }
            2 => {
                let len_at = self.pos;
                let len = self.varint()?;
                let left = self.bytes.len() - self.pos;
                let n = usize::try_from(len)
                    .ok()
                    .filter(|&n| n <= left)
                    .ok_or_else(|| self.error(len_at, ProtoErrorKind::Length { len, left }))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            }
            other => return Err(self.error(key_at, ProtoErrorKind::WireType(other as u8))),
        };
        // A length-delimited payload starts after its length prefix.
        let offset = match wire {
            Wire::Bytes(b) => self.base + self.pos - b.len(),
            _ => offset,
        };
        Ok(Some(Field {
            number,
            wire,
            offset,
            message: self.message,
        }))
    }
}

impl<'a> Field<'a> {
    fn wrong(&self, expected: &'static str) -> ProtoError {
        ProtoError {
            offset: self.offset,
            kind: ProtoErrorKind::FieldType {
                message: self.message,
                field: self.number,
                wire: self.wire.number(),
                expected,
            },
        }
    }

    /// The payload of a length-delimited field.
    pub fn bytes(&self) -> Result<&'a [u8], ProtoError> {
        match self.wire {
            Wire::Bytes(b) => Ok(b),
            _ => Err(self.wrong("length-delimited")),
        }
    }

    /// A string field.
    pub fn string(&self) -> Result<String, ProtoError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError {
            offset: self.offset,
            kind: ProtoErrorKind::Utf8 {
                message: self.message,
                field: self.number,
            },
        })
    }

    /// A varint field as a two's-complement `int64` (or `int32`, `enum`, `bool`).
    pub fn int(&self) -> Result<i64, ProtoError> {
        match self.wire {
            Wire::Varint(v) => Ok(v as i64),
            _ => Err(self.wrong("varint")),
        }
    }

    /// A `float` field.
    pub fn float(&self) -> Result<f32, ProtoError> {
        match self.wire {
            Wire::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(self.wrong("32-bit")),
        }
    }

    /// Appends a repeated `int64`/`int32` field, packed or not, to `out`.
    pub fn push_ints(&self, out: &mut Vec<i64>) -> Result<(), ProtoError> {
        match self.wire {
            Wire::Varint(v) => out.push(v as i64),
            Wire::Bytes(b) => {
                let mut r = Reader {
                    bytes: b,
                    pos: 0,
                    base: self.offset,
                    message: self.message,
                };
                while r.pos < b.len() {
                    out.push(r.varint()? as i64);
                }
            }
            _ => return Err(self.wrong("varint or packed varints")),
        }
        Ok(())
    }

    /// Appends a repeated `float` field, packed or not, to `out`.
    pub fn push_floats(&self, out: &mut Vec<f32>) -> Result<(), ProtoError> {
        match self.wire {
            Wire::Fixed32(v) => out.push(f32::from_bits(v)),
            Wire::Bytes(b) => {
                if b.len() % 4 != 0 {
                    return Err(ProtoError {
                        offset: self.offset,
                        kind: ProtoErrorKind::Packed {
                            len: b.len(),
                            size: 4,
                        },
                    });
                }
                out.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            _ => return Err(self.wrong("32-bit or packed 32-bit")),
        }
        Ok(())
    }

    /// Appends a repeated `double` field, packed or not, to `out`.
    pub fn push_doubles(&self, out: &mut Vec<f64>) -> Result<(), ProtoError> {
        match self.wire {
            Wire::Fixed64(v) => out.push(f64::from_bits(v)),
            Wire::Bytes(b) => {
                if b.len() % 8 != 0 {
                    return Err(ProtoError {
                        offset: self.offset,
                        kind: ProtoErrorKind::Packed {
                            len: b.len(),
                            size: 8,
                        },
                    });
                }
                out.extend(
                    b.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))),
                );
            }
            _ => return Err(self.wrong("64-bit or packed 64-bit")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(bytes: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ProtoError> {
        let mut r = Reader::new(bytes, "test");
        let mut v = Vec::new();
        while let Some(f) = r.next_field()? {
            v.push((f.number, f.wire));
        }
        Ok(v)
    }

    /// Each wire type decodes, with multi-byte varints and a nested payload.
    #[test]
    fn reads_every_wire_type() {
        // field 1 varint 300; field 2 fixed64 1; field 3 bytes "ab"; field 4 fixed32 7.
        let bytes = [
            0x08, 0xac, 0x02, 0x11, 1, 0, 0, 0, 0, 0, 0, 0, 0x1a, 2, b'a', b'b', 0x25, 7, 0, 0, 0,
        ];
        assert_eq!(
            fields(&bytes).unwrap(),
            vec![
                (1, Wire::Varint(300)),
                (2, Wire::Fixed64(1)),
                (3, Wire::Bytes(b"ab")),
                (4, Wire::Fixed32(7)),
            ]
        );
    }

    /// Negative int64 values are ten-byte varints in two's complement.
    #[test]
    fn negative_ints_round_trip() {
        let mut bytes = vec![0x08];
        bytes.extend([0xff; 9]);
        bytes.push(0x01);
        let mut r = Reader::new(&bytes, "test");
        assert_eq!(r.next_field().unwrap().unwrap().int().unwrap(), -1);
    }

    /// A length beyond the input is refused with the offset of the length, before any
    /// allocation.
    #[test]
    fn refuses_a_length_past_the_end() {
        let bytes = [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2];
        let err = fields(&bytes).unwrap_err();
        assert_eq!(err.offset, 1);
        assert!(
            matches!(err.kind, ProtoErrorKind::Length { left: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn refuses_groups_and_field_zero() {
        assert_eq!(
            fields(&[0x0b]).unwrap_err().kind,
            ProtoErrorKind::WireType(3)
        );
        assert_eq!(
            fields(&[0x00, 0]).unwrap_err().kind,
            ProtoErrorKind::FieldZero
        );
        assert_eq!(fields(&[0x08]).unwrap_err().kind, ProtoErrorKind::Truncated);
        let long = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
        ];
        assert_eq!(
            fields(&long).unwrap_err().kind,
            ProtoErrorKind::VarintTooLong
        );
    }

    /// Packed and unpacked repeated fields give the same values.
    #[test]
    fn packed_and_unpacked_repeated_fields() {
        let packed = [0x0a, 3, 1, 0x96, 0x01];
        let unpacked = [0x08, 1, 0x08, 0x96, 0x01];
        for bytes in [&packed[..], &unpacked[..]] {
            let mut r = Reader::new(bytes, "test");
            let mut v = Vec::new();
            while let Some(f) = r.next_field().unwrap() {
                f.push_ints(&mut v).unwrap();
            }
            assert_eq!(v, vec![1, 150]);
        }
        let mut r = Reader::new(&[0x0a, 3, 0, 0, 0], "test");
        let f = r.next_field().unwrap().unwrap();
        let err = f.push_floats(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind, ProtoErrorKind::Packed { len: 3, size: 4 });
    }

    proptest! {
        /// Arbitrary bytes never panic: every field is read or an error is returned, and
        /// every accessor on every field returns instead of panicking.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = Reader::new(&bytes, "test");
            while let Ok(Some(f)) = r.next_field() {
                let _ = f.string();
                let _ = f.int();
                let _ = f.float();
                let _ = f.push_ints(&mut Vec::new());
                let _ = f.push_floats(&mut Vec::new());
                let _ = f.push_doubles(&mut Vec::new());
                if let Ok(mut inner) = Reader::nested(&f, "inner") {
                    while let Ok(Some(_)) = inner.next_field() {}
                }
            }
        }
    }
}
