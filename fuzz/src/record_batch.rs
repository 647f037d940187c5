//! Checks for the RecordBatch v2 decoder (`streambus-record`): header
//! parsing, `validate_batch`, `decode_records`, `retain_records` and
//! `BatchIter`, on arbitrary bytes.
//!
//! Input layout: byte 0 is a control byte, the rest is the batch.
//!
//! * bit 0: rewrite `batchLength` so it matches the input (if the input
//!   holds a whole header), so mutations of the body still frame;
//! * bit 1: recompute the CRC after that, so mutations of attributes and
//!   records get past the CRC check and reach the record decoder;
//! * bits 2-7: which records `retain_records` keeps (record `i` is kept
//!   when bit `2 + i % 6` is set).
//!
//! Everything must return `Ok` or `Err`, never panic, and the decoders must
//! agree with each other (see [`check`]).
//!
//! This file is shared, via `#[path]`, with the stable replay test
//! `crates/record/tests/fuzz_corpus.rs`, so it uses nothing but
//! `streambus-record`, `bytes` and the sibling module `corpus`.

use bytes::Bytes;

use streambus_record::{
    BatchBuilder, BatchHeader, BatchIter, DecodedRecord, HEADER_SIZE, LOG_OVERHEAD, MAGIC, Record,
    RecordError, compute_crc, decode_records, retain_records, validate_batch,
};

/// Control bit: make `batchLength` match the input length.
pub const FIX_LENGTH: u8 = 0x01;
/// Control bit: recompute the CRC.
pub const FIX_CRC: u8 = 0x02;

/// Position of the CRC field in the header.
const CRC_AT: usize = 17;
/// Position of the `batchLength` field in the header.
const LENGTH_AT: usize = 8;

/// Runs every check on one fuzzer input.
pub fn check(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut batch = rest.to_vec();
    apply_fixups(control, &mut batch);
    check_one(control, &batch);
    // The same bytes as a stream of concatenated batches (a segment file or
    // a fetch response): every complete batch it yields gets the same checks.
    check_iter(control, &batch);
}

