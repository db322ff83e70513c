//! The few protobuf wire-format pieces the Event subset needs: encoding helpers and a field reader.

/// Varint wire type (int32, int64, enum).
pub const VARINT: u8 = 0;
/// Fixed 64-bit wire type (double).
pub const FIXED64: u8 = 1;
/// Length-delimited wire type (string, bytes, sub-message).
pub const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
/// Fixed 32-bit wire type (float).
pub const FIXED32: u8 = 5;

/// Nesting bound for deprecated groups, so hostile input cannot recurse without end.
const MAX_GROUP_DEPTH: u32 = 32;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// int32/int64/enum field; negatives are sign-extended to 10 bytes as protobuf specifies.
pub fn put_int(out: &mut Vec<u8>, field: u32, v: i64) {
    put_key(out, field, VARINT);
    put_varint(out, v as u64);
}

/// double field.
pub fn put_f64(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

/// float field.
pub fn put_f32(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

/// string, bytes or embedded message field.
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One decoded field; fixed values are kept as raw bits so the caller picks f32/f64.
#[derive(Debug)]
pub enum Field<'a> {
    /// Varint payload.
    Varint(u64),
    /// Fixed64 payload.
    Fixed64(u64),
    /// Length-delimited payload.
    Bytes(&'a [u8]),
    /// Fixed32 payload.
    Fixed32(u32),
    /// A skipped group (proto2 legacy).
    Group,
}

/// Iterates the top-level fields of one message; any malformed input yields `Err(reason)`.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// Reader over the serialized message `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| "truncated varint".to_string())?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflows 64 bits".into());
            }
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("field of {n} bytes runs past the message end"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn key(&mut self) -> Result<(u32, u8), String> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| "field number too large".to_string())?;
        if field == 0 {
            return Err("field number 0".into());
        }
        Ok((field, (key & 7) as u8))
    }

    fn value(&mut self, field: u32, wire: u8, depth: u32) -> Result<Field<'a>, String> {
        Ok(match wire {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => {
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().map_err(|_| "fixed64")?))
            }
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Field::Bytes(self.take(n)?)
            }
            FIXED32 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes(b.try_into().map_err(|_| "fixed32")?))
            }
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err("groups nested too deeply".into());
                }
                loop {
                    let (f, w) = self.key()?;
                    if w == END_GROUP {
                        if f != field {
                            return Err(format!("group {field} closed by end of group {f}"));
                        }
                        break;
                    }
                    self.value(f, w, depth + 1)?;
                }
                Field::Group
            }
            END_GROUP => return Err(format!("unexpected end of group {field}")),
            w => return Err(format!("invalid wire type {w}")),
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Field<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self
            .key()
            .and_then(|(f, w)| self.value(f, w, 0).map(|v| (f, v)));
        self.failed = r.is_err();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_every_wire_type() {
        let mut m = Vec::new();
        put_int(&mut m, 9, -1);
        put_f64(&mut m, 10, 1.5);
        put_f32(&mut m, 11, 2.5);
        put_bytes(&mut m, 12, b"abc");
        // group 13 holding a varint field 1, then end group 13
        m.extend_from_slice(&[(13 << 3) | 3, 1 << 3, 7, (13 << 3) | 4]);
        put_int(&mut m, 2, 42);
        let fields: Vec<_> = Fields::new(&m).collect::<Result<_, _>>().unwrap();
        assert_eq!(fields.len(), 6);
        assert!(matches!(fields[0], (9, Field::Varint(u64::MAX))));
        assert!(matches!(fields[4], (13, Field::Group)));
        assert!(matches!(fields[5], (2, Field::Varint(42))));
    }

    #[test]
    fn truncated_field_is_an_error() {
        let mut m = Vec::new();
        put_bytes(&mut m, 1, b"hello");
        m.pop();
        assert!(Fields::new(&m).any(|r| r.is_err()));
    }
}
