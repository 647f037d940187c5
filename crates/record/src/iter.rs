//! Iterating concatenated batches (a segment file or a fetch response).

use crate::{BatchHeader, RecordError};

/// Iterates the complete batches in a byte slice of concatenated batches.
///
/// Yields each batch's header and bytes. It checks only the header (magic,
/// length), not the CRC. It stops (returns `None`) at a trailing partial
/// batch; after yielding an error it stops too.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    /// Iterates the batches of `buf` from its start.
    pub fn new(buf: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Bytes consumed by the batches yielded so far (the position of the
    /// next batch, or of the trailing partial batch).
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < crate::HEADER_SIZE {
            if rest.len() > 16 && rest[16] as i8 != crate::header::MAGIC {
                self.failed = true;
                return Some(Err(RecordError::BadMagic(rest[16] as i8)));
            }
            return None;
        }
        match BatchHeader::parse(rest) {
            Ok(h) => {
                let size = h.total_size();
                if rest.len() < size {
                    return None;
                }
                self.pos += size;
                Some(Ok((h, &rest[..size])))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
