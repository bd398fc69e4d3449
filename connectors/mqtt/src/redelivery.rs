//! Recognising a broker's redelivery of a message that is already in the WAL.
//!
//! A QoS 1/2 message is acknowledged only after its block is durable, and an acknowledgement can
//! still be lost: the gateway killed before the client wrote it; written but still in a socket
//! buffer when a SIGKILL resets the connection; or read by nobody because the broker stopped
//! (mosquitto then restarts from its persistence file without it). The broker sends the message
//! again, with DUP set and the same packet id. Each stored message is remembered as its packet id
//! plus a 48-bit hash of topic and payload, until the broker has shown that it read the
//! acknowledgement: the source sends a probe (an UNSUBSCRIBE nobody uses) after each block's
//! acknowledgements, and the broker's answer proves it read everything written before the probe.
//! Redeliveries after a reconnect come before the answer to the new connection's first probe, so
//! they are recognised while still remembered.
//!
//! This set is stored with every WAL block, so a restarted gateway recognises what the killed one
//! stored. No count of unacknowledged messages is assumed: brokers may have more in flight than
//! their configured limit (mosquitto 2.0 redelivered 2,142 messages to one client with
//! `max_inflight_messages 1000` in the crash tests here).

use crate::client::Message;
use std::collections::VecDeque;

pub struct Remembered {
    /// Stored (or recognised again), acknowledgement not yet written out: (packet id, entry).
    unacked: VecDeque<(u16, u64)>,
    /// Acknowledgement written out, not yet proven read: (sequence number, entry), oldest first.
    acked: VecDeque<(u64, u64)>,
    /// The sequence number the next acknowledged entry gets.
    next: u64,
    /// Probes written out on this connection and not answered yet: (packet id, first sequence
    /// number acknowledged after it).
    probes: VecDeque<(u16, u64)>,
    /// Most acknowledged entries kept when probes go unanswered (a broker that never answers).
    cap: usize,
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
    /// From the list a previous run stored: all of it counts as acknowledged and unproven (the
    /// broker resends what it lacks first thing after the reconnect, before it answers a probe).
    pub fn restore(stored: impl IntoIterator<Item = u64>, cap: usize) -> Self {
        let acked: VecDeque<(u64, u64)> =
            stored.into_iter().zip(0..).map(|(e, i)| (i, e)).collect();
        Remembered {
            unacked: VecDeque::new(),
            next: acked.len() as u64,
            acked,
            probes: VecDeque::new(),
            cap: cap.max(1),
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
        if let Some(i) = self.acked.iter().rposition(|&(_, x)| x == e) {
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
        if self.acked.len() >= self.cap {
            self.acked.pop_front();
        }
        self.acked.push_back((self.next, e));
        self.next += 1;
    }

    /// Our PUBCOMP for QoS 2 packet id `pkid` was written out: the broker had our PUBREC (it sent
    /// PUBREL), so it never sends that message again — and may give `pkid` to a new message. The
    /// entry goes, so a new message with the same id, topic and payload, redelivered after a
    /// reconnect, is not taken for it. (QoS 1 has no such end: see docs/mqtt.md.)
    pub fn completed(&mut self, pkid: u16) {
        if let Some(i) = self
            .acked
            .iter()
            .position(|&(_, e)| (e >> 48) as u16 == pkid)
        {
            self.acked.remove(i);
        }
    }

    /// A probe with packet id `pkid` was written out after every acknowledgement so far.
    pub fn probe_sent(&mut self, pkid: u16) {
        self.probes.push_back((pkid, self.next));
    }

    /// The broker answered probe `pkid`: it has read the acknowledgements written before it.
    pub fn probe_answered(&mut self, pkid: u16) {
        let Some(i) = self.probes.iter().position(|&(p, _)| p == pkid) else {
            return;
        };
        let (_, until) = self.probes[i];
        self.probes.drain(..=i);
        while self.acked.front().is_some_and(|&(seq, _)| seq < until) {
            self.acked.pop_front();
        }
    }

    /// The connection dropped: probes in flight on it will not be answered.
    pub fn connection_lost(&mut self) {
        self.probes.clear();
    }

    /// Everything to store with the next block.
    pub fn entries(&self) -> Vec<u64> {
        self.acked
            .iter()
            .map(|&(_, e)| e)
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
    fn acknowledged_ones_are_remembered_until_a_later_probe_is_answered() {
        let mut r = Remembered::restore([], 1000);
        for i in 1..=10u16 {
            r.stored(&msg(i, i as u32));
            r.acked(i);
        }
        r.probe_sent(500);
        r.stored(&msg(11, 11));
        r.acked(11);
        // Written, not yet proven read: a redelivery of any of them is recognised.
        assert_eq!(r.len(), 11);
        r.probe_answered(500);
        assert_eq!(r.len(), 1, "only the one acknowledged after the probe");
        assert!(!r.recognise(&msg(2, 2)));
        assert!(r.recognise(&msg(11, 11)));
    }

    #[test]
    fn a_probe_lost_with_its_connection_proves_nothing() {
        let mut r = Remembered::restore([], 1000);
        r.stored(&msg(1, 1));
        r.acked(1);
        r.probe_sent(7);
        r.connection_lost();
        r.probe_answered(7); // an answer on no connection: ignored
        assert!(r.recognise(&msg(1, 1)));
    }

    #[test]
    fn a_restored_set_is_kept_until_the_first_probe_is_answered() {
        let mut r = Remembered::restore((0..5000u64).map(|i| i << 48 | i), 100_000);
        r.probe_sent(1);
        assert_eq!(r.len(), 5000);
        r.probe_answered(1);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn unanswered_probes_leave_at_most_the_cap() {
        let mut r = Remembered::restore([], 10);
        for i in 1..=200u16 {
            r.stored(&msg(i, i as u32));
            r.acked(i);
        }
        assert_eq!(r.len(), 10);
    }

    /// Issue 18: a new QoS 2 message that reused the packet id of one whose PUBCOMP was written,
    /// with the same topic and payload, redelivered after a reconnect, was dropped as a duplicate.
    #[test]
    fn a_completed_qos2_exchange_frees_its_packet_id_for_a_new_message() {
        let mut r = Remembered::restore([], 1000);
        let mut m = msg(7, 42);
        m.qos = 2;
        r.stored(&m);
        r.acked(7);
        // PUBREC written, PUBREL not yet: a redelivery is the same message.
        assert!(r.recognise(&m));
        r.acked(7);
        r.completed(7);
        assert!(
            !r.recognise(&m),
            "after PUBCOMP the id belongs to a new message"
        );
    }
}