/// Applies the control byte's fix-ups to `batch` in place.
pub fn apply_fixups(control: u8, batch: &mut [u8]) {
    if batch.len() < HEADER_SIZE {
        return;
    }
    if control & FIX_LENGTH != 0 {
        let len = (batch.len() - LOG_OVERHEAD) as i32;
        batch[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
    }
    if control & FIX_CRC != 0 {
        let crc = compute_crc(batch);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Builds a fuzzer input (control byte + batch) from a batch, with both
/// fix-ups off (the batch is used exactly as given) and every record kept.
pub fn input_for(batch: &[u8], control: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() + 1);
    out.push(control);
    out.extend_from_slice(batch);
    out
}

fn keep_record(control: u8, i: usize) -> bool {
    control & (1 << (2 + i % 6)) != 0
}

/// Checks one buffer that is supposed to hold exactly one batch.
fn check_one(control: u8, batch: &[u8]) {
    let parsed = BatchHeader::parse(batch);
    if let Ok(h) = &parsed {
        check_header(h);
    }
    let validated = validate_batch(batch);
    let decoded = decode_records(batch);
    let mut kept_flags = Vec::new();
    let retained = retain_records(batch, |_| {
        let keep = keep_record(control, kept_flags.len());
        kept_flags.push(keep);
        keep
    });
    match (&validated, &decoded) {
        (Ok(h), Ok(records)) => {
            assert_eq!(Ok(h), parsed.as_ref(), "validate_batch and parse disagree");
            check_valid(h, batch, records);
            let retained = retained.expect("retain_records refused a valid batch");
            check_retained(h, batch, records, &kept_flags, retained);
        }
        (Err(e), Err(d)) => {
            assert_eq!(e, d, "validate_batch and decode_records fail differently");
            assert!(
                retained.is_err(),
                "retain_records accepted a batch validate_batch refuses ({e})"
            );
            // Header errors are reported before anything else.
            if let Err(p) = &parsed {
                assert_eq!(p, e, "header error not reported first");
            }
        }
        (v, d) => panic!(
            "validate_batch {v:?} but decode_records {:?}",
            d.as_ref().map(Vec::len)
        ),
    }
}

/// Properties of any header `parse` accepts.
fn check_header(h: &BatchHeader) {
    assert_eq!(h.magic, MAGIC);
    assert!(h.total_size() >= HEADER_SIZE);
    assert!(h.base_offset >= 0);
    assert!(h.last_offset_delta >= 0 && h.record_count >= 0);
    assert_eq!(
        Some(h.last_offset()),
        h.base_offset.checked_add(i64::from(h.last_offset_delta))
    );
    // These must only report, never panic, whatever the attributes say.
    let _ = h.compression();
    let _ = (h.is_control(), h.is_transactional(), h.is_log_append_time());
}

/// Properties of a batch `validate_batch` accepts, and of its records.
fn check_valid(h: &BatchHeader, batch: &[u8], records: &[DecodedRecord]) {
    assert_eq!(h.total_size(), batch.len());
    assert_eq!(compute_crc(batch), h.crc);
    let codec = h
        .compression()
        .expect("a valid batch has a supported codec");
    assert!(h.record_count > 0);
    assert_eq!(records.len(), h.record_count as usize);
    let mut prev = None;
    for r in records {
        assert!((h.base_offset..=h.last_offset()).contains(&r.offset));
        assert!(prev.is_none_or(|p| r.offset > p), "offsets not increasing");
        prev = Some(r.offset);
        if h.is_log_append_time() {
            assert_eq!(r.timestamp_ms, h.max_timestamp);
        }
    }
    if !h.is_log_append_time() {
        let max = records.iter().map(|r| r.timestamp_ms).max();
        assert_eq!(
            max,
            Some(h.max_timestamp),
            "maxTimestamp is not the largest"
        );
    }
    // Re-encoding the decoded records gives a batch with the same records.
    let mut builder = BatchBuilder::new(codec);
    for r in records {
        builder.push(&Record {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp_ms: r.timestamp_ms,
        });
    }
    let rebuilt = builder.build();
    let rh = validate_batch(&rebuilt).expect("re-encoded batch is invalid");
    assert_eq!(rh.record_count, h.record_count);
    let again = decode_records(&rebuilt).expect("re-encoded batch does not decode");
    for (a, b) in records.iter().zip(&again) {
        assert_eq!(
            (&a.key, &a.value, &a.headers, a.timestamp_ms),
            (&b.key, &b.value, &b.headers, b.timestamp_ms),
            "record changed by re-encoding"
        );
    }
}

/// Properties of `retain_records` on a valid batch.
fn check_retained(
    h: &BatchHeader,
    batch: &[u8],
    records: &[DecodedRecord],
    kept_flags: &[bool],
    retained: Option<Bytes>,
) {
    assert_eq!(
        kept_flags.len(),
        records.len(),
        "keep not asked once per record"
    );
    let kept: Vec<&DecodedRecord> = records
        .iter()
        .zip(kept_flags)
        .filter(|(_, k)| **k)
        .map(|(r, _)| r)
        .collect();
    let Some(out) = retained else {
        assert!(kept.is_empty(), "retain_records dropped kept records");
        return;
    };
    assert!(
        !kept.is_empty(),
        "retain_records kept a batch with no kept record"
    );
    if kept.len() == records.len() {
        assert_eq!(&out[..], batch, "keeping everything changed the batch");
    }
    let oh = validate_batch(&out).expect("retained batch is invalid");
    assert_eq!(oh.base_offset, h.base_offset);
    assert_eq!(oh.last_offset(), h.last_offset());
    assert_eq!(oh.partition_leader_epoch, h.partition_leader_epoch);
    assert_eq!(oh.attributes, h.attributes);
    assert_eq!(
        (oh.producer_id, oh.producer_epoch, oh.base_sequence),
        (h.producer_id, h.producer_epoch, h.base_sequence)
    );
    let got = decode_records(&out).expect("retained batch does not decode");
    assert_eq!(got.len(), kept.len());
    for (g, k) in got.iter().zip(&kept) {
        assert_eq!(&g, k, "retained record differs from the original");
    }
}

/// Iterates `buf` as concatenated batches; every yielded batch is checked
/// like a single batch, and the iterator's positions must add up.
fn check_iter(control: u8, buf: &[u8]) {
    let mut iter = BatchIter::new(buf);
    let mut pos = 0usize;
    let mut count = 0;
    while let Some(item) = iter.next() {
        match item {
            Ok((h, bytes)) => {
                check_header(&h);
                assert_eq!(bytes.len(), h.total_size());
                assert_eq!(bytes, &buf[pos..pos + bytes.len()]);
                pos += bytes.len();
                assert_eq!(iter.position(), pos);
                // The first batch is `buf` itself when it is alone; that was
                // checked already.
                if bytes.len() != buf.len() {
                    check_one(control, bytes);
                }
            }
            Err(e) => {
                assert!(
                    !matches!(e, RecordError::BadCrc { .. }),
                    "BatchIter checks no CRC"
                );
                assert!(iter.next().is_none(), "BatchIter goes on after an error");
                break;
            }
        }
        count += 1;
        assert!(
            count <= buf.len() / HEADER_SIZE,
            "more batches than bytes allow"
        );
    }
    assert!(iter.position() <= buf.len());
}
