//! The acknowledgements of one consumer, combined into `basic.ack` frames with `multiple`.
//!
//! An ack per delivery costs the broker a frame and a settlement each; one ack with `multiple`
//! settles every delivery up to its tag at once. On a quorum queue on the benchmark machine,
//! consuming cost the broker 38–53 µs per message with one ack each, and 14–16 µs with one
//! `multiple` ack per 10 (docs/benchmarks-amqp.md). A router settles its deliveries out of order
//! (different users' messages are routed at once), so a frame may only cover a run of settled
//! deliveries at the front of what the consumer holds. The rules:
//!
//! - One frame of the consumer is sent at a time. An ack that comes while another is being sent
//!   waits, and is usually covered by the next `multiple` ack by then: under load several acks
//!   share a frame, and at a low rate each ack is sent at once. Nothing waits for a timer.
//! - An ack held back behind an unsettled delivery is sent, once it returns, only if a later
//!   ack covers it. Once half the prefetch is held back that way, the held acks are sent one by
//!   one, so that a slow message does not keep the consumer from getting more.
//! - A requeue (`basic.nack`) is sent as itself, and the delivery counts as settled only once it
//!   is sent: no `multiple` ack covers a delivery whose nack is not on the wire yet.
//! - A delivery left to go back when the connection ends ([`super::Deliveries::leave`]) must never be
//!   covered by an ack: from then on every ack is sent on its own.
//! - After the channel is recovered the broker numbers deliveries from 1 again, and deliveries
//!   of the old channel can no longer be settled (the broker has already taken them back).

use std::collections::VecDeque;
use std::sync::Mutex;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::DeliveryTag;

use super::unavailable;
use crate::bus::BusError;

/// Where one delivery stands.
#[derive(Debug)]
enum Slot<A> {
    /// Handed out; not settled yet.
    Open,
    /// Acked by its handler; `A` sends the ack.
    Acked(A),
    /// Settled on its own (requeued, or acked in a frame of its own): not outstanding any more.
    Settled,
}

/// A delivery's place: its channel generation and delivery tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    generation: u64,
    tag: DeliveryTag,
}

/// An ack frame to send.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame<A> {
    /// Sends the ack (it carries the delivery tag).
    pub acker: A,
    /// Whether the ack covers every delivery up to its tag.
    pub multiple: bool,
}

/// The deliveries of one consumer that the broker still counts as unsettled, in tag order,
/// and the frames that settle them.
#[derive(Debug)]
pub(super) struct Window<A> {
    generation: u64,
    slots: VecDeque<(DeliveryTag, Slot<A>)>,
    /// Acks held back behind an unsettled delivery before they are sent one by one.
    hold_at_most: usize,
    /// Set once a delivery is left to the end of the connection: no more `multiple`.
    one_by_one: bool,
}

impl<A> Window<A> {
    /// An empty window for a consumer with `prefetch` unsettled deliveries at a time.
    pub fn new(prefetch: u16) -> Self {
        Window {
            generation: 0,
            slots: VecDeque::new(),
            hold_at_most: usize::from(prefetch / 2).max(1),
            one_by_one: false,
        }
    }

    /// Notes a delivery handed out with `tag`.
    pub fn open(&mut self, tag: DeliveryTag) -> Ticket {
        if self.slots.back().is_some_and(|(last, _)| *last >= tag) {
            // Numbered from the start again: the channel was recovered.
            self.recovered();
        }
        self.slots.push_back((tag, Slot::Open));
        Ticket {
            generation: self.generation,
            tag,
        }
    }

    /// The channel was recovered: the deliveries held so far cannot be settled any more.
    pub fn recovered(&mut self) {
        self.generation += 1;
        self.slots.clear();
    }

    fn slot(&mut self, ticket: Ticket) -> Option<&mut Slot<A>> {
        if ticket.generation != self.generation {
            return None;
        }
        let at = self
            .slots
            .binary_search_by_key(&ticket.tag, |(tag, _)| *tag)
            .ok()?;
        self.slots.get_mut(at).map(|(_, slot)| slot)
    }

    /// Notes that the delivery is acked, to be sent by `acker`. False when it can no longer be
    /// settled (the channel was recovered since, or it was settled already).
    pub fn ack(&mut self, ticket: Ticket, acker: A) -> bool {
        match self.slot(ticket) {
            Some(slot @ Slot::Open) => {
                *slot = Slot::Acked(acker);
                true
            }
            _ => false,
        }
    }

