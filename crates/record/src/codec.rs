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
