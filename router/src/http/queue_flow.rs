//! How fast a pool's queue moves, as one gateway sees it: the estimated wait of the visitor
//! WebSocket's `queue` frame.
//!
//! At each tick of the queue positions ([`super::queue_position`]) the gateway reads the pool's
//! waiting conversations. Those of the previous read that are gone left the queue: an agent or
//! a bot took them, or they were closed or moved elsewhere. Either way the ones behind moved up.
//! Over the last [`WINDOW`], `departures / time watched` is how many leave per second, and a
//! conversation at place `n` waits about `n / rate`. Nothing is estimated before
//! [`MIN_DEPARTURES`] left within at least [`MIN_WATCHED`] (a guess from one or two would mislead),
//! and a pause in the reads longer than [`MAX_GAP`] (no visitor was connected, the store did
//! not answer) starts the count over, since what left meanwhile was not seen leave.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How far back departures count.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// Departures within the window needed before estimating.
pub const MIN_DEPARTURES: u32 = 3;
/// Time watched within the window needed before estimating.
pub const MIN_WATCHED: Duration = Duration::from_secs(60);
/// A longer pause between two reads starts the count over.
pub const MAX_GAP: Duration = Duration::from_secs(60);
/// Estimates are rounded up to whole minutes: a wait is told as "about N minutes".
const ROUNDING_SECS: u64 = 60;

/// One read of a queue: when, and how many had left since the read before.
#[derive(Debug, Clone, Copy)]
struct Read {
    at: Instant,
    departed: u32,
}

/// The departures of one pool's queue over the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct QueueFlow {
    /// The conversations waiting at the last read.
    waiting: HashSet<String>,
    /// The reads within the window, oldest first; the first one's `departed` happened before
    /// the window and does not count (it is where the time watched starts).
    reads: VecDeque<Read>,
}

impl QueueFlow {
    /// Takes in a read of the queue at `at`: `waiting`, the ids waiting then.
    pub fn observe(&mut self, waiting: &[String], at: Instant) {
        let paused = self
            .reads
            .back()
            .is_none_or(|last| at.saturating_duration_since(last.at) > MAX_GAP);
        let departed = if paused {
            self.reads.clear();
            0
        } else {
            let now: HashSet<&str> = waiting.iter().map(String::as_str).collect();
            let gone = self
                .waiting
                .iter()
                .filter(|id| !now.contains(id.as_str()))
                .count();
            u32::try_from(gone).unwrap_or(u32::MAX)
        };
        self.waiting = waiting.iter().cloned().collect();
        self.reads.push_back(Read { at, departed });
        // Keep the last read before the window as the start of the time watched.
        while self
            .reads
            .get(1)
            .is_some_and(|second| at.saturating_duration_since(second.at) >= WINDOW)
        {
            self.reads.pop_front();
        }
    }

    /// About how long a conversation at `position` (1: next) waits, rounded up to whole
    /// minutes, as of the last read; `None` until enough was seen (see the module's
    /// documentation).
    pub fn estimated_wait(&self, position: u32) -> Option<Duration> {
        let (first, last) = (self.reads.front()?, self.reads.back()?);
        let watched = last.at.saturating_duration_since(first.at);
        let departed: u32 = self.reads.iter().skip(1).map(|r| r.departed).sum();
        if departed < MIN_DEPARTURES || watched < MIN_WATCHED {
            return None;
        }
        let secs = watched.as_secs_f64() * f64::from(position) / f64::from(departed);
        // Saturates for absurd values; rounds up so that "about 1 minute" is never "0".
        let secs = secs.ceil() as u64;
        Some(Duration::from_secs(
            secs.div_ceil(ROUNDING_SECS).max(1) * ROUNDING_SECS,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn nothing_is_estimated_before_enough_left_over_enough_time() {
        let t0 = Instant::now();
        let mut flow = QueueFlow::default();
        flow.observe(&ids(&["a", "b", "c", "d"]), t0);
        assert_eq!(flow.estimated_wait(1), None, "one read");
        // Three leave within 30 s: enough departures, too short a time.
        flow.observe(&ids(&["d"]), t0 + Duration::from_secs(30));
        assert_eq!(flow.estimated_wait(1), None, "30 s watched");
        // 90 s watched, 3 left: one leaves every 30 s.
        flow.observe(&ids(&["d", "e"]), t0 + Duration::from_secs(90));
        assert_eq!(flow.estimated_wait(1), Some(Duration::from_secs(60)));
        assert_eq!(flow.estimated_wait(2), Some(Duration::from_secs(60)));
        assert_eq!(flow.estimated_wait(3), Some(Duration::from_secs(120)));
        assert_eq!(flow.estimated_wait(10), Some(Duration::from_secs(300)));
    }

    #[test]
    fn arrivals_do_not_count_and_a_pause_starts_over() {
        let t0 = Instant::now();
        let mut flow = QueueFlow::default();
        flow.observe(&ids(&["a"]), t0);
        for (i, at) in (1..=6).map(|i| (i, t0 + Duration::from_secs(20 * i))) {
            // Newcomers join behind: nobody leaves.
            let waiting: Vec<String> = (0..=i)
                .map(|n| format!("n{n}"))
                .chain(ids(&["a"]))
                .collect();
            flow.observe(&waiting, at);
        }
        assert_eq!(flow.estimated_wait(1), None, "nobody left");

        let mut flow = QueueFlow::default();
        flow.observe(&ids(&["a", "b", "c", "d"]), t0);
        flow.observe(&ids(&["c", "d"]), t0 + Duration::from_secs(40));
        // Two minutes without a read: what left meanwhile was not seen leave.
        flow.observe(&ids(&[]), t0 + Duration::from_secs(160));
        flow.observe(&ids(&[]), t0 + Duration::from_secs(200));
        assert_eq!(flow.estimated_wait(1), None, "counted again from the pause");
    }

    #[test]
    fn departures_older_than_the_window_stop_counting() {
        let t0 = Instant::now();
        let mut flow = QueueFlow::default();
        let step = Duration::from_secs(30);
        let mut waiting: Vec<String> = (0..40).map(|n| format!("c{n}")).collect();
        flow.observe(&waiting, t0);
        // One leaves every 30 s for 10 minutes: the estimate is 30 s a place.
        for i in 1..=20u32 {
            waiting.remove(0);
            flow.observe(&waiting, t0 + step * i);
        }
        assert_eq!(flow.estimated_wait(4), Some(Duration::from_secs(120)));
        // Then nobody leaves: only the departures still in the window count.
        for i in 21..=37u32 {
            flow.observe(&waiting, t0 + step * i);
        }
        // The last 10 minutes saw 3 leave (at 18, 19 and 20 x 30 s): 200 s a place, told as
        // 4 minutes.
        assert_eq!(flow.estimated_wait(1), Some(Duration::from_secs(240)));
        // Fewer than 3 within the window: no estimate.
        for i in 38..=41u32 {
            flow.observe(&waiting, t0 + step * i);
        }
        assert_eq!(flow.estimated_wait(1), None, "none left within the window");
    }
}
