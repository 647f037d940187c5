//! Idempotent producer state (Kafka's `ProducerStateManager`): for every
//! producer id seen in the recent log, its epoch and the sequence ranges
//! and offsets of its last [`PRODUCER_WINDOW`] batches. A leader append of
//! a batch already in the window is a duplicate (answered with the
//! original offsets, nothing written); one that does not continue the
//! producer's sequence is refused.
//!
//! The state lives in memory. It is kept up to date by every append
//! (leader and follower alike, so a new leader has it), and rebuilt from
//! the batch headers of the last two segments on open and after a
//! truncation. A producer not seen there is unknown: its next batch is
//! accepted only at sequence 0 (anything else may have overtaken the
//! batches before it, and is refused as out of order; a producer whose state
//! was forgotten starts again under a new producer id, as the SDK does).

use std::collections::{HashMap, VecDeque};

use streambus_record::{BatchHeader, sequence_add as seq_add};

use crate::LogError;
use crate::segment::Segment;

pub use streambus_record::PRODUCER_WINDOW;

/// A producer unheard of for this long is forgotten (Kafka's
/// `producer.id.expiration.ms` default).
pub const PRODUCER_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;

/// How many records between sweeps for expired producers.
const SWEEP_EVERY: u32 = 4096;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    last_seen_ms: i64,
}

/// What a leader append of a producer batch must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Not seen before: append it.
    Append,
    /// Already in the log at these offsets: append nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// Every producer's recent batches.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
    since_sweep: u32,
}

fn last_seq(h: &BatchHeader) -> i32 {
    seq_add(h.base_sequence, h.last_offset_delta)
}

