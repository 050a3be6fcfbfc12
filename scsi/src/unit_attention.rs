//! Unit attention conditions, queued per I_T nexus (SAM-5 5.14, SPC-4 5.14).

use std::collections::VecDeque;

use crate::sense::{codes, Sense};

/// Most conditions kept per nexus; older ones of lower precedence are dropped.
const MAX_QUEUED: usize = 16;

/// The unit attention conditions pending for one I_T nexus, oldest first.
///
/// A new nexus starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
/// (6/29/00). A reset-class condition (ASC 0x29) has the highest precedence
/// and replaces everything queued before it; other conditions are queued
/// once each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaQueue {
    q: VecDeque<Sense>,
}

impl Default for UaQueue {
    fn default() -> Self {
        Self::new_nexus()
    }
}

impl UaQueue {
    /// The queue of a nexus seen for the first time: 6/29/00.
    pub fn new_nexus() -> Self {
        let mut q = VecDeque::new();
        q.push_back(codes::POWER_ON_RESET);
        UaQueue { q }
    }

    /// An empty queue.
    pub fn empty() -> Self {
        UaQueue { q: VecDeque::new() }
    }

    /// Establish a unit attention condition.
    pub fn push(&mut self, s: Sense) {
        if s.asc == 0x29 {
            self.q.clear();
            self.q.push_back(s);
            return;
        }
        if self.q.iter().any(|x| x.triple() == s.triple()) {
            return;
        }
        if self.q.len() >= MAX_QUEUED {
            // Drop the oldest condition that is not a reset.
            if let Some(i) = self.q.iter().position(|x| x.asc != 0x29) {
                self.q.remove(i);
            }
        }
        self.q.push_back(s);
    }

    /// The condition that the next command will report.
    pub fn peek(&self) -> Option<&Sense> {
        self.q.front()
    }

    /// Report (and clear) the oldest condition.
    pub fn pop(&mut self) -> Option<Sense> {
        self.q.pop_front()
    }

    /// Clear every pending condition with this ASC/ASCQ.
    pub fn clear(&mut self, asc: u8, ascq: u8) {
        self.q.retain(|s| (s.asc, s.ascq) != (asc, ascq));
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Pending conditions, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Sense> {
        self.q.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_nexus_reports_power_on_then_nothing() {
        let mut q = UaQueue::new_nexus();
        assert_eq!(q.peek().map(Sense::triple), Some((6, 0x29, 0x00)));
        assert_eq!(q.pop().map(|s| s.triple()), Some((6, 0x29, 0x00)));
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn reset_replaces_and_others_queue_once() {
        let mut q = UaQueue::empty();
        q.push(codes::CAPACITY_DATA_CHANGED);
        q.push(codes::MODE_PARAMETERS_CHANGED);
        q.push(codes::CAPACITY_DATA_CHANGED);
        assert_eq!(
            q.iter().map(Sense::triple).collect::<Vec<_>>(),
            vec![(6, 0x2A, 0x09), (6, 0x2A, 0x01)]
        );
        q.push(codes::BUS_DEVICE_RESET);
        assert_eq!(
            q.iter().map(Sense::triple).collect::<Vec<_>>(),
            vec![(6, 0x29, 0x03)]
        );
        q.push(codes::RESERVATIONS_PREEMPTED);
        assert_eq!(q.pop().map(|s| s.triple()), Some((6, 0x29, 0x03)));
        assert_eq!(q.pop().map(|s| s.triple()), Some((6, 0x2A, 0x03)));
    }

    #[test]
    fn queue_is_bounded() {
        let mut q = UaQueue::new_nexus();
        for i in 0..40u8 {
            q.push(Sense::new(crate::sense::SenseKey::UnitAttention, 0x3F, i));
        }
        assert_eq!(q.iter().count(), MAX_QUEUED);
        assert_eq!(q.peek().map(Sense::triple), Some((6, 0x29, 0x00)));
    }
}
