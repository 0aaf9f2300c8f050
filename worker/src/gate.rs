//! The Twilio gate: when Twilio refuses a send for now (429, 5xx, unreachable, an unknown
//! outcome), the other sends of this process wait instead of each trying, failing and
//! scheduling its own retry.
//!
//! Without it a Twilio outage turns every send in flight into a failed attempt every few
//! seconds (a retry storm: under the pressure test's 20 s outage, about 4,000 failed attempts,
//! each a job run with its ledger writes), all of it work the database does while the backlog
//! grows. With it, one send probes at a time while the gate is closed:
//!
//! ```text
//! open ──refused──▶ closed until t (hold: 0.5 s doubling to 2 s, or Retry-After if longer)
//!   ▲                   │ t passed: the next send is the probe, the others wait for its answer
//!   └──answered─── probing ──refused──▶ closed again, longer
//! ```
//! Any answer that is not a refusal for now (accepted, or a definitive 4xx) opens the gate:
//! Twilio is up. A lost answer (time-out, connection dropped after sending) moves nothing. A send waits at most `MAX_WAIT` inline; a longer hold is handed back to the
//! queue as a job scheduled for when the gate opens, so a worker's stop is never held up.
//! The gate is per process: each worker learns of an outage from its own sends.

use std::time::Duration;

use shared::{retry::RetryPolicy, twilio::client::CreateOutcome};
use tokio::{sync::Notify, time::Instant};

/// How long one send waits at the gate before its job is rescheduled instead.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// How long the gate stays closed after the nth refusal in a row (Retry-After wins if longer).
/// Capped low: a probe costs one request, and the cap is how late sends resume after Twilio does.
const HOLD: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(2), u32::MAX);

/// The gate's state; its transitions are the pure functions below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Refusals in a row; 0: open.
    refusals: u32,
    /// Closed until then (meaningful while `refusals > 0`).
    until: Option<Instant>,
    /// A probe is in flight: others wait for its answer.
    probing: bool,
}

/// What a send arriving at the gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Pass,
    /// Go ahead as the probe: the gate waits for this answer.
    Probe,
    /// Wait until then (or until the probe answers), then ask again.
    Wait(Instant),
}

/// What Twilio's answer says of Twilio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered (accepted, or refused this message for good).
    Answered,
    /// Refused for now, with its Retry-After if any.
    RefusedForNow(Option<Duration>),
    /// No answer to judge by: the gate stays as it is (a probe's turn passes to the next send).
    Inconclusive,
}

/// What a create's outcome says of Twilio. An unknown outcome (a time-out, a connection lost
/// after the request went out) says nothing either way: Twilio may well have taken the message,
/// and its answer was lost on the way back.
pub fn verdict(outcome: &CreateOutcome) -> Verdict {
    match outcome {
        CreateOutcome::Accepted(_) | CreateOutcome::Permanent { .. } => Verdict::Answered,
        CreateOutcome::Retryable { retry_after, .. } => Verdict::RefusedForNow(*retry_after),
        CreateOutcome::Unknown { .. } => Verdict::Inconclusive,
    }
}

/// Whether a send arriving at `now` may go (and the state after).
pub fn admit(state: State, now: Instant) -> (Admit, State) {
    match state {
        State { refusals: 0, .. } => (Admit::Pass, state),
        State {
            probing: true,
            until,
            ..
        } => (Admit::Wait(until.unwrap_or(now).max(now) + HOLD.cap), state),
        State {
            until: Some(until), ..
        } if now < until => (Admit::Wait(until), state),
        _ => (
            Admit::Probe,
            State {
                probing: true,
                ..state
            },
        ),
    }
}

/// The state after an answer arriving at `now`; `probe` when it is the probe's.
pub fn settle(state: State, verdict: Verdict, probe: bool, now: Instant) -> State {
    match verdict {
        Verdict::Answered => State::default(),
        Verdict::Inconclusive if probe => abandon(state),
        Verdict::Inconclusive => state,
        Verdict::RefusedForNow(retry_after) => {
            let refusals = state.refusals.saturating_add(1);
            let step = HOLD.step(refusals);
            let hold = retry_after.map_or(step, |ra| ra.max(step));
            // A send that left before the gate closed and is refused after it: the hold
            // already covers it; only the probe's refusal (or a new one) extends it.
            let until = now + hold;
            State {
                refusals,
                until: Some(state.until.map_or(until, |u| u.max(until))),
                probing: state.probing && !probe,
            }
        }
    }
}

/// The state when a probe ends without an answer (its send was dropped): the next send probes.
pub fn abandon(state: State) -> State {
    State {
        probing: false,
        ..state
    }
}

/// One process's gate.
#[derive(Debug, Default)]
pub struct Gate {
    state: std::sync::Mutex<State>,
    changed: Notify,
}

/// A send let through; say what Twilio answered with [`Ticket::settle`].
pub struct Ticket<'a> {
    gate: &'a Gate,
    probe: bool,
    settled: bool,
}

