//! Recognising a broker's redelivery of a message that is already in the WAL.
//!
//! A QoS 1/2 message is acknowledged only after its block is durable, and an acknowledgement can
//! still be lost (the gateway killed before the client wrote it, or with it in the socket's send
//! queue). The broker then sends the message again, with DUP set and the same packet id. Each
//! stored message is remembered as its packet id plus a 48-bit hash of topic and payload, from
//! when it is stored until its acknowledgement has been written out and `margin` later ones have
//! been too. This set is stored with every WAL block, so a restarted gateway recognises what the
//! killed one stored.
//!
//! No count of unacknowledged messages is assumed: brokers may have more in flight than their
//! configured limit (mosquitto 2.0 redelivered 2,142 messages to one client with
//! `max_inflight_messages 1000` in the crash tests here).

use crate::client::Message;
use std::collections::VecDeque;

pub struct Remembered {
    /// Stored (or recognised again), acknowledgement not yet written out: (packet id, entry).
    unacked: VecDeque<(u16, u64)>,
    /// Acknowledged most recently, oldest first.
    acked: VecDeque<u64>,
    margin: usize,
}

fn entry(m: &Message) -> u64 {
    // FNV-1a over topic, a separator and payload; 48 bits of it beside the 16-bit packet id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in m
        .topic
        .bytes()
        .chain([0xff])
        .chain(m.payload.iter().copied())
    {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((m.pkid as u64) << 48) | (h & 0xffff_ffff_ffff)
}

impl Remembered {
    /// From the list a previous run stored (all of it counts as acknowledged: the broker resends
    /// what was not, first thing after the reconnect).
    pub fn restore(stored: impl IntoIterator<Item = u64>, margin: usize) -> Self {
        Remembered {
            unacked: VecDeque::new(),
            acked: stored.into_iter().collect(),
            margin,
        }
    }

    /// A QoS 1/2 message about to be stored.
    pub fn stored(&mut self, m: &Message) {
        if m.qos > 0 {
            self.unacked.push_back((m.pkid, entry(m)));
        }
    }

    /// Whether `m` (a redelivery) was stored before. If so it waits for its acknowledgement again.
    pub fn recognise(&mut self, m: &Message) -> bool {
        let e = entry(m);
        if let Some(i) = self.acked.iter().rposition(|&x| x == e) {
            self.acked.remove(i);
        } else if let Some(i) = self.unacked.iter().rposition(|&(_, x)| x == e) {
            self.unacked.remove(i);
        } else {
            return false;
        }
        self.unacked.push_back((m.pkid, e));
        true
    }

    /// The acknowledgement of packet id `pkid` was written out.
    pub fn acked(&mut self, pkid: u16) {
        let i = match self.unacked.front() {
            Some(&(p, _)) if p == pkid => 0,
            _ => match self.unacked.iter().position(|&(p, _)| p == pkid) {
                Some(i) => i,
                None => return,
            },
        };
        let (_, e) = self.unacked.remove(i).expect("index found");
        // Shrinks by one per acknowledgement while over the margin (after a restore).
        for _ in 0..2 {
            if self.acked.len() >= self.margin {
                self.acked.pop_front();
            }
        }
        self.acked.push_back(e);
    }

    /// Everything to store with the next block.
    pub fn entries(&self) -> Vec<u64> {
        self.acked
            .iter()
            .copied()
            .chain(self.unacked.iter().map(|&(_, e)| e))
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.acked.len() + self.unacked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pkid: u16, n: u32) -> Message {
        Message {
            topic: "t".into(),
            payload: n.to_string().into_bytes(),
            qos: 1,
            retain: false,
            dup: true,
            pkid,
            content_type: None,
            user_properties: Vec::new(),
        }
    }

    #[test]
    fn unacknowledged_messages_are_remembered_however_many() {
        let mut r = Remembered::restore([], 10);
        for i in 0..5000u32 {
            r.stored(&msg((i % 60000) as u16 + 1, i));
        }
        assert!(r.recognise(&msg(1, 0)), "the oldest unacknowledged one");
        // Restored in a new run: still known.
        let mut again = Remembered::restore(r.entries(), 10);
        assert!(again.recognise(&msg(2, 1)));
        assert!(
            !again.recognise(&msg(2, 99_999)),
            "same packet id, other payload"
        );
    }

    #[test]
    fn acknowledged_ones_are_kept_for_a_margin_then_forgotten() {
        let mut r = Remembered::restore([], 3);
        for i in 1..=10u16 {
            r.stored(&msg(i, i as u32));
            r.acked(i);
        }
        assert_eq!(r.len(), 3);
        assert!(r.recognise(&msg(9, 9)));
        assert!(!r.recognise(&msg(2, 2)));
        // Recognised: waits for its acknowledgement again, then is in the margin.
        r.acked(9);
        assert!(r.recognise(&msg(9, 9)));
    }

    #[test]
    fn a_large_restored_set_shrinks_to_the_margin() {
        let mut r = Remembered::restore((0..100u64).map(|i| i << 48), 10);
        for i in 1..=200u16 {
            r.stored(&msg(i, i as u32));
            r.acked(i);
        }
        assert_eq!(r.len(), 10);
    }
}
