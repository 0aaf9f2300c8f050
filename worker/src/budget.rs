//! The worker's connection budget: how many jobs of each queue run at once, derived from the
//! connections the process has, so that work in flight never outgrows what they can serve.
//!
//! - Every handler holds at most one handler connection at a time (load, decide, call, apply in
//!   turn; never across an HTTP call).
//! - A queue whose jobs are database work from start to end (inbound, outbound-status) runs as
//!   many jobs as the connections it is given: its handlers never wait for one.
//! - A queue whose jobs mostly wait on HTTP (route, outbound-send, monitor-language) holds its
//!   connection a small part of each job, so it runs [`HTTP_JOBS_PER_CONNECTION`] jobs per
//!   connection; a handler then waits behind at most that many short transactions.
//! - A job is fetched only when a slot is free (apalis asks the concurrency limit before it
//!   fetches), and no more are fetched at once than the queue can start.
//! - The queue machinery (fetch, acknowledgements, heartbeats, orphan recovery) runs one
//!   statement at a time per queue, on a pool of its own with one connection per queue: busy
//!   handlers can never delay a heartbeat, so a live worker is never taken for dead.
//!
//! So a connection wait ends within a few transactions, and the acquire time-out
//! (`DATABASE_ACQUIRE_TIMEOUT_MS`) fires only when the database is unreachable: work waits for
//! its turn instead of failing and being retried into the same saturation.

use shared::jobs;

/// Jobs per connection for queues that mostly wait on HTTP (an agent, Twilio, the Monitor). Such
/// a job holds its connection for two or three short statements around its call: at 4, the send
/// queue of the pressure check could not catch up with its backlog until the load ended (about
/// 3,500 sends left, drained in 13 to 18 s); at 8, 2,600 left, drained in 9.5 s.
pub const HTTP_JOBS_PER_CONNECTION: usize = 8;

/// Handler connections kept for work outside the queues: the reconciler's pass and the tenant
/// directory's change feed, one each.
pub const RESERVED_CONNECTIONS: u32 = 2;

/// What a queue's jobs spend their time on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Database work throughout: one job per connection.
    Database,
    /// Mostly waiting on an HTTP call made without a connection.
    Http,
}

/// How a queue's jobs use connections, and its share of them.
pub fn profile(queue: &str) -> (Work, u32) {
    match queue {
        jobs::INBOUND => (Work::Database, 3),
        jobs::OUTBOUND_STATUS => (Work::Database, 2),
        jobs::ROUTE => (Work::Http, 2),
        jobs::OUTBOUND_SEND => (Work::Http, 2),
        _ => (Work::Http, 1),
    }
}

/// One queue's part of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBudget {
    pub queue: &'static str,
    /// Handler connections its jobs use at most at once.
    pub connections: u32,
    /// Jobs in flight at most (apalis concurrency).
    pub jobs: usize,
    /// Jobs fetched at once: no more than can start.
    pub fetch: usize,
}

/// The whole process's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The handlers' pool (`DATABASE_MAX_CONNECTIONS`).
    pub handler_connections: u32,
    /// The queue machinery's own pool: one per queue.
    pub queue_connections: u32,
    pub queues: Vec<QueueBudget>,
}

