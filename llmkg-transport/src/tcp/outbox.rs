//! A peer's outgoing queues, one lane per channel plus one for responses, and the scheduler a
//! connection's writer uses to take frames from them fairly.
//!
//! The lanes outlive connections (what is queued while the peer is away goes out when it is
//! back). The scheduler belongs to one connection: it holds that connection's send credit per
//! channel and the long payload whose parts it is sending, if any.
//!
//! Fairness: the scheduler visits the lanes round-robin and takes one frame from each lane
//! that may send, so a message on a quiet channel waits for at most one frame (at most
//! [`MAX_FRAME_LEN`] bytes) of every other busy lane, whatever is queued behind them. A lane
//! may send when it has something queued and, for a channel, credit from the peer. One long
//! payload at a time is split into parts; while its parts go out, other lanes keep sending
//! their single-frame messages in between, and their long payloads wait their turn.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use event_listener::{Event, listener};
use llmkg_federation_core::{ChannelId, TransportError};

use super::frame::{self, FrameError, MAX_FRAME_HEADER_LEN, encode_header};

/// The longest payload one frame carries; longer payloads travel in parts of this size.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Index of the response lane, after the channel lanes.
const RESPONSE_LANE: usize = ChannelId::COUNT;
const LANES: usize = ChannelId::COUNT + 1;

/// What a queued payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Message,
    Request(u64),
    Response(u64),
}

/// One queued payload.
pub(crate) struct Outgoing {
    pub(crate) kind: Kind,
    pub(crate) channel: ChannelId,
    pub(crate) payload: Vec<u8>,
}

impl Outgoing {
    fn lane(&self) -> usize {
        match self.kind {
            Kind::Response(_) => RESPONSE_LANE,
            Kind::Message | Kind::Request(_) => self.channel.index(),
        }
    }

    fn header(
        &self,
        more: bool,
        len: usize,
    ) -> Result<([u8; MAX_FRAME_HEADER_LEN], usize), FrameError> {
        match self.kind {
            Kind::Message => encode_header(frame::MESSAGE, more, self.channel, None, len),
            Kind::Request(id) => encode_header(frame::REQUEST, more, self.channel, Some(id), len),
            Kind::Response(id) => {
                encode_header(frame::RESPONSE, more, ChannelId::DEFAULT, Some(id), len)
            }
        }
    }
}

struct Lanes {
    closed: bool,
    lanes: Vec<VecDeque<Outgoing>>,
}

/// See the [module documentation](self).
pub(crate) struct Outbox {
    capacity: usize,
    lanes: Mutex<Lanes>,
    /// Wakes the writer: something was queued, credit arrived, or the outbox closed.
    writer: Event,
    /// Wakes senders waiting for room.
    space: Event,
}

