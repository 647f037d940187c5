//! The four compression codecs: round trips, Kafka's framings, corrupt
//! data, decompression bombs, and recompression.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::codec::{decompress, decompress_within};

const CODECS: [Compression; 4] = [
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn records(n: usize, value_len: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: (!i.is_multiple_of(3)).then(|| Bytes::from(format!("key-{i}"))),
            value: (i % 7 != 6).then(|| Bytes::from(format!("{i:08}").repeat(value_len / 8 + 1))),
            headers: vec![Header {
                key: format!("h{}", i % 4),
                value: (i.is_multiple_of(2)).then(|| Bytes::from(vec![i as u8; 3])),
            }],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn build(codec: Compression, records: &[Record]) -> Bytes {
    let mut b = BatchBuilder::new(codec).with_producer(42, 3, 17);
    for r in records {
        b.push(r);
    }
    b.build()
}

/// A batch of `count` records (as the header claims) whose records section
/// is `body`, marked as compressed with `codec`.
fn with_body(codec: Compression, count: i32, body: &[u8]) -> Vec<u8> {
    let mut b = build(Compression::None, &records(count as usize, 1)).to_vec();
    b.truncate(HEADER_SIZE);
    b.extend_from_slice(body);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    b[22] = codec.codec_id();
    let crc = compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

fn assert_decompression_error(result: Result<impl std::fmt::Debug, RecordError>, needle: &str) {
    match result {
        Err(RecordError::Decompression(msg)) => {
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}")
        }
        other => panic!("expected a decompression error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn codec_ids_and_names_are_kafkas() {
    for (codec, id, name) in [
        (Compression::None, 0, "none"),
        (Compression::Gzip, 1, "gzip"),
        (Compression::Snappy, 2, "snappy"),
        (Compression::Lz4, 3, "lz4"),
        (Compression::Zstd, 4, "zstd"),
    ] {
        assert_eq!(codec.codec_id(), id);
        assert_eq!(codec.name(), name);
        assert_eq!(Compression::from_name(name), Some(codec));
        assert_eq!(
            Compression::from_attributes(i16::from(id) | 0x18),
            Ok(codec)
        );
    }
    assert_eq!(Compression::from_name("brotli"), None);
    for id in 5..=7 {
        assert_eq!(
            Compression::from_attributes(id),
            Err(RecordError::UnsupportedCompression(id as u8))
        );
    }
}

#[test]
fn every_codec_round_trips_small_and_multi_block_batches() {
    // 1 record; and ~600 KiB of records: several LZ4 (64 KiB), snappy
    // (32 KiB) and zstd (128 KiB) blocks.
    for recs in [records(1, 10), records(3000, 200)] {
        let plain = build(Compression::None, &recs);
        let expected = decode_records(&plain).unwrap();
        for codec in CODECS {
            let b = build(codec, &recs);
            let header = validate_batch(&b).unwrap();
            assert_eq!(header.compression(), Ok(codec));
            assert_eq!(b[22] & 0x07, codec.codec_id());
            assert_eq!(decode_records(&b).unwrap(), expected, "{codec}");
            let section = &b[HEADER_SIZE..];
            let bound = decompressed_bound(codec, section);
            assert!(bound >= plain.len() - HEADER_SIZE, "{codec}: bound {bound}");
            if recs.len() > 1 {
                assert!(section.len() * 4 < plain.len(), "{codec} compresses");
            }
        }
    }
}

#[test]
fn snappy_uses_kafkas_xerial_framing() {
    let recs = records(1000, 100);
    let b = build(Compression::Snappy, &recs);
    let section = &b[HEADER_SIZE..];
    assert_eq!(&section[..8], b"\x82SNAPPY\0");
    assert_eq!(&section[8..16], &[0, 0, 0, 1, 0, 0, 0, 1]);
    // Big-endian block lengths, each a raw snappy block of 32 KiB of input.
    let plain = build(Compression::None, &recs);
    let raw = &plain[HEADER_SIZE..];
    let mut pos = 16;
    let mut out = Vec::new();
    while pos < section.len() {
        let len = u32::from_be_bytes(section[pos..pos + 4].try_into().unwrap()) as usize;
        let block = &section[pos + 4..pos + 4 + len];
        let decoded = snap::raw::Decoder::new().decompress_vec(block).unwrap();
        assert!(decoded.len() == 32 * 1024 || out.len() + decoded.len() == raw.len());
        out.extend_from_slice(&decoded);
        pos += 4 + len;
    }
    assert_eq!(out, raw);
}

#[test]
fn raw_snappy_without_framing_is_read_as_kafka_does() {
    let recs = records(50, 30);
    let plain = build(Compression::None, &recs);
    let raw = snap::raw::Encoder::new()
        .compress_vec(&plain[HEADER_SIZE..])
        .unwrap();
    let b = with_body(Compression::Snappy, 50, &raw);
    assert_eq!(decode_records(&b).unwrap(), decode_records(&plain).unwrap());
    assert_eq!(
        snappy_decompressed_bound(&raw),
        Some(plain.len() - HEADER_SIZE)
    );
}

#[test]
fn gzip_is_a_gzip_stream_and_concatenated_members_are_read() {
    let recs = records(100, 50);
    let plain = build(Compression::None, &recs);
    let raw = &plain[HEADER_SIZE..];
    let b = build(Compression::Gzip, &recs);
    assert_eq!(
        &b[HEADER_SIZE..HEADER_SIZE + 2],
        &[0x1f, 0x8b],
        "gzip magic"
    );
    // Two members, as `cat a.gz b.gz` would make.
    let (first, second) = raw.split_at(raw.len() / 2);
    let mut body = Vec::new();
    for part in [first, second] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(part).unwrap();
        body.extend_from_slice(&enc.finish().unwrap());
    }
    let two = with_body(Compression::Gzip, 100, &body);
    assert_eq!(
        decode_records(&two).unwrap(),
        decode_records(&plain).unwrap()
    );
}

#[test]
fn zstd_frames_with_and_without_content_size_are_read() {
    let recs = records(500, 100);
    let plain = build(Compression::None, &recs);
    let raw = &plain[HEADER_SIZE..];
    // A streaming encoder (as Kafka's Java client writes) declares no
    // content size; the bound then comes from the block headers.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(raw).unwrap();
    let streamed = enc.finish().unwrap();
    assert_eq!(streamed[4] >> 6, 0, "no content size declared");
    let bound = zstd_decompressed_bound(&streamed).unwrap();
    assert!(
        bound >= raw.len() && bound <= raw.len() + 128 * 1024,
        "{bound}"
    );
    let b = with_body(Compression::Zstd, 500, &streamed);
    assert_eq!(decode_records(&b).unwrap(), decode_records(&plain).unwrap());
    // Ours declares it: the bound is exact.
    let ours = build(Compression::Zstd, &recs);
    assert_eq!(
        zstd_decompressed_bound(&ours[HEADER_SIZE..]),
        Some(raw.len())
    );
}

#[test]
fn corrupt_compressed_data_is_a_clear_error_for_every_codec() {
    let recs = records(200, 100);
    for codec in CODECS {
        let good = build(codec, &recs).to_vec();
        let body = &good[HEADER_SIZE..];
        // Truncated, garbage after, empty. (Bytes changed in transit are
        // the batch CRC's job.)
        let garbage = [body, b"garbage!".as_slice()].concat();
        let mut cases = vec![("truncated", &body[..body.len() - 7]), ("empty", &[][..])];
        if codec == Compression::Lz4 {
            // The frame decoder stops at the frame's end mark and never
            // reads what follows, as Kafka's LZ4 reader does.
            let b = with_body(codec, 200, &garbage);
            assert_eq!(decode_records(&b).unwrap(), decode_records(&good).unwrap());
        } else {
            cases.push(("trailing garbage", &garbage[..]));
        }
        for (what, bad) in cases {
            let b = with_body(codec, 200, bad);
            let err = validate_batch(&b).expect_err(&format!("{codec} {what}"));
            assert!(
                matches!(
                    err,
                    RecordError::Decompression(_)
                        | RecordError::Malformed(_)
                        | RecordError::RecordCountMismatch { .. }
                ),
                "{codec} {what}: {err:?}"
            );
            assert_eq!(decode_records(&b).unwrap_err(), err, "{codec} {what}");
            assert!(recompress(&b, Compression::None).is_err());
        }
    }
}

/// A gzip member of `blocks` times 64 KiB of zeros, built without
/// compressing that much: after a flush, the encoder writes the same bytes
/// for every further 64 KiB of zeros. The trailer declares `crc` and
/// `isize` (a bomb needs no valid CRC: it is checked only at the end).
fn gzip_zeros(blocks: usize, isize: u32, crc: u32) -> Vec<u8> {
    let zeros = vec![0u8; 64 * 1024];
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut marks = Vec::new();
    for _ in 0..3 {
        enc.write_all(&zeros).unwrap();
        enc.flush().unwrap();
        marks.push(enc.get_ref().len());
    }
    let done = enc.finish().unwrap();
    let (first, repeat) = (&done[..marks[0]], &done[marks[0]..marks[1]]);
    assert_eq!(repeat, &done[marks[1]..marks[2]], "flushed blocks repeat");
    let end = &done[marks[2]..done.len() - 8];
    let mut out = first.to_vec();
    for _ in 1..blocks {
        out.extend_from_slice(repeat);
    }
    out.extend_from_slice(end);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&isize.to_le_bytes());
    out
}

/// An LZ4 frame of `blocks` times 64 KiB of zeros, one block repeated.
fn lz4_zeros(blocks: usize) -> Vec<u8> {
    let one = crate::codec::compress(Compression::Lz4, &vec![0u8; 64 * 1024]);
    // 7-byte frame header, one block, 4-byte end mark.
    let mut out = one[..7].to_vec();
    for _ in 0..blocks {
        out.extend_from_slice(&one[7..one.len() - 4]);
    }
    out.extend_from_slice(&[0; 4]);
    out
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros (4 bytes each).
fn zstd_zeros(blocks: usize) -> Vec<u8> {
    let mut out = 0xFD2F_B528u32.to_le_bytes().to_vec();
    out.push(0x00); // no content size, no checksum, a window descriptor
    out.push(0x38); // 128 KiB window
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = ((128 * 1024) << 3) | (1 << 1) | last;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(0);
    }
    out
}

/// Xerial-framed snappy of `blocks` times 32 KiB of zeros.
fn snappy_zeros(blocks: usize) -> Vec<u8> {
    let one = crate::codec::compress(Compression::Snappy, &vec![0u8; 32 * 1024]);
    let mut out = one[..16].to_vec();
    for _ in 0..blocks {
        out.extend_from_slice(&one[16..]);
    }
    out
}

#[test]
fn the_bomb_builders_make_valid_streams() {
    let mb = 1 << 20;
    let mut crc = flate2::Crc::new();
    crc.update(&vec![0; mb]);
    let gzip = gzip_zeros(16, mb as u32, crc.sum());
    for (codec, data) in [
        (Compression::Gzip, gzip),
        (Compression::Lz4, lz4_zeros(16)),
        (Compression::Zstd, zstd_zeros(8)),
        (Compression::Snappy, snappy_zeros(32)),
    ] {
        assert_eq!(decompress(codec, &data).unwrap(), vec![0; mb], "{codec}");
        if codec != Compression::Gzip {
            assert_eq!(decompressed_bound(codec, &data), mb, "{codec}");
        }
    }
}

/// 1 GiB of zeros in a small batch, for every codec: refused quickly, from
/// the framing alone, without decompressing it.
#[test]
fn a_gigabyte_of_zeros_is_refused_quickly_for_every_codec() {
    let gib = 1usize << 30;
    for (codec, body) in [
        (
            Compression::Gzip,
            gzip_zeros(gib / (64 * 1024), gib as u32, 0),
        ),
        (Compression::Snappy, snappy_zeros(gib / (32 * 1024))),
        (Compression::Lz4, lz4_zeros(gib / (64 * 1024))),
        (Compression::Zstd, zstd_zeros(gib / (128 * 1024))),
    ] {
        assert!(body.len() < 64 << 20, "{codec}: {} bytes", body.len());
        let batch = with_body(codec, 1, &body);
        let started = Instant::now();
        assert_decompression_error(
            validate_batch(&batch),
            &format!("{codec}: records expand beyond {MAX_DECOMPRESSED_SIZE} bytes"),
        );
        assert_decompression_error(decode_records(&batch), "expand beyond");
        assert_decompression_error(recompress(&batch, Compression::None), "expand beyond");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{codec}: {:?}",
            started.elapsed()
        );
        assert_eq!(
            decompressed_bound(codec, &body),
            MAX_DECOMPRESSED_SIZE,
            "{codec}"
        );
    }
}

/// When the framing understates the output (a gzip trailer can claim any
/// size), the decoder stops at the limit: it never holds more than that.
#[test]
fn decoding_stops_at_the_limit_when_the_framing_lies() {
    let limit = 1 << 20;
    // 64 MiB of zeros whose gzip trailer claims 100 bytes.
    let lying = gzip_zeros(1024, 100, 0);
    assert_decompression_error(
        decompress_within(Compression::Gzip, &lying, limit),
        &format!("gzip: records expand beyond {limit} bytes"),
    );
    // A zstd frame declaring a content size of 44 bytes over 1 MiB of
    // RLE blocks.
    let mut zstd = zstd_zeros(8);
    zstd[4] = 0x20; // single segment: a 1-byte content size, no window byte
    zstd[5] = 44;
    assert_eq!(zstd_decompressed_bound(&zstd), Some(44));
    assert!(decompress_within(Compression::Zstd, &zstd, limit).is_err());
    // LZ4 blocks flagged uncompressed are their own size; a frame of
    // 2 MiB of such blocks is over a 1 MiB limit before decoding.
    let mut lz4 = lz4_zeros(0);
    lz4.truncate(7);
    for _ in 0..32 {
        lz4.extend_from_slice(&(0x8000_0000u32 | (64 * 1024)).to_le_bytes());
        lz4.extend_from_slice(&[0; 64 * 1024]);
    }
    lz4.extend_from_slice(&[0; 4]);
    assert_decompression_error(
        decompress_within(Compression::Lz4, &lz4, limit),
        "expand beyond",
    );
    assert_eq!(
        decompress_within(Compression::Lz4, &lz4, 2 << 20)
            .unwrap()
            .len(),
        2 << 20
    );
}

#[test]
fn a_snappy_block_declaring_more_than_it_can_hold_is_refused() {
    // A raw snappy preamble claiming 1 GiB, followed by a few bytes.
    let mut raw = Vec::new();
    let mut n = 1u64 << 30;
    while n >= 0x80 {
        raw.push((n as u8) | 0x80);
        n >>= 7;
    }
    raw.push(n as u8);
    raw.extend_from_slice(&[0; 10]);
    let started = Instant::now();
    assert_decompression_error(
        validate_batch(&with_body(Compression::Snappy, 1, &raw)),
        "more than it can hold",
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn recompress_changes_only_the_codec_and_crc() {
    let recs = records(300, 64);
    for from in Compression::ALL {
        let mut original = build(from, &recs).to_vec();
        set_base_offset(&mut original, 1000);
        set_partition_leader_epoch(&mut original, 7);
        original[22] |= ATTR_LOG_APPEND_TIME as u8;
        let crc = compute_crc(&original);
        original[17..21].copy_from_slice(&crc.to_be_bytes());
        let before = validate_batch(&original).unwrap();
        let records_before = decode_records(&original).unwrap();
        for to in Compression::ALL {
            let out = recompress(&original, to).unwrap();
            if from == to {
                assert!(out.is_none(), "{from} -> {to}");
                continue;
            }
            let out = out.unwrap_or_else(|| panic!("{from} -> {to}"));
            let after = validate_batch(&out).unwrap();
            assert_eq!(after.compression(), Ok(to));
            assert_eq!(
                BatchHeader {
                    batch_length: before.batch_length,
                    crc: before.crc,
                    attributes: after.attributes & !ATTR_COMPRESSION_MASK
                        | i16::from(from.codec_id()),
                    ..after
                },
                before,
                "{from} -> {to}"
            );
            assert_eq!(decode_records(&out).unwrap(), records_before);
        }
    }
}

/// Batches built by kafka-python 3.0.12 (`DefaultRecordBatchBuilder`,
/// magic 2, with its own codec libraries), one per codec, over the same
/// three records: an independent implementation of the formats.
#[test]
fn batches_built_by_kafka_python_decode() {
    let fixtures: &str = include_str!("../tests/data/kafka_python_batches.txt");
    let mut seen = Vec::new();
    for line in fixtures.lines().filter(|l| !l.starts_with('#')) {
        let (name, hex) = line.split_once(' ').expect("name hex");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let codec = Compression::from_name(name).unwrap();
        let header = validate_batch(&bytes).unwrap();
        assert_eq!(header.compression(), Ok(codec));
        let recs = decode_records(&bytes).unwrap();
        assert_eq!(recs.len(), 3, "{name}");
        assert_eq!(recs[0].key.as_deref(), Some(&b"key-0"[..]));
        assert_eq!(
            recs[0].value.as_deref(),
            Some("value-0 ".repeat(50).as_bytes())
        );
        assert_eq!(recs[1].key, None);
        assert_eq!(recs[1].headers[0].key, "h");
        assert_eq!(recs[1].headers[0].value.as_deref(), Some(&b"v"[..]));
        assert_eq!(recs[2].value, None);
        assert_eq!(recs[2].timestamp_ms, 1_700_000_000_002);
        seen.push(codec);
    }
    assert_eq!(seen, CODECS);
}
