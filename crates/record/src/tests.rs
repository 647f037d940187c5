use bytes::Bytes;

use super::*;

fn rec(key: Option<&str>, value: Option<&str>, ts: i64) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: vec![],
        timestamp_ms: ts,
    }
}

fn batch(compression: Compression, records: &[Record]) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for r in records {
        b.push(r);
    }
    b.build().to_vec()
}

fn recrc(buf: &mut [u8]) {
    let crc = compute_crc(buf);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn crc_is_castagnoli() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn single_record_batch_matches_kafka_layout_byte_for_byte() {
    let b = batch(Compression::None, &[rec(None, Some("a"), 1000)]);
    // record: attrs 0, tsDelta 0, offsetDelta 0, key -1 (0x01), valueLen 1 (0x02), 'a', headers 0
    let record_body = [0x00, 0x00, 0x00, 0x01, 0x02, b'a', 0x00];
    let mut expected = Vec::new();
    expected.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
    expected.extend_from_slice(&(49 + 1 + record_body.len() as i32).to_be_bytes()); // batchLength
    expected.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    expected.push(2); // magic
    // CRC32C over attributes..end, computed outside this crate (a plain
    // bitwise Castagnoli implementation) so a wrong CRC range fails here.
    expected.extend_from_slice(&0xEBF1_884Bu32.to_be_bytes()); // crc
    expected.extend_from_slice(&0i16.to_be_bytes()); // attributes
    expected.extend_from_slice(&0i32.to_be_bytes()); // lastOffsetDelta
    expected.extend_from_slice(&1000i64.to_be_bytes()); // baseTimestamp
    expected.extend_from_slice(&1000i64.to_be_bytes()); // maxTimestamp
    expected.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
    expected.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    expected.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    expected.extend_from_slice(&1i32.to_be_bytes()); // recordCount
    expected.push((record_body.len() as u8) << 1); // record length varint (zigzag)
    expected.extend_from_slice(&record_body);
    assert_eq!(b, expected);
    assert_eq!(HEADER_SIZE, 61);
}

#[test]
fn records_round_trip_with_headers_and_nulls() {
    for compression in [Compression::None, Compression::Lz4] {
        let mut r1 = rec(Some("k1"), Some("v1"), 5);
        r1.headers = vec![
            Header {
                key: "h".into(),
                value: Some(Bytes::from_static(b"x")),
            },
            Header {
                key: "n".into(),
                value: None,
            },
        ];
        let records = vec![r1, rec(None, None, 3), rec(Some("k3"), Some(""), 9)];
        let mut b = BatchBuilder::new(compression).with_producer(7, 1, 42);
        for r in &records {
            b.push(r);
        }
        assert_eq!(b.len(), 3);
        let mut bytes = b.build().to_vec();
        set_base_offset(&mut bytes, 100);
        set_partition_leader_epoch(&mut bytes, 4);
        let h = validate_batch(&bytes).expect("valid after offset and epoch rewrite");
        assert_eq!(h.base_offset, 100);
        assert_eq!(h.partition_leader_epoch, 4);
        assert_eq!(h.compression().unwrap(), compression);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 1, 42)
        );
        assert_eq!((h.first_timestamp, h.max_timestamp), (5, 9));
        assert_eq!((h.last_offset(), h.next_offset()), (102, 103));
        let decoded = decode_records(&bytes).unwrap();
        assert_eq!(decoded.len(), 3);
        for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
            assert_eq!(d.offset, 100 + i as i64);
            assert_eq!(d.timestamp_ms, r.timestamp_ms);
            assert_eq!(d.key, r.key);
            assert_eq!(d.value, r.value);
            assert_eq!(d.headers, r.headers);
        }
    }
}

#[test]
fn lz4_batch_is_an_lz4_frame() {
    let value = "x".repeat(10_000);
    let b = batch(Compression::Lz4, &[rec(None, Some(&value), 1)]);
    assert!(b.len() < 1000, "compressible data compresses");
    assert_eq!(
        &b[HEADER_SIZE..HEADER_SIZE + 4],
        &[0x04, 0x22, 0x4d, 0x18],
        "LZ4 frame magic"
    );
}