    /// Notes that the delivery was settled by a frame of its own.
    pub fn settled(&mut self, ticket: Ticket) {
        if let Some(slot) = self.slot(ticket) {
            *slot = Slot::Settled;
        }
    }

    /// Notes that the delivery stays unsettled until the connection ends.
    pub fn left(&mut self, ticket: Ticket) {
        if self.slot(ticket).is_some() {
            self.one_by_one = true;
        }
    }

    /// The frames to send now, in order; the window forgets what they settle.
    pub fn frames(&mut self) -> Vec<Frame<A>> {
        let mut frames = Vec::new();
        // The settled run at the front: one `multiple` ack for all of it.
        let mut last_ack = None;
        while let Some((_, Slot::Acked(_) | Slot::Settled)) = self.slots.front() {
            if let Some((_, Slot::Acked(acker))) = self.slots.pop_front() {
                if self.one_by_one {
                    frames.push(Frame {
                        acker,
                        multiple: false,
                    });
                } else {
                    last_ack = Some(acker);
                }
            }
        }
        if let Some(acker) = last_ack {
            frames.push(Frame {
                acker,
                multiple: true,
            });
        }
        // Acks held back behind an unsettled delivery.
        let held = self
            .slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Acked(_)))
            .count();
        if held > 0 && (self.one_by_one || held >= self.hold_at_most) {
            for (_, slot) in self.slots.iter_mut() {
                if let Slot::Acked(_) = slot
                    && let Slot::Acked(acker) = std::mem::replace(slot, Slot::Settled)
                {
                    frames.push(Frame {
                        acker,
                        multiple: false,
                    });
                }
            }
        }
        frames
    }
}

/// The acknowledgements of one AMQP consumer (see the module's documentation).
#[derive(Debug)]
pub(super) struct Settlements {
    window: Mutex<Window<lapin::Acker>>,
    /// Held while a frame of this consumer is sent.
    sending: tokio::sync::Mutex<()>,
}