impl Outbox {
    /// An empty outbox holding up to `capacity` payloads per lane.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            lanes: Mutex::new(Lanes {
                closed: false,
                lanes: (0..LANES).map(|_| VecDeque::new()).collect(),
            }),
            writer: Event::new(),
            space: Event::new(),
        }
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`, waiting while its lane is full. Fails with
    /// [`TransportError::Closed`] once the outbox is closed.
    pub(crate) async fn push(&self, item: Outgoing) -> Result<(), TransportError> {
        let mut item = Some(item);
        loop {
            listener!(self.space => room);
            if let Some(it) = item.take() {
                match self.try_push(it) {
                    Ok(()) => {
                        self.writer.notify(1);
                        return Ok(());
                    }
                    Err(Some(back)) => item = Some(back),
                    Err(None) => return Err(TransportError::Closed),
                }
            }
            room.await;
        }
    }

    /// `Err(Some(item))` when the lane is full, `Err(None)` when closed.
    fn try_push(&self, item: Outgoing) -> Result<(), Option<Outgoing>> {
        let mut lanes = self.lanes();
        if lanes.closed {
            return Err(None);
        }
        let capacity = self.capacity;
        let Some(lane) = lanes.lanes.get_mut(item.lane()) else { return Err(None) };
        if lane.len() >= capacity {
            return Err(Some(item));
        }
        lane.push_back(item);
        Ok(())
    }

    /// Stops taking new payloads; what is queued can still be sent.
    pub(crate) fn close(&self) {
        self.lanes().closed = true;
        self.space.notify(usize::MAX);
        self.writer.notify(usize::MAX);
    }

    /// Wakes the writer (credit arrived, or there is credit to give).
    pub(crate) fn wake_writer(&self) {
        self.writer.notify(usize::MAX);
    }

    /// The event the writer waits on.
    pub(crate) fn writer_event(&self) -> &Event {
        &self.writer
    }

    /// Whether the outbox is closed and every lane is empty.
    pub(crate) fn is_drained(&self) -> bool {
        let lanes = self.lanes();
        lanes.closed && lanes.lanes.iter().all(VecDeque::is_empty)
    }
}

/// The bytes of one frame the scheduler chose: a header and the payload range it carries.
pub(crate) struct Piece {
    pub(crate) header: [u8; MAX_FRAME_HEADER_LEN],
    pub(crate) header_len: usize,
    /// A whole payload taken from its lane, or `None` for a part of the payload in progress
    /// (then `range` is into [`Scheduler::in_progress_payload`]).
    pub(crate) whole: Option<Outgoing>,
    pub(crate) range: std::ops::Range<usize>,
    /// Whether this piece completes a payload (it was whole, or the last part).
    pub(crate) completes: bool,
}

/// One connection's view of the outbox: its credit per channel (in bytes as
/// [`charge`](crate::inbox::charge) counts them; it may go below zero by the last payload
/// sent), its round-robin position and the long payload it is sending in parts.
pub(crate) struct Scheduler {
    credit: [i64; ChannelId::COUNT],
    next_lane: usize,
    in_progress: Option<(usize, Outgoing, usize)>,
}

impl Scheduler {
    pub(crate) fn new() -> Self {
        Self { credit: [0; ChannelId::COUNT], next_lane: 0, in_progress: None }
    }

    /// The peer allows `bytes` more on `channel`.
    pub(crate) fn add_credit(&mut self, channel: ChannelId, bytes: u64) {
        if let Some(c) = self.credit.get_mut(channel.index()) {
            *c = c.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// The credit left on `channel`.
    #[cfg(test)]
    pub(crate) fn credit(&self, channel: ChannelId) -> i64 {
        self.credit.get(channel.index()).copied().unwrap_or(0)
    }

    /// The payload whose parts are being sent.
    pub(crate) fn in_progress_payload(&self) -> &[u8] {
        self.in_progress.as_ref().map_or(&[], |(_, item, _)| &item.payload)
    }

    /// Whether a long payload is half sent.
    pub(crate) fn is_mid_payload(&self) -> bool {
        self.in_progress.is_some()
    }

    /// The next frame to send, round-robin over the lanes that may send; `None` if none may.
    pub(crate) fn next(&mut self, outbox: &Outbox) -> Result<Option<Piece>, FrameError> {
        let mut lanes = outbox.lanes();
        for step in 0..LANES {
            let lane = (self.next_lane + step) % LANES;
            if let Some((busy, _, _)) = &self.in_progress
                && *busy == lane
            {
                self.next_lane = lane + 1;
                return self.next_part().map(Some);
            }
            let Some(queue) = lanes.lanes.get_mut(lane) else { continue };
            let Some(head) = queue.front() else { continue };
            let long = head.payload.len() > MAX_FRAME_LEN;
            if long && self.in_progress.is_some() {
                continue;
            }
            // A channel may start a payload while it has any credit left; the payload's whole
            // charge is taken then, so the peer holds at most one payload beyond its window.
            if lane != RESPONSE_LANE {
                match self.credit.get_mut(lane) {
                    Some(c) if *c > 0 => {
                        let cost = crate::inbox::charge(head.payload.len());
                        *c = c.saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX));
                    }
                    _ => continue,
                }
            }
            let Some(item) = queue.pop_front() else { continue };
            drop(lanes);
            outbox.space.notify(usize::MAX);
            self.next_lane = lane + 1;
            if long {
                self.in_progress = Some((lane, item, 0));
                return self.next_part().map(Some);
            }
            let len = item.payload.len();
            let (header, header_len) = item.header(false, len)?;
            return Ok(Some(Piece {
                header,
                header_len,
                whole: Some(item),
                range: 0..len,
                completes: true,
            }));
        }
        Ok(None)
    }

    fn next_part(&mut self) -> Result<Piece, FrameError> {
        let Some((_, item, sent)) = &mut self.in_progress else {
            return Err(FrameError::Malformed { reason: "no payload in progress" });
        };
        let start = *sent;
        let n = (item.payload.len() - start).min(MAX_FRAME_LEN);
        let more = start + n < item.payload.len();
        let (header, header_len) = item.header(more, n)?;
        *sent = start + n;
        Ok(Piece { header, header_len, whole: None, range: start..start + n, completes: !more })
    }

    /// Called after a part was written: forgets the payload once its last part is out.
    pub(crate) fn part_done(&mut self, completes: bool) {
        if completes {
            self.in_progress = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(n: u8) -> ChannelId {
        ChannelId::new(n).unwrap()
    }

    fn message(channel: ChannelId, len: usize, fill: u8) -> Outgoing {
        Outgoing { kind: Kind::Message, channel, payload: vec![fill; len] }
    }

    fn push(outbox: &Outbox, item: Outgoing) {
        assert!(outbox.try_push(item).is_ok());
    }

    /// (lane, part length, completes) of every piece the scheduler hands out.
    fn drain(s: &mut Scheduler, outbox: &Outbox) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        while let Some(piece) = s.next(outbox).unwrap() {
            let lane = match &piece.whole {
                Some(item) => item.lane(),
                None => s.in_progress.as_ref().map(|(l, _, _)| *l).unwrap(),
            };
            out.push((lane, piece.range.len(), piece.completes));
            if piece.whole.is_none() {
                s.part_done(piece.completes);
            }
        }
        out
    }

    #[test]
    fn a_quiet_channel_waits_for_one_frame_of_a_busy_one() {
        let outbox = Outbox::new(1000);
        for _ in 0..100 {
            push(&outbox, message(ch(0), 10, 0));
        }
        push(&outbox, message(ch(1), 10, 1));
        let mut s = Scheduler::new();
        s.add_credit(ch(0), 1 << 20);
        s.add_credit(ch(1), 1 << 20);
        let order = drain(&mut s, &outbox);
        let quiet = order.iter().position(|(lane, _, _)| *lane == 1).unwrap();
        assert!(quiet <= 1, "the quiet channel's message went out {quiet}th");
        assert_eq!(order.len(), 101);
    }

    #[test]
    fn no_credit_no_frame_and_responses_need_none() {
        let outbox = Outbox::new(10);
        push(&outbox, message(ch(2), 1, 0));
        push(&outbox, Outgoing { kind: Kind::Response(9), channel: ch(0), payload: vec![1] });
        let mut s = Scheduler::new();
        assert_eq!(drain(&mut s, &outbox), vec![(RESPONSE_LANE, 1, true)]);
        s.add_credit(ch(2), 1);
        assert_eq!(drain(&mut s, &outbox), vec![(2, 1, true)]);
        // Any credit lets a payload start; its whole charge is taken.
        assert_eq!(s.credit(ch(2)), 1 - crate::inbox::charge(1) as i64);
        push(&outbox, message(ch(2), 1, 0));
        assert_eq!(drain(&mut s, &outbox), vec![]);
    }

    #[test]
    fn long_payloads_go_in_parts_one_at_a_time_with_short_ones_in_between() {
        let outbox = Outbox::new(10);
        let long = 2 * MAX_FRAME_LEN + 5;
        push(&outbox, message(ch(0), long, 0));
        push(&outbox, message(ch(1), long, 1));
        push(&outbox, message(ch(2), 3, 2));
        push(&outbox, message(ch(2), 3, 2));
        let mut s = Scheduler::new();
        for c in 0..3 {
            s.add_credit(ch(c), 10 << 20);
        }
        let order = drain(&mut s, &outbox);
        assert_eq!(
            order,
            vec![
                (0, MAX_FRAME_LEN, false),
                (2, 3, true),
                (0, MAX_FRAME_LEN, false),
                (2, 3, true),
                (0, 5, true),
                (1, MAX_FRAME_LEN, false),
                (1, MAX_FRAME_LEN, false),
                (1, 5, true),
            ]
        );
    }

    #[test]
    fn a_full_lane_makes_its_sender_wait_and_a_closed_outbox_refuses() {
        let outbox = Outbox::new(1);
        push(&outbox, message(ch(0), 1, 0));
        assert!(matches!(outbox.try_push(message(ch(0), 1, 0)), Err(Some(_))));
        // Another lane has room.
        push(&outbox, message(ch(1), 1, 0));
        outbox.close();
        assert!(matches!(outbox.try_push(message(ch(3), 1, 0)), Err(None)));
        assert!(!outbox.is_drained());
        let mut s = Scheduler::new();
        s.add_credit(ch(0), 5 << 10);
        s.add_credit(ch(1), 5 << 10);
        assert_eq!(drain(&mut s, &outbox).len(), 2);
        assert!(outbox.is_drained());
    }
}