impl Budget {
    /// Splits `handler_connections` between the apalis `queues` by weight, each at least one
    /// connection. Pure; tested as a table.
    pub fn plan(handler_connections: u32, queues: &[&'static str]) -> Self {
        let apalis: Vec<&'static str> = queues
            .iter()
            .copied()
            .filter(|q| *q != jobs::RECONCILER)
            .collect();
        let spare = handler_connections.saturating_sub(RESERVED_CONNECTIONS);
        let total_weight: u32 = apalis.iter().map(|q| profile(q).1).sum();
        let queues = apalis
            .iter()
            .map(|&queue| {
                let (work, weight) = profile(queue);
                let connections = (spare * weight)
                    .checked_div(total_weight)
                    .unwrap_or(0)
                    .max(1);
                let jobs = match work {
                    Work::Database => connections as usize,
                    Work::Http => connections as usize * HTTP_JOBS_PER_CONNECTION,
                };
                QueueBudget {
                    queue,
                    connections,
                    jobs,
                    fetch: jobs,
                }
            })
            .collect();
        Self {
            handler_connections,
            queue_connections: apalis.len().max(1) as u32,
            queues,
        }
    }

    /// The part of `queue`.
    pub fn of(&self, queue: &str) -> Option<QueueBudget> {
        self.queues.iter().copied().find(|q| q.queue == queue)
    }

    /// Connections the queues' handlers may use at once (with the reserved ones): at most the
    /// handler pool, except when it is too small to give every queue one.
    pub fn connections_used(&self) -> u32 {
        self.queues.iter().map(|q| q.connections).sum::<u32>() + RESERVED_CONNECTIONS
    }
}

/// The connections a worker process opens at most, for the sizing table: handlers, queue
/// machinery and, when it listens, one LISTEN connection per queue.
pub fn connections_opened(handler_connections: u32, queues: &[&'static str], listens: bool) -> u32 {
    let budget = Budget::plan(handler_connections, queues);
    let listeners = if listens { budget.queue_connections } else { 0 };
    handler_connections + budget.queue_connections + listeners
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = jobs::ALL_QUEUES;

    #[test]
    fn every_queue_gets_a_share_and_database_queues_never_outnumber_their_connections() {
        // (handler connections, queues) -> (queue, connections, jobs) for each queue.
        type Row = (
            u32,
            &'static [&'static str],
            &'static [(&'static str, u32, usize)],
        );
        let table: &[Row] = &[
            (
                12,
                ALL,
                &[
                    (jobs::INBOUND, 3, 3),
                    (jobs::MONITOR_LANGUAGE, 1, 8),
                    (jobs::OUTBOUND_SEND, 2, 16),
                    (jobs::OUTBOUND_STATUS, 2, 2),
                    (jobs::ROUTE, 2, 16),
                ],
            ),
            (12, &[jobs::INBOUND], &[(jobs::INBOUND, 10, 10)]),
            (
                6,
                &[jobs::INBOUND, jobs::ROUTE],
                &[(jobs::INBOUND, 2, 2), (jobs::ROUTE, 1, 8)],
            ),
            // Too small to share: every queue still runs one connection's worth.
            (
                1,
                &[jobs::INBOUND, jobs::OUTBOUND_SEND],
                &[(jobs::INBOUND, 1, 1), (jobs::OUTBOUND_SEND, 1, 8)],
            ),
            (5, &[jobs::RECONCILER], &[]),
        ];
        for (connections, queues, expected) in table {
            let budget = Budget::plan(*connections, queues);
            let got: Vec<(&str, u32, usize)> = budget
                .queues
                .iter()
                .map(|q| (q.queue, q.connections, q.jobs))
                .collect();
            let mut want = expected.to_vec();
            want.sort_by_key(|w| queues.iter().position(|q| q == &w.0));
            assert_eq!(got, want, "{connections} connections for {queues:?}");
            for q in &budget.queues {
                assert!(q.fetch <= q.jobs, "{q:?} fetches more than it can start");
                if profile(q.queue).0 == Work::Database {
                    assert_eq!(q.jobs, q.connections as usize, "{q:?}");
                }
            }
            if *connections > RESERVED_CONNECTIONS + queues.len() as u32 {
                assert!(
                    budget.connections_used() <= *connections,
                    "{budget:?} oversubscribes {connections}"
                );
            }
        }
    }

    #[test]
    fn the_queue_machinery_has_one_connection_per_queue() {
        assert_eq!(Budget::plan(12, ALL).queue_connections, 5);
        assert_eq!(Budget::plan(12, &[jobs::INBOUND]).queue_connections, 1);
        assert_eq!(connections_opened(12, ALL, true), 12 + 5 + 5);
        assert_eq!(connections_opened(12, ALL, false), 12 + 5);
    }
}