#[test]
fn truncated_batch_is_rejected() {
    let b = batch(Compression::None, &[rec(None, Some("abc"), 1)]);
    for cut in [0, 10, 60, b.len() - 1] {
        assert!(
            matches!(
                validate_batch(&b[..cut]),
                Err(RecordError::Truncated { .. })
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn wrong_magic_is_rejected() {
    let mut b = batch(Compression::None, &[rec(None, Some("abc"), 1)]);
    b[16] = 1;
    assert_eq!(validate_batch(&b), Err(RecordError::BadMagic(1)));
}

#[test]
fn trailing_bytes_are_a_length_mismatch() {
    let mut b = batch(Compression::None, &[rec(None, Some("abc"), 1)]);
    let len = b.len();
    b.push(0);
    assert_eq!(
        validate_batch(&b),
        Err(RecordError::LengthMismatch {
            declared: len,
            actual: len + 1
        })
    );
}

#[test]
fn flipped_byte_is_a_bad_crc() {
    let mut b = batch(Compression::None, &[rec(None, Some("abc"), 1)]);
    let last = b.len() - 2;
    b[last] ^= 0x40;
    assert!(matches!(
        validate_batch(&b),
        Err(RecordError::BadCrc { .. })
    ));
}

#[test]
fn record_count_mismatch_is_rejected() {
    let mut b = batch(
        Compression::None,
        &[rec(None, Some("a"), 1), rec(None, Some("b"), 1)],
    );
    b[57..61].copy_from_slice(&3i32.to_be_bytes());
    recrc(&mut b);
    assert_eq!(
        validate_batch(&b),
        Err(RecordError::RecordCountMismatch {
            declared: 3,
            actual: 2
        })
    );
    b[57..61].copy_from_slice(&1i32.to_be_bytes());
    recrc(&mut b);
    assert!(matches!(
        validate_batch(&b),
        Err(RecordError::RecordCountMismatch { declared: 1, .. })
    ));
}

#[test]
fn unsupported_codecs_are_clear_errors() {
    for codec in [5u8, 6, 7] {
        let mut b = batch(Compression::None, &[rec(None, Some("a"), 1)]);
        b[22] = codec;
        recrc(&mut b);
        assert_eq!(
            validate_batch(&b),
            Err(RecordError::UnsupportedCompression(codec))
        );
        assert_eq!(
            decode_records(&b),
            Err(RecordError::UnsupportedCompression(codec))
        );
    }
}

#[test]
fn max_timestamp_before_first_timestamp_is_rejected() {
    let mut b = batch(Compression::None, &[rec(None, Some("a"), 100)]);
    b[35..43].copy_from_slice(&50i64.to_be_bytes());
    recrc(&mut b);
    assert!(matches!(
        validate_batch(&b),
        Err(RecordError::InvalidTimestamps(_))
    ));
}

#[test]
fn records_with_decreasing_timestamps_inside_a_batch_are_accepted() {
    let b = batch(
        Compression::None,
        &[rec(None, Some("a"), 100), rec(None, Some("b"), 40)],
    );
    let h = validate_batch(&b).unwrap();
    assert_eq!((h.first_timestamp, h.max_timestamp), (100, 100));
    assert_eq!(decode_records(&b).unwrap()[1].timestamp_ms, 40);
}

#[test]
fn garbage_in_records_is_an_error_not_a_panic() {
    let good = batch(
        Compression::None,
        &[rec(Some("key"), Some("value"), 1), rec(None, Some("v2"), 2)],
    );
    for i in HEADER_SIZE..good.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= x;
            recrc(&mut b);
            let _ = validate_batch(&b);
            let _ = decode_records(&b);
        }
    }
}

#[test]
fn empty_batch_is_rejected() {
    let b = BatchBuilder::new(Compression::None).build();
    assert!(validate_batch(&b).is_err());
}

#[test]
fn retain_records_keeps_offsets_and_last_offset_delta() {
    for compression in [Compression::None, Compression::Lz4] {
        let mut b = batch(
            compression,
            &[
                rec(Some("a"), Some("1"), 10),
                rec(Some("b"), Some("2"), 20),
                rec(Some("a"), Some("3"), 30),
            ],
        );
        set_base_offset(&mut b, 50);
        let kept = retain_records(&b, |r| r.offset != 50).unwrap().unwrap();
        let h = validate_batch(&kept).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset_delta, h.record_count),
            (50, 2, 2)
        );
        assert_eq!((h.first_timestamp, h.max_timestamp), (20, 30));
        let d = decode_records(&kept).unwrap();
        assert_eq!(d.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![51, 52]);
        assert_eq!(d[1].value.as_deref(), Some(&b"3"[..]));
        assert_eq!(retain_records(&b, |_| false).unwrap(), None);
        assert_eq!(retain_records(&b, |_| true).unwrap().unwrap(), b);
    }
}

