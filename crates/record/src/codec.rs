//! Compression of the records section: Kafka's four codecs.
//!
//! | codec | id | format, as Kafka's clients write it |
//! |---|---|---|
//! | gzip | 1 | one gzip member (RFC 1952); concatenated members are read too |
//! | snappy | 2 | xerial framing: `\x82SNAPPY\0`, version 1, compatible version 1 (big-endian `i32`s), then blocks of 32 KiB of input, each a big-endian `u32` length and a raw snappy block; a section without the magic is read as one raw snappy block, as Kafka's reader does |
//! | lz4 | 3 | the LZ4 frame format, independent 64 KiB blocks, no content checksum |
//! | zstd | 4 | zstd frames (level 3, Kafka's default) |
//!
//! Decompression is bounded twice, so a small batch cannot make a broker
//! or a consumer allocate without limit (a "zip bomb"):
//!
//! - before decoding, [`decompressed_bound`] reads an upper bound of the
//!   output from the codec's framing without decompressing anything (LZ4
//!   and zstd block headers, snappy's length preambles, deflate's largest
//!   possible ratio for gzip); a batch whose framing already declares more
//!   than [`MAX_DECOMPRESSED_SIZE`] (block headers, snappy preambles, the
//!   gzip trailer) is refused at once;
//! - while decoding, output is produced in steps into a buffer that never
//!   grows past that bound (at most [`MAX_DECOMPRESSED_SIZE`]), and a
//!   single byte more is an error. No buffer is sized from a length the
//!   sender wrote.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::{Compression, RecordError};

/// Largest records section a compressed batch may expand to (128 MiB).
/// Protects brokers and consumers from decompression bombs.
pub const MAX_DECOMPRESSED_SIZE: usize = 128 * 1024 * 1024;

/// Kafka's default gzip level (`compression.gzip.level`, zlib's default).
const GZIP_LEVEL: u32 = 6;
/// Kafka's default zstd level (`compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;

/// Deflate's largest expansion: a 258-byte match coded in two bits.
const DEFLATE_MAX_RATIO: usize = 1032;
/// Snappy's largest expansion: a 3-byte copy element writes 64 bytes.
const SNAPPY_MAX_OUT: usize = 64;
const SNAPPY_MIN_IN: usize = 3;

/// The xerial framing's magic, version and compatible version.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_VERSION: i32 = 1;
const XERIAL_HEADER_SIZE: usize = 16;
/// Input per snappy block, as Kafka's `SnappyOutputStream` cuts it.
const XERIAL_BLOCK: usize = 32 * 1024;

/// zstd frame magic number and largest block output.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_MAX_BLOCK: usize = 128 * 1024;

thread_local! {
    /// A zstd compression context per thread: creating one costs more than
    /// compressing a small batch.
    static ZSTD_COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses a records section with `codec`, as Kafka's clients do (see
/// the module docs for each format).
pub(crate) fn compress(codec: Compression, records: &[u8]) -> Vec<u8> {
    const INFALLIBLE: &str = "compressing into memory cannot fail";
    let estimate = records.len() / 2 + 64;
    match codec {
        Compression::None => records.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(estimate),
                flate2::Compression::new(GZIP_LEVEL),
            );
            enc.write_all(records).expect(INFALLIBLE);
            enc.finish().expect(INFALLIBLE)
        }
        Compression::Snappy => {
            let mut out = Vec::with_capacity(XERIAL_HEADER_SIZE + estimate);
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
            out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            for block in records.chunks(XERIAL_BLOCK) {
                let at = out.len();
                out.resize(at + 4 + snap::raw::max_compress_len(block.len()), 0);
                let n = enc.compress(block, &mut out[at + 4..]).expect(INFALLIBLE);
                out.truncate(at + 4 + n);
                out[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
            }
            out
        }
        Compression::Lz4 => {
            let info = FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_mode(BlockMode::Independent);
            let mut enc = FrameEncoder::with_frame_info(info, Vec::with_capacity(estimate));
            enc.write_all(records).expect(INFALLIBLE);
            enc.finish().expect(INFALLIBLE)
        }
        Compression::Zstd => ZSTD_COMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            let compressor = match &mut *slot {
                Some(c) => c,
                None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).expect(INFALLIBLE)),
            };
            compressor.compress(records).expect(INFALLIBLE)
        }),
    }
}

