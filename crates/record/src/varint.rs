//! Zigzag variable-length integers as used by Kafka records
//! (`ByteUtils.writeVarint` / `writeVarlong`).

use crate::RecordError;

/// Appends `v` as a zigzag varint (at most 5 bytes).
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_unsigned(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Appends `v` as a zigzag varlong (at most 10 bytes).
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_unsigned(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes `put_varint(v)` writes.
pub(crate) fn varint_len(v: i32) -> usize {
    unsigned_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

/// Number of bytes `put_varlong(v)` writes.
pub(crate) fn varlong_len(v: i64) -> usize {
    unsigned_len(((v << 1) ^ (v >> 63)) as u64)
}

fn unsigned_len(v: u64) -> usize {
    // 7 bits a byte; 0 still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn get_unsigned(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64, RecordError> {
    let mut result: u64 = 0;
    for i in 0..max_bytes {
        let Some(&b) = buf.get(*pos) else {
            return Err(RecordError::Truncated {
                needed: *pos + 1,
                available: buf.len(),
            });
        };
        *pos += 1;
        result |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(result);
        }
    }
    Err(RecordError::Malformed(format!(
        "varint longer than {max_bytes} bytes"
    )))
}

/// Reads a zigzag varint at `*pos`, advancing it.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, RecordError> {
    let u = get_unsigned(buf, pos, 5)?;
    if u > u64::from(u32::MAX) {
        return Err(RecordError::Malformed("varint overflows 32 bits".into()));
    }
    let u = u as u32;
    Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
}

/// Reads a zigzag varlong at `*pos`, advancing it.
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, RecordError> {
    let u = get_unsigned(buf, pos, 10)?;
    Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_including_extremes() {
        for v in [0, 1, -1, 63, -64, 64, 300, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos).unwrap(), v);
            assert_eq!(pos, out.len());
        }
        for v in [0i64, -1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_len(v));
            let mut pos = 0;
            assert_eq!(get_varlong(&out, &mut pos).unwrap(), v);
        }
    }

    #[test]
    fn varint_matches_kafka_encoding() {
        // Kafka: zigzag(-1) = 1, zigzag(1) = 2, 300 -> zigzag 600 -> d8 04.
        let mut out = Vec::new();
        put_varint(&mut out, -1);
        put_varint(&mut out, 1);
        put_varint(&mut out, 300);
        assert_eq!(out, vec![0x01, 0x02, 0xd8, 0x04]);
    }

    #[test]
    fn overlong_or_truncated_varints_are_errors() {
        let mut pos = 0;
        assert!(get_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut pos).is_err());
        let mut pos = 0;
        assert!(matches!(
            get_varint(&[0x80], &mut pos),
            Err(RecordError::Truncated { .. })
        ));
    }
}