impl Settlements {
    /// For a consumer with `prefetch` unsettled deliveries at a time.
    pub fn new(prefetch: u16) -> Self {
        Settlements {
            window: Mutex::new(Window::new(prefetch)),
            sending: tokio::sync::Mutex::new(()),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window<lapin::Acker>> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a delivery handed out with `tag`.
    pub fn open(&self, tag: DeliveryTag) -> Ticket {
        self.window().open(tag)
    }

    /// The consumer's channel was recovered.
    pub fn recovered(&self) {
        self.window().recovered();
    }

    /// Notes that the delivery stays unsettled until the connection ends.
    pub fn left(&self, ticket: Ticket) {
        self.window().left(ticket);
    }

    /// Acks the delivery: returns once a frame that covers it is sent, or once it is held back
    /// to be covered by a later one (see the module's documentation).
    pub async fn ack(&self, ticket: Ticket, acker: &lapin::Acker) -> Result<(), BusError> {
        if !self.window().ack(ticket, acker.clone()) {
            return Err(recovered());
        }
        let _sending = self.sending.lock().await;
        self.send_acks().await
    }

    /// Requeues the delivery, after the acks that are ready before it.
    pub async fn requeue(&self, ticket: Ticket, acker: &lapin::Acker) -> Result<(), BusError> {
        let _sending = self.sending.lock().await;
        let earlier = self.send_acks().await;
        let requeued = acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await;
        self.window().settled(ticket);
        let later = self.send_acks().await;
        match requeued {
            Ok(true) => earlier.and(later),
            Ok(false) => Err(recovered()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Sends the ack frames that are ready; the caller holds `sending`.
    async fn send_acks(&self) -> Result<(), BusError> {
        let frames = self.window().frames();
        for frame in frames {
            let options = BasicAckOptions {
                multiple: frame.multiple,
            };
            match frame.acker.ack(options).await {
                Ok(true) => {}
                // Already settled, or the channel was recovered: the broker redelivers it.
                Ok(false) => return Err(recovered()),
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }
}

fn recovered() -> BusError {
    unavailable("delivery can no longer be settled (channel recovered)")
}

#[cfg(test)]
mod tests {
    use super::{Frame, Window};

    /// A window whose "ackers" are the delivery tags themselves.
    fn frames(window: &mut Window<u64>) -> Vec<(u64, bool)> {
        window
            .frames()
            .into_iter()
            .map(|Frame { acker, multiple }| (acker, multiple))
            .collect()
    }

    #[test]
    fn acks_in_order_share_one_frame() {
        let mut w = Window::new(64);
        let t: Vec<_> = (1..=3).map(|tag| w.open(tag)).collect();
        for (ticket, tag) in t.iter().zip(1..) {
            assert!(w.ack(*ticket, tag));
        }
        assert_eq!(frames(&mut w), vec![(3, true)]);
        assert_eq!(frames(&mut w), vec![], "nothing left to send");
    }

    #[test]
    fn an_ack_behind_an_unsettled_delivery_waits_for_it() {
        let mut w = Window::new(64);
        let first = w.open(1);
        let second = w.open(2);
        assert!(w.ack(second, 2));
        assert_eq!(
            frames(&mut w),
            vec![],
            "2 must not be acked while 1 is open"
        );
        assert!(w.ack(first, 1));
        assert_eq!(frames(&mut w), vec![(2, true)]);
    }

    #[test]
    fn a_requeue_is_passed_over_once_sent() {
        let mut w = Window::new(64);
        let t: Vec<_> = (1..=3).map(|tag| w.open(tag)).collect();
        assert!(w.ack(t[0], 1));
        assert!(w.ack(t[2], 3));
        assert_eq!(frames(&mut w), vec![(1, true)], "2 is open: 3 waits");
        w.settled(t[1]);
        assert_eq!(frames(&mut w), vec![(3, true)]);
    }

    #[test]
    fn a_requeue_alone_sends_nothing() {
        let mut w = Window::<u64>::new(64);
        let t = w.open(1);
        w.settled(t);
        assert_eq!(frames(&mut w), vec![]);
    }

    #[test]
    fn held_acks_go_one_by_one_at_half_the_prefetch() {
        let mut w = Window::new(8);
        let t: Vec<_> = (1..=6).map(|tag| w.open(tag)).collect();
        for (ticket, tag) in t.iter().zip(1..).skip(1).take(3) {
            assert!(w.ack(*ticket, tag));
            assert_eq!(frames(&mut w), vec![], "held behind 1");
        }
        assert!(w.ack(t[4], 5));
        assert_eq!(
            frames(&mut w),
            vec![(2, false), (3, false), (4, false), (5, false)],
            "four held of prefetch 8"
        );
        assert!(w.ack(t[0], 1));
        assert_eq!(frames(&mut w), vec![(1, true)], "2–5 are settled already");
        assert!(w.ack(t[5], 6));
        assert_eq!(frames(&mut w), vec![(6, true)]);
    }

    #[test]
    fn a_left_delivery_is_never_covered() {
        let mut w = Window::new(64);
        let t: Vec<_> = (1..=4).map(|tag| w.open(tag)).collect();
        assert!(w.ack(t[0], 1));
        w.left(t[1]);
        assert!(w.ack(t[2], 3));
        assert!(w.ack(t[3], 4));
        assert_eq!(
            frames(&mut w),
            vec![(1, false), (3, false), (4, false)],
            "no `multiple` once 2 is left"
        );
    }

    #[test]
    fn deliveries_of_a_recovered_channel_cannot_be_acked() {
        let mut w = Window::new(64);
        let old = w.open(1);
        w.open(2);
        w.recovered();
        assert!(!w.ack(old, 1), "acked across a recovery");
        let new = w.open(1);
        assert!(w.ack(new, 1));
        assert_eq!(frames(&mut w), vec![(1, true)]);
    }

    #[test]
    fn tags_numbered_again_mean_a_recovery() {
        let mut w = Window::new(64);
        let old = w.open(5);
        let new = w.open(1);
        assert!(!w.ack(old, 5));
        assert!(w.ack(new, 1));
        assert_eq!(frames(&mut w), vec![(1, true)]);
    }

    #[test]
    fn a_delivery_is_acked_once() {
        let mut w = Window::new(64);
        let t = w.open(1);
        assert!(w.ack(t, 1));
        assert!(!w.ack(t, 1), "acked twice");
    }
}