impl ProducerState {
    /// Checks a batch a leader is about to append.
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck, LogError> {
        if h.producer_id < 0 {
            return Ok(SequenceCheck::Append);
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return if h.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(LogError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected: 0,
                    got: h.base_sequence,
                })
            };
        };
        if h.producer_epoch < entry.epoch {
            return Err(LogError::ProducerFenced {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            // A new epoch starts its sequences again.
            return if h.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(LogError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected: 0,
                    got: h.base_sequence,
                })
            };
        }
        let last = last_seq(h);
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        match entry.batches.back() {
            Some(b) if seq_add(b.last_seq, 1) != h.base_sequence => {
                Err(LogError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected: seq_add(b.last_seq, 1),
                    got: h.base_sequence,
                })
            }
            _ => Ok(SequenceCheck::Append),
        }
    }

    /// Records a batch now in the log (`h` with its final base offset),
    /// appended at wall-clock time `now_ms`.
    pub fn record(&mut self, h: &BatchHeader, now_ms: i64) {
        if h.producer_id < 0 || h.is_control() {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::with_capacity(PRODUCER_WINDOW),
                last_seen_ms: now_ms,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == PRODUCER_WINDOW {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.producers
                .retain(|_, e| now_ms - e.last_seen_ms < PRODUCER_EXPIRY_MS);
        }
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// The state implied by the batch headers of the last two `segments`
    /// (the most recent batches of every producer still writing).
    pub fn rebuild(segments: &[Segment]) -> Result<ProducerState, LogError> {
        let mut state = ProducerState::default();
        for seg in &segments[segments.len().saturating_sub(2)..] {
            let mut pos = 0;
            while let Some(h) = Segment::header_at(&*seg.file, &seg.path, pos, seg.size)? {
                // Appended "now" as far as expiry goes: their real time is
                // unknown, and a day is long enough to forget them later.
                state.record(&h, crate::log::now_ms());
                pos += h.total_size() as u64;
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32, base: i64) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: records,
        }
    }

    #[test]
    fn sequences_continue_duplicates_are_found_and_gaps_refused() {
        let mut s = ProducerState::default();
        let a = header(7, 0, 0, 3, 100);
        assert_eq!(s.check(&a).unwrap(), SequenceCheck::Append);
        s.record(&a, 0);
        let b = header(7, 0, 3, 2, 103);
        assert_eq!(s.check(&b).unwrap(), SequenceCheck::Append);
        s.record(&b, 0);
        // A retry of either is a duplicate, with the original offsets.
        assert_eq!(
            s.check(&header(7, 0, 0, 3, -1)).unwrap(),
            SequenceCheck::Duplicate {
                base_offset: 100,
                last_offset: 102
            }
        );
        assert_eq!(
            s.check(&header(7, 0, 3, 2, -1)).unwrap(),
            SequenceCheck::Duplicate {
                base_offset: 103,
                last_offset: 104
            }
        );
        // A gap, or a batch overlapping others differently, is refused.
        for seq in [6, 4, 1] {
            match s.check(&header(7, 0, seq, 1, -1)) {
                Err(LogError::OutOfOrderSequence {
                    producer_id: 7,
                    expected: 5,
                    got,
                }) => assert_eq!(got, seq),
                other => panic!("seq {seq}: {other:?}"),
            }
        }
        // Other producers and non-idempotent batches are independent; an
        // unknown producer starts at sequence 0 (a later batch may have
        // overtaken its first).
        assert_eq!(
            s.check(&header(8, 0, 0, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
        assert!(matches!(
            s.check(&header(8, 0, 40, 1, -1)),
            Err(LogError::OutOfOrderSequence {
                producer_id: 8,
                expected: 0,
                got: 40
            })
        ));
        assert_eq!(
            s.check(&header(-1, -1, -1, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn epochs_fence_older_producers_and_restart_sequences() {
        let mut s = ProducerState::default();
        s.record(&header(7, 2, 0, 5, 0), 0);
        assert!(matches!(
            s.check(&header(7, 1, 5, 1, -1)),
            Err(LogError::ProducerFenced {
                producer_id: 7,
                epoch: 1,
                current: 2
            })
        ));
        assert!(matches!(
            s.check(&header(7, 3, 5, 1, -1)),
            Err(LogError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            s.check(&header(7, 3, 0, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
        s.record(&header(7, 3, 0, 1, 5), 0);
        // The old epoch's batches are gone: its first batch is no
        // duplicate now.
        assert!(matches!(
            s.check(&header(7, 3, 0, 5, -1)),
            Err(LogError::OutOfOrderSequence {
                expected: 1,
                got: 0,
                ..
            })
        ));
        assert_eq!(
            s.check(&header(7, 3, 1, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn only_the_last_window_of_batches_is_remembered() {
        let mut s = ProducerState::default();
        for i in 0..(PRODUCER_WINDOW as i32 + 2) {
            s.record(&header(1, 0, i, 1, i64::from(i)), 0);
        }
        // The oldest two fell out: no longer duplicates, and not the next
        // sequence either.
        assert!(matches!(
            s.check(&header(1, 0, 0, 1, -1)),
            Err(LogError::OutOfOrderSequence { expected: 7, .. })
        ));
        assert!(matches!(
            s.check(&header(1, 0, 2, 1, -1)),
            Ok(SequenceCheck::Duplicate { base_offset: 2, .. })
        ));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 1, 3), 1);
        let mut s = ProducerState::default();
        s.record(&header(1, 0, i32::MAX - 1, 2, 0), 0);
        assert_eq!(
            s.check(&header(1, 0, 0, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
    }

    #[test]
    fn producers_unheard_of_for_a_day_are_forgotten() {
        let mut s = ProducerState::default();
        s.record(&header(1, 0, 0, 1, 0), 0);
        for i in 0..SWEEP_EVERY {
            s.record(&header(2, 0, i as i32, 1, 1), PRODUCER_EXPIRY_MS);
        }
        assert_eq!(s.len(), 1);
        // Forgotten: sequence 99 no longer continues anything, and the
        // producer must start again at 0.
        assert!(matches!(
            s.check(&header(1, 0, 99, 1, -1)),
            Err(LogError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            s.check(&header(1, 0, 0, 1, -1)).unwrap(),
            SequenceCheck::Append
        );
    }
}
