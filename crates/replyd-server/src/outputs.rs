//! `job.output` events: a job's output announced in its event log, so
//! that its SSE and WebSocket streams (and a webhook that asks for them)
//! carry it with the job's other events, with the same ids and resume.
//!
//! An event is not written per append: the appends a node takes for a job
//! are noted here ([`Announcer::appended`]), and one task per node writes
//! a `job.output` event for each job that moved, every
//! `durable_streams.output_events` seconds, all in one batch
//! (`Command::Output`, the lease holder's: it fails harmlessly once the
//! attempt is over). Each event announces everything since the one before:
//! the record keeps where the last one ended (`JobRecord::output`).
//!
//! The end of an attempt (complete, fail) must come after its output's
//! last announcement, whichever node took the appends: [`Announcer::apply_many`]
//! reads the output's length for the moves that end attempts and puts an
//! announcement in front of each, in the same transaction. Every
//! completion and failure goes through it (the worker API, the in-process
//! executors' finisher, broker workers' replies).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use replyd_core::job::{Command, JobRecord};
use replyd_core::store::{Move, StoreResult};
use replyd_core::{Clock, JobId, LeaseId, Store, Tenant};
use tokio_util::sync::CancellationToken;

pub struct Announcer {
    store: Arc<dyn Store>,
    /// `durable_streams.output_events`; zero: no `job.output` events.
    every: Duration,
    /// Jobs whose output this node appended to since their last event:
    /// the lease, and the length reached.
    pending: Mutex<HashMap<JobId, (LeaseId, u64)>>,
}

impl Announcer {
    pub fn new(store: Arc<dyn Store>, every: Duration) -> Announcer {
        Announcer {
            store,
            every,
            pending: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn enabled(&self) -> bool {
        !self.every.is_zero() && self.store.streams().is_some()
    }

    /// Job `id`'s output reached `tail` bytes by an append under `lease`.
    pub fn appended(&self, id: JobId, lease: LeaseId, tail: u64) {
        if !self.enabled() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(id).or_insert((lease.clone(), tail));
        if entry.1 <= tail {
            *entry = (lease, tail);
        }
    }

    /// Writes the events due, every `every`, until `shutdown`.
    pub async fn run(self: Arc<Self>, clock: Clock, shutdown: CancellationToken) {
        if !self.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let due: Vec<Move> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending
                    .drain()
                    .map(|(id, (lease_id, to))| Move {
                        id,
                        cmd: Command::Output { lease_id, to },
                        output: None,
                    })
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            // A refusal (the attempt ended, the lease moved on) is no loss:
            // the end of an attempt announces its output itself.
            if let Err(e) = self.store.apply_many(None, due, clock.now()).await {
                tracing::warn!(error = %e, "cannot write job.output events");
            }
        }
    }

    /// `Store::apply_many`, each move that ends an attempt preceded by its
    /// job's output announcement (in the same transaction); the answers
    /// are the caller's moves' alone.
    pub async fn apply_many(
        &self,
        scope: Option<&Tenant>,
        moves: Vec<Move>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<StoreResult<JobRecord>>> {
        let (moves, theirs) = self.announced_first(moves).await?;
        let answers = self.store.apply_many(scope, moves, now).await?;
        Ok(match theirs {
            None => answers,
            Some(theirs) => answers
                .into_iter()
                .zip(theirs)
                .filter_map(|(a, t)| t.then_some(a))
                .collect(),
        })
    }

    /// `Store::apply`, an attempt's end preceded by its output's
    /// announcement (as [`Announcer::apply_many`]).
    pub async fn apply(
        &self,
        id: JobId,
        scope: Option<&Tenant>,
        cmd: Command,
        output: Option<replyd_core::store::JobOutput>,
        now: DateTime<Utc>,
    ) -> StoreResult<JobRecord> {
        if lease_ended(&cmd).is_none() || !self.enabled() {
            return self.store.apply(id, scope, cmd, output, now).await;
        }
        let m = Move { id, cmd, output };
        self.apply_many(scope, vec![m], now)
            .await?
            .pop()
            .unwrap_or(Err(replyd_core::store::StoreError::NotFound))
    }

    /// `moves` with the announcements in front, and which of them are the
    /// caller's (`None`: all, nothing was added).
    async fn announced_first(
        &self,
        moves: Vec<Move>,
    ) -> StoreResult<(Vec<Move>, Option<Vec<bool>>)> {
        let Some(streams) = self.store.streams().filter(|_| self.enabled()) else {
            return Ok((moves, None));
        };
        let ending: Vec<JobId> = moves
            .iter()
            .filter(|m| lease_ended(&m.cmd).is_some())
            .map(|m| m.id)
            .collect();
        if ending.is_empty() {
            return Ok((moves, None));
        }
        let tails: HashMap<JobId, u64> = streams.output_tails(&ending).await?.into_iter().collect();
        if tails.is_empty() {
            return Ok((moves, None));
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for id in tails.keys() {
                pending.remove(id);
            }
        }
        let mut all = Vec::with_capacity(moves.len() + tails.len());
        let mut theirs = Vec::with_capacity(moves.len() + tails.len());
        for m in moves {
            if let (Some(lease_id), Some(&to)) = (lease_ended(&m.cmd), tails.get(&m.id)) {
                all.push(Move {
                    id: m.id,
                    cmd: Command::Output {
                        lease_id: lease_id.clone(),
                        to,
                    },
                    output: None,
                });
                theirs.push(false);
            }
            all.push(m);
            theirs.push(true);
        }
        Ok((all, Some(theirs)))
    }
}

/// The lease of a move that ends an attempt.
fn lease_ended(cmd: &Command) -> Option<&LeaseId> {
    match cmd {
        Command::Complete { lease_id } | Command::Fail { lease_id, .. } => Some(lease_id),
        _ => None,
    }
}
