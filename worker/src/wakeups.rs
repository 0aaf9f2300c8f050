//! When an idle apalis worker fetches again: on a NOTIFY of a new job in its queue, or on a
//! fallback interval (alone when nothing may LISTEN: behind a transaction pooler without a
//! session connection).
//!
//! apalis's own combination (`Strategy::new().stream(pubsub).interval(..)`) takes one
//! notification per poll and stops at the first ready strategy, so after a wake-up nothing may be
//! armed for the next notification and a job committed meanwhile waits for the interval. This
//! strategy drains every pending notification and polls the interval each time, so a waker is
//! always armed.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use apalis::prelude::{PollSnapshot, PollStrategy};
use apalis_postgres::Pubsub;
use futures::StreamExt;
use tokio::time::{Interval, MissedTickBehavior};

/// The safety-net interval when the worker LISTENs: notifications wake it at once, so the
/// interval only catches jobs that become due later (retries, deferrals: apalis schedules those
/// in whole seconds anyway) and a notification lost to a reconnect. Every idle queue of every
/// worker fetches once per interval, each fetch a write transaction: at 100 ms, three idle
/// workers cost Postgres 150 fetches a second, a tenth of its time under the pressure test.
pub const WHILE_LISTENING: Duration = Duration::from_secs(1);

/// The interval when nothing may LISTEN (behind a transaction pooler without a session
/// connection): it is then the only way a new job is noticed.
pub const WITHOUT_LISTEN: Duration = Duration::from_millis(100);

/// How often an idle queue fetches: the setting (`WORKER_POLL_INTERVAL_MS`) when given, else the
/// default for how the worker is woken.
pub fn safety_interval(setting: Option<Duration>, listens: bool) -> Duration {
    setting.unwrap_or(if listens {
        WHILE_LISTENING
    } else {
        WITHOUT_LISTEN
    })
}

pub struct Wakeups {
    /// None: poll on the interval alone.
    pubsub: Option<Pubsub>,
    /// Pubsub ended (its connection failed): fetch on the interval alone until the supervisor
    /// restarts the worker.
    pubsub_closed: bool,
    period: Duration,
    interval: Option<Interval>,
}

impl Wakeups {
    pub fn new(pubsub: Option<Pubsub>, period: Duration) -> Self {
        Self {
            pubsub_closed: pubsub.is_none(),
            pubsub,
            // tokio intervals panic on zero.
            period: period.max(Duration::from_millis(1)),
            interval: None,
        }
    }
}

impl Clone for Wakeups {
    fn clone(&self) -> Self {
        Self::new(self.pubsub.clone(), self.period)
    }
}

impl PollStrategy for Wakeups {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut wake = false;
        // Until Pending, which leaves the listener's waker armed for the next notification.
        while let Some(pubsub) = self.pubsub.as_mut().filter(|_| !self.pubsub_closed) {
            match pubsub.poll_next_unpin(cx) {
                Poll::Ready(Some(_)) => wake = true,
                Poll::Ready(None) => self.pubsub_closed = true,
                Poll::Pending => break,
            }
        }
        let period = self.period;
        let interval = self.interval.get_or_insert_with(|| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        // A ready tick is consumed; polling again arms the timer for the next one.
        while interval.poll_tick(cx).is_ready() {
            wake = true;
        }
        if wake {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_setting_else_the_default_for_how_the_worker_wakes() {
        let ms = Duration::from_millis;
        for (setting, listens, want) in [
            (None, true, WHILE_LISTENING),
            (None, false, WITHOUT_LISTEN),
            (Some(ms(250)), true, ms(250)),
            (Some(ms(250)), false, ms(250)),
        ] {
            assert_eq!(
                safety_interval(setting, listens),
                want,
                "{setting:?} {listens}"
            );
        }
    }
}