#[test]
fn batch_iter_stops_at_a_partial_batch() {
    let a = batch(Compression::None, &[rec(None, Some("a"), 1)]);
    let b = batch(Compression::Lz4, &[rec(None, Some("b"), 2)]);
    let mut all = a.clone();
    all.extend_from_slice(&b);
    all.extend_from_slice(&a[..30]);
    let mut it = BatchIter::new(&all);
    assert_eq!(it.next().unwrap().unwrap().1, &a[..]);
    assert_eq!(it.next().unwrap().unwrap().1, &b[..]);
    assert!(it.next().is_none());
    assert_eq!(it.position(), a.len() + b.len());
}

#[test]
fn batch_iter_reports_a_bad_header() {
    let mut a = batch(Compression::None, &[rec(None, Some("a"), 1)]);
    a[16] = 9;
    let mut it = BatchIter::new(&a);
    assert_eq!(it.next().unwrap().unwrap_err(), RecordError::BadMagic(9));
    assert!(it.next().is_none());
}

#[test]
fn a_batch_whose_offsets_reach_i64_max_is_malformed() {
    let mut b = batch(
        Compression::None,
        &[rec(None, Some("a"), 1), rec(None, Some("b"), 1)],
    );
    // Offsets i64::MAX - 2 and i64::MAX - 1: the end offset i64::MAX fits.
    set_base_offset(&mut b, i64::MAX - 2);
    let h = validate_batch(&b).unwrap();
    assert_eq!(h.next_offset(), i64::MAX);
    // Offsets i64::MAX - 1 and i64::MAX: the offset after them does not.
    set_base_offset(&mut b, i64::MAX - 1);
    for err in [
        BatchHeader::parse(&b).unwrap_err(),
        validate_batch(&b).unwrap_err(),
        decode_records(&b).unwrap_err(),
    ] {
        assert!(
            matches!(&err, RecordError::Malformed(m) if m.contains("invalid baseOffset")),
            "{err}"
        );
    }
    let mut two = b.clone();
    two.extend_from_slice(&b);
    assert!(BatchIter::new(&two).next().unwrap().is_err());
}

fn invalid_ts<T: std::fmt::Debug>(r: Result<T, RecordError>) -> String {
    match r {
        Err(RecordError::InvalidTimestamps(m)) => m,
        other => panic!("expected InvalidTimestamps, got {other:?}"),
    }
}

#[test]
fn builder_refuses_out_of_range_timestamps_without_overflow() {
    let mut b = BatchBuilder::new(Compression::None);
    for ts in [i64::MIN, -2, i64::MIN + 1] {
        let m = invalid_ts(b.try_push(&rec(None, Some("x"), ts)));
        assert!(m.contains("out of range"), "{m}");
    }
    assert!(b.is_empty(), "refused records leave the builder unchanged");
    // Extremes that are in range, mixed in one batch: deltas i64::MIN..=MAX.
    for ts in [i64::MAX, 0, -1, i64::MAX, 1] {
        b.try_push(&rec(None, Some("x"), ts)).unwrap();
    }
    let batch = b.try_build().unwrap();
    let h = validate_batch(&batch).unwrap();
    assert_eq!((h.first_timestamp, h.max_timestamp), (i64::MAX, i64::MAX));
    let got: Vec<i64> = decode_records(&batch)
        .unwrap()
        .iter()
        .map(|r| r.timestamp_ms)
        .collect();
    assert_eq!(got, [i64::MAX, 0, -1, i64::MAX, 1]);
    // -1 first, then i64::MAX: the delta does not fit an i64.
    let mut b = BatchBuilder::new(Compression::None);
    b.try_push(&rec(None, Some("x"), -1)).unwrap();
    let m = invalid_ts(b.try_push(&rec(None, Some("y"), i64::MAX)));
    assert!(m.contains("too far"), "{m}");
    assert_eq!(b.len(), 1);
    assert!(validate_batch(&b.build()).is_ok());
}

#[test]
fn push_of_an_out_of_range_timestamp_gives_a_batch_that_is_rejected() {
    for bad in [
        vec![i64::MIN],
        vec![5, -7],
        vec![-1, i64::MAX],
        vec![i64::MAX, i64::MIN],
    ] {
        let mut b = BatchBuilder::new(Compression::Lz4);
        for &ts in &bad {
            b.push(&rec(Some("k"), Some("v"), ts));
        }
        assert_eq!(b.len(), bad.len());
        invalid_ts(b.try_build());
        let batch = b.build();
        let m = invalid_ts(validate_batch(&batch));
        assert!(m.contains("out of range"), "{bad:?}: {m}");
        invalid_ts(decode_records(&batch));
    }
}