/// Decompresses a records section, refusing output larger than
/// [`MAX_DECOMPRESSED_SIZE`].
pub(crate) fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, RecordError> {
    decompress_within(codec, data, MAX_DECOMPRESSED_SIZE)
}

/// Why a bounded decode stopped.
enum Stop {
    /// The output would exceed the bound.
    TooLarge,
    /// The data is not valid for the codec.
    Invalid(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Stop {
        Stop::Invalid(e.to_string())
    }
}

/// [`decompress`] with `max` in place of [`MAX_DECOMPRESSED_SIZE`].
pub(crate) fn decompress_within(
    codec: Compression,
    data: &[u8],
    max: usize,
) -> Result<Vec<u8>, RecordError> {
    if codec == Compression::None {
        return Ok(data.to_vec());
    }
    let too_large =
        || RecordError::Decompression(format!("{codec}: records expand beyond {max} bytes"));
    let bound = framed_bound(codec, data);
    // What the framing declares: the LZ4, zstd and snappy bounds are what
    // the blocks declare (within one block); gzip's is only deflate's
    // largest ratio, but its trailer gives the last member's size modulo
    // 2^32, which that member alone exceeds when it is larger.
    let declared = match codec {
        Compression::Gzip => gzip_trailer_size(data),
        _ => bound,
    };
    if declared.is_some_and(|size| size > max) {
        return Err(too_large());
    }
    let cap = bound.unwrap_or(max).min(max);
    // A first guess for the output buffer, from the input size.
    let hint = data.len().saturating_mul(4);
    let decoded = match codec {
        Compression::None => unreachable!("returned above"),
        Compression::Gzip => read_capped(flate2::bufread::MultiGzDecoder::new(data), cap, hint),
        Compression::Snappy => snappy_decompress(data, cap),
        Compression::Lz4 => read_capped(FrameDecoder::new(data), cap, hint),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(data)
            .map_err(Stop::from)
            .and_then(|d| read_capped(d, cap, hint)),
    };
    decoded.map_err(|stop| match stop {
        Stop::TooLarge if cap == max => too_large(),
        Stop::TooLarge => RecordError::Decompression(format!(
            "{codec}: records expand beyond the {cap} bytes their framing allows"
        )),
        Stop::Invalid(e) => RecordError::Decompression(format!("{codec}: {e}")),
    })
}

/// Reads `r` to its end into a buffer that grows (from `hint`) up to `cap`
/// bytes and no further: one byte more is [`Stop::TooLarge`].
fn read_capped(mut r: impl Read, cap: usize, hint: usize) -> Result<Vec<u8>, Stop> {
    let mut out = vec![0u8; hint.clamp(1, 64 * 1024).min(cap)];
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if filled == cap {
                let mut probe = [0u8; 1];
                return match read_retrying(&mut r, &mut probe)? {
                    0 => Ok(out),
                    _ => Err(Stop::TooLarge),
                };
            }
            let grow = filled.max(4096).min(cap - filled);
            out.reserve_exact(grow);
            out.resize(filled + grow, 0);
        }
        match read_retrying(&mut r, &mut out[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    out.truncate(filled);
    Ok(out)
}

fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The raw snappy blocks of a snappy section: the xerial framing's blocks,
/// or the whole section when it does not start with the xerial magic.
fn snappy_blocks(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    if !data.starts_with(&XERIAL_MAGIC) {
        return Ok(vec![data]);
    }
    let header = data
        .get(..XERIAL_HEADER_SIZE)
        .ok_or("xerial header truncated")?;
    let version = i32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if version < XERIAL_VERSION {
        return Err(format!("xerial framing version {version} is not supported"));
    }
    let mut blocks = Vec::new();
    let mut pos = XERIAL_HEADER_SIZE;
    while pos < data.len() {
        let len = data
            .get(pos..pos + 4)
            .ok_or("xerial block length truncated")?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        pos += 4;
        let block = pos
            .checked_add(len)
            .and_then(|end| data.get(pos..end))
            .ok_or_else(|| format!("xerial block of {len} bytes runs past the section"))?;
        blocks.push(block);
        pos += len;
    }
    Ok(blocks)
}

/// The length a raw snappy block declares, refused when its bytes could
/// not produce that much.
fn snappy_block_len(block: &[u8]) -> Result<usize, String> {
    let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if len.saturating_mul(SNAPPY_MIN_IN) > block.len().saturating_mul(SNAPPY_MAX_OUT) {
        return Err(format!(
            "a snappy block of {} bytes declares {len} bytes, more than it can hold",
            block.len()
        ));
    }
    Ok(len)
}

fn snappy_decompress(data: &[u8], cap: usize) -> Result<Vec<u8>, Stop> {
    let mut decoder = snap::raw::Decoder::new();
    let mut out = Vec::new();
    for block in snappy_blocks(data).map_err(Stop::Invalid)? {
        let len = snappy_block_len(block).map_err(Stop::Invalid)?;
        if len > cap - out.len() {
            return Err(Stop::TooLarge);
        }
        let at = out.len();
        out.resize(at + len, 0);
        let n = decoder
            .decompress(block, &mut out[at..])
            .map_err(|e| Stop::Invalid(e.to_string()))?;
        if n != len {
            return Err(Stop::Invalid(format!(
                "snappy block declares {len} bytes, decodes to {n}"
            )));
        }
    }
    Ok(out)
}

/// The output a snappy section declares (xerial framing or raw), `None`
/// when it is not well formed.
pub fn snappy_decompressed_bound(data: &[u8]) -> Option<usize> {
    snappy_blocks(data)
        .ok()?
        .into_iter()
        .try_fold(0usize, |total, block| {
            Some(total.saturating_add(snappy_block_len(block).ok()?))
        })
}

/// The size the last gzip member's trailer declares (its size modulo
/// 2^32), when `data` is long enough to end with one.
fn gzip_trailer_size(data: &[u8]) -> Option<usize> {
    // A member is at least a 10-byte header, a deflate block and an
    // 8-byte trailer.
    let tail: [u8; 4] = data.get(data.len().checked_sub(4)?..)?.try_into().ok()?;
    (data.len() >= 20).then(|| u32::from_le_bytes(tail) as usize)
}

/// An upper bound of the decompressed size of zstd frames, read from the
/// frame and block headers (a raw or RLE block declares its output, a
/// compressed block expands to at most 128 KiB; a declared content size
/// caps its frame). `None` when the data is not a well-formed sequence of
/// zstd frames.
pub fn zstd_decompressed_bound(data: &[u8]) -> Option<usize> {
    sum_frames(data, ZSTD_MAGIC, |mut pos| {
        let descriptor = *data.get(pos + 4)?;
        if descriptor & 0x08 != 0 {
            return None; // reserved bit
        }
        let single_segment = descriptor & 0x20 != 0;
        let checksum = descriptor & 0x04 != 0;
        let dict_id_size = [0, 1, 2, 4][usize::from(descriptor & 0x03)];
        let content_size_size = match descriptor >> 6 {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        pos += 5 + usize::from(!single_segment) + dict_id_size;
        let declared = if content_size_size == 0 {
            None
        } else {
            let b = data.get(pos..pos + content_size_size)?;
            let mut le = [0u8; 8];
            le[..b.len()].copy_from_slice(b);
            let size = u64::from_le_bytes(le) + if content_size_size == 2 { 256 } else { 0 };
            Some(usize::try_from(size).unwrap_or(usize::MAX))
        };
        pos += content_size_size;
        let mut frame = 0usize;
        loop {
            let h = data.get(pos..pos + 3)?;
            let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
            pos += 3;
            let size = (h >> 3) as usize;
            let (output, input) = match (h >> 1) & 0x03 {
                0 => (size, size),
                1 => (size, 1),
                2 => (ZSTD_MAX_BLOCK, size),
                _ => return None,
            };
            frame = frame.saturating_add(output);
            pos = pos.checked_add(input)?;
            if pos > data.len() {
                return None;
            }
            if h & 1 != 0 {
                break;
            }
        }
        if checksum {
            pos += 4;
        }
        Some((pos, declared.map_or(frame, |d| d.min(frame))))
    })
}

/// LZ4 frame magic number.
const LZ4_MAGIC: u32 = 0x184D_2204;

/// An upper bound of the decompressed size of an LZ4 frame sequence, read
/// from the frame and block headers (each compressed block expands to at
/// most the frame's declared block size; an uncompressed block is its own
/// size). `None` when the data is not a well-formed LZ4 frame sequence.
pub fn lz4_decompressed_bound(data: &[u8]) -> Option<usize> {
    sum_frames(data, LZ4_MAGIC, |mut pos| {
        let flags = *data.get(pos + 4)?;
        let bd = *data.get(pos + 5)?;
        if flags >> 6 != 0b01 {
            return None;
        }
        let block_checksums = flags & 0x10 != 0;
        let content_size = flags & 0x08 != 0;
        let content_checksum = flags & 0x04 != 0;
        let dict_id = flags & 0x01 != 0;
        let block_max: usize = match (bd >> 4) & 0x07 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            _ => return None,
        };
        pos += 6 + if content_size { 8 } else { 0 } + if dict_id { 4 } else { 0 } + 1;
        let mut total = 0usize;
        loop {
            let word = u32_le(data, pos)?;
            pos += 4;
            if word == 0 {
                break;
            }
            let stored = (word & 0x7FFF_FFFF) as usize;
            let uncompressed = word & 0x8000_0000 != 0;
            total = total.saturating_add(if uncompressed { stored } else { block_max });
            pos = pos
                .checked_add(stored)?
                .checked_add(if block_checksums { 4 } else { 0 })?;
            if pos > data.len() {
                return None;
            }
        }
        if content_checksum {
            pos += 4;
        }
        Some((pos, total))
    })
}

fn u32_le(data: &[u8], pos: usize) -> Option<u32> {
    let b = data.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Sums the output of a sequence of frames starting with `magic` (LZ4 and
/// zstd share the magic numbers of skippable frames, which have none):
/// `frame` reads the frame whose header starts at the position it is
/// given (its magic number's) and returns where it ends and its output
/// bound. `None` when a frame is not well formed or runs past the data.
fn sum_frames(
    data: &[u8],
    magic: u32,
    frame: impl Fn(usize) -> Option<(usize, usize)>,
) -> Option<usize> {
    let mut pos = 0usize;
    let mut total = 0usize;
    while pos < data.len() {
        let found = u32_le(data, pos)?;
        let (end, output) = if found & 0xFFFF_FFF0 == 0x184D_2A50 {
            let size = u32_le(data, pos + 4)? as usize;
            (pos.checked_add(8)?.checked_add(size)?, 0)
        } else if found == magic {
            frame(pos)?
        } else {
            return None;
        };
        if end > data.len() {
            return None;
        }
        pos = end;
        total = total.saturating_add(output);
    }
    Some(total)
}

/// The upper bound of a section's output its framing shows, `None` when
/// the framing cannot be read (the decoder then reports why).
fn framed_bound(codec: Compression, section: &[u8]) -> Option<usize> {
    match codec {
        Compression::None => Some(section.len()),
        Compression::Gzip => Some(section.len().saturating_mul(DEFLATE_MAX_RATIO)),
        Compression::Snappy => snappy_decompressed_bound(section),
        Compression::Lz4 => lz4_decompressed_bound(section),
        Compression::Zstd => zstd_decompressed_bound(section),
    }
}

/// An upper bound of what a records section compressed with `codec`
/// expands to, without decompressing it, never more than
/// [`MAX_DECOMPRESSED_SIZE`]: the section itself when uncompressed; the
/// LZ4 or zstd block bound; the snappy blocks' declared lengths; 1032
/// times the section for gzip (deflate's largest ratio). Decompression
/// never produces more. Callers reserve this much from a memory budget
/// before validating or decoding the batch.
pub fn decompressed_bound(codec: Compression, section: &[u8]) -> usize {
    if codec == Compression::None {
        return section.len();
    }
    framed_bound(codec, section)
        .unwrap_or(MAX_DECOMPRESSED_SIZE)
        .min(MAX_DECOMPRESSED_SIZE)
}
