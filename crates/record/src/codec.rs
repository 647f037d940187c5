//! Compression of the records section.

use std::io::{Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::{Compression, RecordError};

/// Largest records section a compressed batch may expand to (128 MiB).
/// Protects brokers and consumers from decompression bombs.
pub const MAX_DECOMPRESSED_SIZE: usize = 128 * 1024 * 1024;

/// Compresses a records section. Kafka's LZ4 codec is the LZ4 *frame*
/// format with independent 64 KiB blocks and no content checksum.
pub(crate) fn compress(codec: Compression, records: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => records.to_vec(),
        Compression::Lz4 => {
            let info = FrameInfo::new()
                .block_size(BlockSize::Max64KB)
                .block_mode(BlockMode::Independent);
            let mut enc =
                FrameEncoder::with_frame_info(info, Vec::with_capacity(records.len() / 2 + 64));
            enc.write_all(records)
                .expect("writing to a Vec cannot fail");
            enc.finish().expect("writing to a Vec cannot fail")
        }
    }
}

/// Decompresses a records section, refusing output larger than
/// [`MAX_DECOMPRESSED_SIZE`].
pub(crate) fn decompress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, RecordError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Lz4 => {
            let mut out =
                Vec::with_capacity(data.len().saturating_mul(2).min(MAX_DECOMPRESSED_SIZE));
            FrameDecoder::new(data)
                .take(MAX_DECOMPRESSED_SIZE as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| RecordError::Decompression(format!("lz4: {e}")))?;
            if out.len() > MAX_DECOMPRESSED_SIZE {
                return Err(RecordError::Decompression(format!(
                    "records expand beyond {MAX_DECOMPRESSED_SIZE} bytes"
                )));
            }
            Ok(out)
        }
    }
}

/// LZ4 frame magic number.
const LZ4_MAGIC: u32 = 0x184D_2204;

/// An upper bound of the decompressed size of an LZ4 frame sequence, read
/// from the frame and block headers (each compressed block expands to at
/// most the frame's declared block size; an uncompressed block is its own
/// size). `None` when the data is not a well-formed LZ4 frame sequence.
pub fn lz4_decompressed_bound(data: &[u8]) -> Option<usize> {
    let u32_at = |pos: usize| -> Option<u32> {
        let b = data.get(pos..pos.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut pos = 0usize;
    let mut total = 0usize;
    while pos < data.len() {
        let magic = u32_at(pos)?;
        if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            // A skippable frame: no output.
            let size = u32_at(pos + 4)? as usize;
            pos = pos.checked_add(8)?.checked_add(size)?;
            continue;
        }
        if magic != LZ4_MAGIC {
            return None;
        }
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
        loop {
            let word = u32_at(pos)?;
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
        if pos > data.len() {
            return None;
        }
    }
    Some(total)
}

/// An upper bound of what a records section compressed with `codec`
/// expands to, without decompressing it: the section itself when
/// uncompressed, the LZ4 frame's block bound otherwise, never more than
/// [`MAX_DECOMPRESSED_SIZE`]. Callers reserve this much from a memory
/// budget before validating or decoding the batch.
pub fn decompressed_bound(codec: Compression, section: &[u8]) -> usize {
    match codec {
        Compression::None => section.len(),
        Compression::Lz4 => lz4_decompressed_bound(section)
            .unwrap_or(MAX_DECOMPRESSED_SIZE)
            .min(MAX_DECOMPRESSED_SIZE),
    }
}