#[test]
fn wire_timestamps_that_overflow_or_are_negative_are_rejected() {
    let base = batch(
        Compression::None,
        &[rec(None, Some("a"), 0), rec(None, Some("b"), 5)],
    );
    let patch = |first: i64, max: i64| {
        let mut b = base.clone();
        b[27..35].copy_from_slice(&first.to_be_bytes());
        b[35..43].copy_from_slice(&max.to_be_bytes());
        recrc(&mut b);
        b
    };
    // firstTimestamp + timestampDelta (5) overflows.
    let m = invalid_ts(validate_batch(&patch(i64::MAX, i64::MAX)));
    assert!(m.contains("overflows"), "{m}");
    invalid_ts(decode_records(&patch(i64::MAX - 4, i64::MAX)));
    // Negative timestamps other than -1.
    invalid_ts(validate_batch(&patch(-3, 2)));
    invalid_ts(validate_batch(&patch(i64::MIN, i64::MIN + 5)));
    invalid_ts(validate_batch(&patch(0, -2)));
    // The largest valid values are fine.
    assert!(validate_batch(&patch(i64::MAX - 5, i64::MAX)).is_ok());
    assert!(validate_batch(&patch(-1, 4)).is_ok());
}

#[test]
fn retain_records_refuses_a_timestamp_delta_that_does_not_fit() {
    let b = batch(
        Compression::None,
        &[
            rec(Some("a"), Some("1"), 0),
            rec(Some("b"), Some("2"), -1),
            rec(Some("c"), Some("3"), i64::MAX),
        ],
    );
    validate_batch(&b).unwrap();
    // Without the first record the base would be -1 and the next delta
    // i64::MAX + 1.
    invalid_ts(retain_records(&b, |r| r.offset != 0));
    // Dropping another record is fine.
    let kept = retain_records(&b, |r| r.offset != 1).unwrap().unwrap();
    let got: Vec<i64> = decode_records(&kept)
        .unwrap()
        .iter()
        .map(|r| r.timestamp_ms)
        .collect();
    assert_eq!(got, [0, i64::MAX]);
}

#[test]
fn finish_writes_the_same_batch_as_build_without_copying_records() {
    let big = "v".repeat(20_000);
    let mut records = Vec::new();
    for (i, len) in [0usize, 1, 127, 128, 16_383, 16_384]
        .into_iter()
        .enumerate()
    {
        let mut r = rec(Some("k"), Some(&big[..len]), 1_700_000_000_000 + i as i64);
        r.headers.push(Header {
            key: format!("h{i}"),
            value: (i % 2 == 0).then(|| Bytes::from(big[..len.min(300)].to_string())),
        });
        records.push(r);
    }
    records.push(Record {
        key: None,
        value: None,
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
    });
    for compression in [Compression::None, Compression::Lz4] {
        for capacity in [0, 64, 1 << 20] {
            let mut b = BatchBuilder::with_capacity(compression, capacity).with_producer(7, 1, 42);
            for r in &records {
                b.push(r);
            }
            let built = b.build();
            let estimated = b.estimated_size();
            let finished = b.finish();
            assert_eq!(built, finished, "{compression:?} capacity {capacity}");
            if compression == Compression::None {
                assert_eq!(finished.len(), estimated);
            }
            let header = validate_batch(&finished).unwrap();
            assert_eq!((header.producer_id, header.base_sequence), (7, 42));
            let decoded = decode_records(&finished).unwrap();
            assert_eq!(decoded.len(), records.len());
            for (d, r) in decoded.iter().zip(&records) {
                assert_eq!(d.value, r.value);
                assert_eq!(d.headers, r.headers);
                assert_eq!(d.timestamp_ms, r.timestamp_ms);
            }
        }
    }
}

#[test]
fn set_producer_restamps_a_built_batch() {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(&rec(Some("k"), Some("v"), 1_700_000_000_000));
    let mut bytes = b.build().to_vec();
    set_producer(&mut bytes, 9, 3, 1_000);
    let header = validate_batch(&bytes).unwrap();
    assert_eq!(
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        ),
        (9, 3, 1_000)
    );
}