impl Gate {
    /// Waits until this send may go; `Err(after)` when the gate stays closed longer than
    /// `MAX_WAIT` from now (the caller schedules its job for then, no attempt made).
    pub async fn pass(&self) -> Result<Ticket<'_>, Duration> {
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            // Registered before the state is read, so an answer in between still wakes us.
            let changed = self.changed.notified();
            let now = Instant::now();
            let admitted = {
                let mut state = self.state.lock().expect("gate state");
                let (admitted, next) = admit(*state, now);
                *state = next;
                admitted
            };
            match admitted {
                Admit::Pass | Admit::Probe => {
                    return Ok(Ticket {
                        gate: self,
                        probe: admitted == Admit::Probe,
                        settled: false,
                    });
                }
                Admit::Wait(until) if until > deadline => return Err(until - now),
                Admit::Wait(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = changed => {}
                    }
                }
            }
        }
    }

    fn apply(&self, f: impl FnOnce(State) -> State) {
        let mut state = self.state.lock().expect("gate state");
        let before = *state;
        *state = f(before);
        let after = *state;
        drop(state);
        self.changed.notify_waiters();
        match (before.refusals, after.refusals) {
            (0, 1..) => tracing::warn!("Twilio refused a send for now: sends wait for the gate"),
            (1.., 0) => tracing::info!(
                refusals = before.refusals,
                "Twilio answers again: the gate is open"
            ),
            _ => {}
        }
    }

    /// Whether the gate is closed now (for the metrics and tests).
    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("gate state").refusals > 0
    }
}

impl Ticket<'_> {
    pub fn settle(mut self, verdict: Verdict) {
        self.settled = true;
        let probe = self.probe;
        self.gate
            .apply(|s| settle(s, verdict, probe, Instant::now()));
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.gate.apply(abandon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(refusals: u32, until: Instant, probing: bool) -> State {
        State {
            refusals,
            until: Some(until),
            probing,
        }
    }

    #[test]
    fn admit_over_every_state() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let earlier = now - Duration::from_secs(1);
        let table = [
            // (state, admitted, probing after)
            (State::default(), Admit::Pass, false),
            (closed(1, later, false), Admit::Wait(later), false),
            (closed(1, earlier, false), Admit::Probe, true),
            (closed(3, now, false), Admit::Probe, true),
            // While a probe is out, others wait for its answer (at most one hold).
            (closed(1, earlier, true), Admit::Wait(now + HOLD.cap), true),
            (closed(1, later, true), Admit::Wait(later + HOLD.cap), true),
        ];
        for (state, want, probing) in table {
            let (got, next) = admit(state, now);
            assert_eq!(got, want, "{state:?}");
            assert_eq!(next.probing, probing, "{state:?}");
            assert_eq!(next.refusals, state.refusals, "admitting changes no count");
        }
    }

    #[test]
    fn settle_over_every_verdict() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let far = now + s(60);
        // (state, verdict, probe) -> (refusals, closed until, probing)
        let table = [
            (State::default(), Verdict::Answered, false, (0, None, false)),
            (
                closed(4, far, true),
                Verdict::Answered,
                true,
                (0, None, false),
            ),
            // An answer from a send that left before the gate closed opens it too.
            (
                closed(4, far, true),
                Verdict::Answered,
                false,
                (0, None, false),
            ),
            (
                State::default(),
                Verdict::RefusedForNow(None),
                false,
                (1, Some(now + ms(500)), false),
            ),
            (
                closed(1, now, true),
                Verdict::RefusedForNow(None),
                true,
                (2, Some(now + s(1)), false),
            ),
            // The hold doubles to its cap.
            (
                closed(9, now, true),
                Verdict::RefusedForNow(None),
                true,
                (10, Some(now + s(2)), false),
            ),
            // Retry-After wins when longer.
            (
                State::default(),
                Verdict::RefusedForNow(Some(s(30))),
                false,
                (1, Some(now + s(30)), false),
            ),
            // An unknown outcome changes nothing but the probe's turn.
            (
                closed(2, far, true),
                Verdict::Inconclusive,
                true,
                (2, Some(far), false),
            ),
            (
                closed(2, far, true),
                Verdict::Inconclusive,
                false,
                (2, Some(far), true),
            ),
            (
                State::default(),
                Verdict::Inconclusive,
                false,
                (0, None, false),
            ),
            // A late refusal never shortens a hold, nor ends another's probe.
            (
                closed(2, far, true),
                Verdict::RefusedForNow(None),
                false,
                (3, Some(far), true),
            ),
        ];
        for (state, verdict, probe, (refusals, until, probing)) in table {
            let got = settle(state, verdict, probe, now);
            assert_eq!(
                (
                    got.refusals,
                    got.until.filter(|_| got.refusals > 0),
                    got.probing
                ),
                (refusals, until, probing),
                "{state:?} {verdict:?} probe={probe}"
            );
        }
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_send_probe() {
        let now = Instant::now();
        let state = abandon(closed(2, now - Duration::from_secs(1), true));
        assert_eq!(admit(state, now).0, Admit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_and_everyone_goes_once_it_is_answered() {
        let gate = Gate::default();
        gate.pass()
            .await
            .unwrap()
            .settle(Verdict::RefusedForNow(None));
        assert!(gate.is_closed());
        // After the hold, the first send probes; a second waits for its answer.
        let probe = gate.pass().await.unwrap();
        assert!(probe.probe);
        let waiting = async { gate.pass().await.map(|t| t.probe) };
        let answer = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            probe.settle(Verdict::Answered);
        };
        let (second, ()) = tokio::join!(waiting, answer);
        assert_eq!(second, Ok(false), "let through as an ordinary send");
        assert!(!gate.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_longer_than_the_wait_is_handed_back() {
        let gate = Gate::default();
        gate.pass()
            .await
            .unwrap()
            .settle(Verdict::RefusedForNow(Some(Duration::from_secs(60))));
        let after = gate.pass().await.err().expect("not let through");
        assert!(
            after > MAX_WAIT && after <= Duration::from_secs(60),
            "{after:?}"
        );
    }
}
