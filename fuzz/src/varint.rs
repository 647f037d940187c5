//! Checks for the zigzag varint reader and writer of `streambus-record`
//! (`get_varint`, `get_varlong`, `put_varint`, `put_varlong`).
//!
//! Input layout: byte 0 is a control byte; the rest is read as a sequence
//! of varints, from the start, until the first error. Bit `i % 8` of the
//! control byte says whether the `i`-th value is read as a varlong (set) or
//! a varint (clear). The same bytes are also taken as little-endian
//! `i32`/`i64` values and round-tripped through the writer.
//!
//! This file is shared, via `#[path]`, with the stable replay test
//! `crates/record/tests/fuzz_corpus.rs`, so it uses nothing but
//! `streambus-record`.

use streambus_record::{RecordError, get_varint, get_varlong, put_varint, put_varlong};

/// Runs every check on one fuzzer input.
pub fn check(data: &[u8]) {
    let Some((&control, buf)) = data.split_first() else {
        return;
    };
    check_reader(control, buf);
    check_round_trip(buf);
}

/// Reads varints from `buf` until the first error, checking each result.
fn check_reader(control: u8, buf: &[u8]) {
    let mut pos = 0usize;
    let mut i = 0usize;
    loop {
        let long = control & (1 << (i % 8)) != 0;
        let max_len = if long { 10 } else { 5 };
        let start = pos;
        let result = if long {
            get_varlong(buf, &mut pos)
        } else {
            get_varint(buf, &mut pos).map(i64::from)
        };
        assert!(pos <= buf.len(), "position past the end");
        assert!(pos - start <= max_len, "read more than {max_len} bytes");
        match result {
            Ok(v) => {
                assert!(pos > start, "a value was read from no bytes");
                let consumed = &buf[start..pos];
                assert_eq!(consumed.last().map(|b| b & 0x80), Some(0));
                assert!(consumed[..consumed.len() - 1].iter().all(|b| b & 0x80 != 0));
                // Writing the value back gives the shortest encoding, which
                // the reader reads to the same value.
                let mut out = Vec::new();
                if long {
                    put_varlong(&mut out, v);
                } else {
                    put_varint(&mut out, v as i32);
                }
                assert!(out.len() <= consumed.len(), "writer longer than input");
                if canonical(consumed, long) {
                    assert_eq!(out, consumed, "canonical encoding not reproduced");
                }
                assert_eq!(read_back(&out, long), v);
            }
            Err(RecordError::Truncated { needed, available }) => {
                assert_eq!(available, buf.len());
                assert_eq!(pos, buf.len(), "truncated before the end");
                assert!(needed > available);
                assert!(buf[start..].iter().all(|b| b & 0x80 != 0));
                return;
            }
            Err(RecordError::Malformed(_)) => {
                let stop = buf[start..pos].iter().position(|b| b & 0x80 == 0);
                // Either too long (every byte read continues) or, for a
                // varint, a 5-byte value that does not fit 32 bits.
                assert!(
                    (stop.is_none() && pos - start == max_len)
                        || (!long && pos - start == 5 && buf[pos - 1] > 0x0f),
                    "unexpected Malformed at {start}..{pos}"
                );
                return;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
        i += 1;
    }
}

fn read_back(out: &[u8], long: bool) -> i64 {
    let mut p = 0;
    let v = if long {
        get_varlong(out, &mut p).expect("own varlong")
    } else {
        i64::from(get_varint(out, &mut p).expect("own varint"))
    };
    assert_eq!(p, out.len(), "own encoding not read whole");
    v
}

/// Whether an encoding is the one the writer produces: no redundant
/// trailing zero groups, and for a 10-byte varlong no bits past the 64th
/// (the reader drops those, as Kafka's `readVarlong` does).
fn canonical(enc: &[u8], long: bool) -> bool {
    let last = *enc.last().expect("non-empty");
    (enc.len() == 1 || last != 0) && !(long && enc.len() == 10 && last > 1)
}

/// Round-trips the input, taken as little-endian integers, through the writer.
fn check_round_trip(buf: &[u8]) {
    for c in buf.chunks_exact(4) {
        let v = i32::from_le_bytes(c.try_into().expect("4 bytes"));
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert!(!out.is_empty() && out.len() <= 5);
        assert_eq!(read_back(&out, false), i64::from(v));
    }
    for c in buf.chunks_exact(8) {
        let v = i64::from_le_bytes(c.try_into().expect("8 bytes"));
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        assert!(!out.is_empty() && out.len() <= 10);
        assert_eq!(read_back(&out, true), v);
    }
}
