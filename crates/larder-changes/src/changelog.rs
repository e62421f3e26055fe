//! An append-only change log that any number of readers follow, each at
//! its own position: the sink of larder-query's capture triggers.
//!
//! The hard part is the position. Ids are handed out when a row is
//! written, but transactions commit in another order, so a reader that saw
//! ids 1..=7 and 9 cannot move past 8: the transaction holding 8 may
//! commit later, or may have rolled back. [`LogCursor`] keeps such *gaps*
//! and asks the database, with a [`Fence`], when every transaction that
//! could still fill one has finished:
//!
//! - PostgreSQL: the snapshot's `xmax` after a read is above every
//!   transaction then running; once a later snapshot's `xmin` reaches it,
//!   they have all ended.
//! - MySQL/MariaDB: the gap's row is probed with a locking read that does
//!   not wait (`FOR UPDATE NOWAIT`): a row an open transaction inserted is
//!   locked (in flight: keep waiting); a row absent on two polls in a row
//!   was rolled back. (`information_schema.INNODB_TRX` cannot serve: InnoDB
//!   refreshes it at most every 100 ms, and not at all while it is read
//!   more often than that.)
//! - SQLite: one writer at a time, so ids are handed out in commit order
//!   and a gap is a rollback at once.
//!
//! A gap whose fence has passed and that is still empty when read again
//! was rolled back. Nothing is guessed from time, so a long transaction is
//! never missed.

use std::collections::{BTreeMap, BTreeSet};

use crate::Dialect;

/// The change log larder-query's triggers append to.
pub const CHANGE_LOG: &str = "larder_changes";

/// Most rows one read returns.
pub const READ_LIMIT: usize = 5_000;

/// Most open gaps a cursor tracks; past it the reader must resync.
pub const MAX_GAPS: usize = 10_000;

/// The statement creating the change log `table` (idempotent).
pub fn log_table_sql(dialect: Dialect, table: &str) -> String {
    let (id, text, int) = match dialect {
        Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "TEXT", "BIGINT"),
        Dialect::MySql => ("BIGINT AUTO_INCREMENT PRIMARY KEY", "LONGTEXT", "BIGINT"),
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", "INTEGER"),
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (id {id}, table_name {text} NOT NULL, \
         old_row {text}, new_row {text}, created_ms {int} NOT NULL)"
    )
}

/// Rows after the position `after` (an integer, spliced in).
pub fn read_after_sql(table: &str, after: i64) -> String {
    format!(
        "SELECT id, table_name, old_row, new_row FROM {table} WHERE id > {after} ORDER BY id LIMIT {READ_LIMIT}"
    )
}

/// Rows with the given ids (gaps being checked again); the ids are
/// integers, spliced in.
pub fn read_ids_sql(table: &str, ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!(
        "SELECT id, table_name, old_row, new_row FROM {table} WHERE id IN ({}) ORDER BY id",
        list.join(", ")
    )
}

/// The highest id in the log (`NULL` when empty).
pub fn max_id_sql(table: &str) -> String {
    format!("SELECT MAX(id) FROM {table}")
}

/// Removes rows older than `cutoff_ms` (Unix milliseconds) among the ids
/// up to `upto` (a reader's [`LogCursor::settled`] position; both spliced
/// in). The id bound matters on MySQL/MariaDB: a DELETE there takes locks
/// on the rows it scans, and would wait for an uncommitted writer's row;
/// below the settled position every row has committed.
pub fn prune_sql(table: &str, upto: i64, cutoff_ms: i64) -> String {
    format!("DELETE FROM {table} WHERE id <= {upto} AND created_ms < {cutoff_ms}")
}

/// The query that takes a [`Fence`] on PostgreSQL: one row of two texts
/// (`xmin`, `xmax`). The other dialects need none.
pub fn fence_sql(dialect: Dialect) -> Option<&'static str> {
    match dialect {
        Dialect::Postgres => Some(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_snapshot_xmax(pg_current_snapshot())::text",
        ),
        Dialect::MySql | Dialect::Sqlite => None,
    }
}

/// MySQL/MariaDB: the probe of one gap (see the module docs). An error
/// with code 1205 or 3572 means the row is locked by an open transaction.
pub fn probe_sql(table: &str, id: i64) -> String {
    format!("SELECT id FROM {table} WHERE id = {id} FOR UPDATE NOWAIT")
}

/// How many ids below the log's highest a MySQL/MariaDB reader checks at
/// start for rows in flight (PostgreSQL knows exactly; SQLite has none).
pub const START_WINDOW: i64 = 10_000;

/// The ids present in a window: bind nothing (both bounds spliced in).
pub fn ids_between_sql(table: &str, above: i64, upto: i64) -> String {
    format!("SELECT id FROM {table} WHERE id > {above} AND id <= {upto} ORDER BY id")
}

/// What the database said about running transactions at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// PostgreSQL: the snapshot's bounds.
    Snapshot {
        /// Every transaction below it has ended.
        xmin: u64,
        /// Every transaction running is below it.
        xmax: u64,
    },
    /// MySQL/MariaDB: gaps are closed by probing them
    /// ([`LogCursor::probed`]), never by a fence.
    Probed,
    /// SQLite: writes commit in id order; nothing is ever in flight.
    Serial,
}

impl Fence {
    /// A PostgreSQL fence from the two texts of [`fence_sql`].
    pub fn snapshot(xmin: &str, xmax: &str) -> Option<Fence> {
        Some(Fence::Snapshot {
            xmin: xmin.trim().parse().ok()?,
            xmax: xmax.trim().parse().ok()?,
        })
    }

    /// Whether every transaction running when `self` was taken had ended
    /// when `now` was.
    pub fn passed_by(&self, now: &Fence) -> bool {
        match (self, now) {
            (Fence::Snapshot { xmax, .. }, Fence::Snapshot { xmin, .. }) => xmin >= xmax,
            (Fence::Serial, _) => true,
            _ => false,
        }
    }
}

/// One row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// Its position.
    pub id: i64,
    /// The table written.
    pub table: String,
    /// The row before (JSON object), `None` for an INSERT.
    pub old_row: Option<String>,
    /// The row after (JSON object), `None` for a DELETE.
    pub new_row: Option<String>,
}

/// What one poll should read, from [`LogCursor::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// Read rows after this id ([`read_after_sql`]).
    pub after: i64,
    /// Read these gap ids again ([`read_ids_sql`]); may be empty.
    pub gaps: Vec<i64>,
}

/// An id not read yet.
#[derive(Debug, Clone)]
struct Gap {
    /// Taken after the read that found it missing.
    fence: Fence,
    /// Polls in a row whose probe found no row (MySQL/MariaDB).
    absent: u8,
}

/// One reader's position in a change log (see the module docs).
#[derive(Debug, Default)]
pub struct LogCursor {
    /// Highest id read so far; `None` before [`LogCursor::start`].
    seen: Option<i64>,
    /// Ids below `seen` not read yet, with the fence taken after the read
    /// that found them missing.
    gaps: BTreeMap<i64, Gap>,
    /// Gaps whose fence had passed when this poll began: if this poll's
    /// read does not find them, they were rolled back.
    closing: BTreeSet<i64>,
    /// Until this fence passes, writes in flight when reading started may
    /// still commit unseen below the start: the reader resyncs once then.
    start_fence: Option<Fence>,
}

/// What a poll found: rows to act on, and whether to resync.
#[derive(Debug, Default)]
pub struct Polled {
    /// Rows not handed out before, in id order.
    pub rows: Vec<LogRow>,
    /// Act on everything (every watched table changed): the start fence
    /// passed, or too many gaps were open.
    pub resync: bool,
}

impl LogCursor {
    /// A cursor that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether [`LogCursor::start`] ran.
    pub fn started(&self) -> bool {
        self.seen.is_some()
    }

    /// Starts after `max_id` (the log's highest id, 0 when empty), with
    /// `fence` taken after reading it. The reader should resync now (its
    /// cache may hold results from before), and will be told to resync
    /// once more when `fence` passes, for writes that were in flight.
    pub fn start(&mut self, max_id: i64, fence: Fence) {
        self.seen = Some(max_id);
        self.gaps.clear();
        self.closing.clear();
        self.start_fence = (fence != Fence::Serial).then_some(fence);
    }

    /// Begins a poll with `now`, a fence taken before the read: which rows
    /// to read.
    pub fn plan(&mut self, now: &Fence) -> ReadPlan {
        self.closing = self
            .gaps
            .iter()
            .filter(|(_, g)| g.fence.passed_by(now))
            .map(|(id, _)| *id)
            .collect();
        ReadPlan {
            after: self.seen.unwrap_or(0),
            gaps: self.gaps.keys().copied().take(READ_LIMIT).collect(),
        }
    }

    /// Ends a poll: `rows` are what the plan's reads returned (both, any
    /// order), `after` a fence taken after them and `start_passed` whether
    /// the fence of the poll's beginning had passed the start fence
    /// (see [`LogCursor::start_passed_by`]).
    pub fn finish(&mut self, mut rows: Vec<LogRow>, after: Fence, start_passed: bool) -> Polled {
        rows.sort_by_key(|r| r.id);
        rows.dedup_by_key(|r| r.id);
        let seen = self.seen.unwrap_or(0);
        let mut fresh = Vec::with_capacity(rows.len());
        let mut next = seen + 1;
        for r in rows {
            if r.id <= seen {
                // A gap filled: the transaction committed after all.
                if self.gaps.remove(&r.id).is_some() {
                    fresh.push(r);
                }
                continue;
            }
            for missing in next..r.id {
                let fence = after.clone();
                self.gaps.insert(missing, Gap { fence, absent: 0 });
            }
            next = r.id + 1;
            fresh.push(r);
        }
        self.seen = Some(seen.max(next - 1));
        // Gaps whose writers had all ended before this read and that the
        // read still did not find: rolled back.
        for id in std::mem::take(&mut self.closing) {
            self.gaps.remove(&id);
        }
        let mut resync = false;
        if start_passed && self.start_fence.take().is_some() {
            resync = true;
        }
        if self.gaps.len() > MAX_GAPS {
            self.gaps.clear();
            resync = true;
        }
        Polled {
            rows: fresh,
            resync,
        }
    }

    /// Starts after `max_id` like [`LogCursor::start`], for MySQL/MariaDB:
    /// the ids of the last [`START_WINDOW`] below it that are not in
    /// `present` (read by [`ids_between_sql`]) may be rows in flight, and
    /// become gaps to probe.
    pub fn start_probing(&mut self, max_id: i64, present: &[i64]) {
        self.start(max_id, Fence::Serial);
        let present: BTreeSet<i64> = present.iter().copied().collect();
        for id in (max_id - START_WINDOW).max(0) + 1..=max_id {
            if !present.contains(&id) {
                self.gaps.insert(
                    id,
                    Gap {
                        fence: Fence::Probed,
                        absent: 0,
                    },
                );
            }
        }
    }

    /// The gaps still open after a poll, to probe (MySQL/MariaDB).
    pub fn gaps_to_probe(&self) -> Vec<i64> {
        self.gaps.keys().copied().take(READ_LIMIT).collect()
    }

    /// What probing found: `locked` rows are in flight, `absent` ones were
    /// not there; a gap absent on two polls in a row is closed (the row
    /// was rolled back: an id allocated and written a moment later would
    /// be there, or locked, by the second probe).
    pub fn probed(&mut self, locked: &[i64], absent: &[i64]) {
        for id in locked {
            if let Some(g) = self.gaps.get_mut(id) {
                g.absent = 0;
            }
        }
        for id in absent {
            if let Some(g) = self.gaps.get_mut(id) {
                g.absent += 1;
                if g.absent >= 2 {
                    self.gaps.remove(id);
                }
            }
        }
    }

    /// Whether `now` (a fence taken before a read) has passed the start
    /// fence: pass it to [`LogCursor::finish`].
    pub fn start_passed_by(&self, now: &Fence) -> bool {
        self.start_fence.as_ref().is_some_and(|f| f.passed_by(now))
    }

    /// The highest id at or below which every row has been handed out or
    /// will never exist.
    pub fn settled(&self) -> i64 {
        let seen = self.seen.unwrap_or(0);
        self.gaps.keys().next().map_or(seen, |g| g - 1)
    }

    /// Open gaps (for tests and metrics).
    pub fn open_gaps(&self) -> usize {
        self.gaps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> LogRow {
        LogRow {
            id,
            table: "t".into(),
            old_row: None,
            new_row: Some("{}".into()),
        }
    }

    fn snap(xmin: u64, xmax: u64) -> Fence {
        Fence::Snapshot { xmin, xmax }
    }

    fn ids(p: &Polled) -> Vec<i64> {
        p.rows.iter().map(|r| r.id).collect()
    }

    /// Id 3 is written by a transaction that commits late: it is handed
    /// out when it appears, however long that takes, and exactly once.
    #[test]
    fn a_late_commit_fills_its_gap() {
        let mut c = LogCursor::new();
        c.start(0, snap(10, 10));
        let plan = c.plan(&snap(10, 10));
        assert_eq!(
            plan,
            ReadPlan {
                after: 0,
                gaps: vec![]
            }
        );
        let p = c.finish(vec![row(1), row(2), row(4)], snap(10, 12), false);
        assert_eq!(ids(&p), [1, 2, 4]);
        assert_eq!(c.open_gaps(), 1);
        // The writer of 3 (xid 11) is still running: the gap stays.
        for _ in 0..5 {
            let plan = c.plan(&snap(11, 13));
            assert_eq!(plan.gaps, [3]);
            assert_eq!(plan.after, 4);
            let p = c.finish(vec![], snap(11, 13), false);
            assert!(p.rows.is_empty());
            assert_eq!(c.open_gaps(), 1);
        }
        // It commits: the next read finds it.
        assert_eq!(c.settled(), 2);
        c.plan(&snap(13, 13));
        let p = c.finish(vec![row(3), row(5)], snap(13, 14), false);
        assert_eq!(c.settled(), 5);
        assert_eq!(ids(&p), [3, 5]);
        assert_eq!(c.open_gaps(), 0);
    }

    /// A rolled-back id is dropped once every transaction running when
    /// it was found missing has ended, and never handed out.
    #[test]
    fn a_rollback_closes_its_gap_after_the_fence() {
        let mut c = LogCursor::new();
        c.start(0, Fence::Serial);
        c.plan(&snap(5, 5));
        c.finish(vec![row(2)], snap(5, 8), false);
        assert_eq!(c.open_gaps(), 1);
        c.plan(&snap(7, 9));
        c.finish(vec![], snap(7, 9), false);
        assert_eq!(c.open_gaps(), 1, "xid 7 may still write id 1");
        c.plan(&snap(8, 9));
        let p = c.finish(vec![], snap(8, 9), false);
        assert!(p.rows.is_empty());
        assert_eq!(c.open_gaps(), 0);
    }

    #[test]
    fn probed_gaps_close_after_two_absent_polls_and_never_when_locked() {
        let mut c = LogCursor::new();
        c.start_probing(10, &[1, 2, 3, 4, 5, 6, 7, 9, 10]);
        assert_eq!(c.gaps_to_probe(), [8]);
        for _ in 0..5 {
            c.plan(&Fence::Probed);
            c.finish(vec![], Fence::Probed, false);
            c.probed(&[8], &[]);
        }
        assert_eq!(c.open_gaps(), 1, "a locked row is in flight");
        c.probed(&[], &[8]);
        assert_eq!(c.open_gaps(), 1, "one absent probe is not enough");
        c.probed(&[8], &[]);
        c.probed(&[], &[8]);
        assert_eq!(c.open_gaps(), 1, "the streak restarts after a lock");
        c.probed(&[], &[8]);
        assert_eq!(c.open_gaps(), 0);
        assert!(Fence::Serial.passed_by(&Fence::Serial));
        assert!(!Fence::Probed.passed_by(&Fence::Probed));
        assert!(!snap(1, 5).passed_by(&Fence::Serial));
    }

    #[test]
    fn the_start_fence_asks_for_one_more_resync() {
        let mut c = LogCursor::new();
        c.start(40, snap(3, 6));
        let now = snap(4, 7);
        assert!(!c.start_passed_by(&now));
        c.plan(&now);
        assert!(!c.finish(vec![], now.clone(), false).resync);
        let now = snap(6, 7);
        assert!(c.start_passed_by(&now));
        c.plan(&now);
        assert!(c.finish(vec![], now, true).resync);
        assert!(!c.start_passed_by(&snap(9, 9)), "only once");
    }

    #[test]
    fn too_many_gaps_resync() {
        let mut c = LogCursor::new();
        c.start(0, Fence::Serial);
        c.plan(&snap(1, 1));
        let p = c.finish(vec![row(MAX_GAPS as i64 + 5)], snap(1, 2), false);
        assert!(p.resync);
        assert_eq!(c.open_gaps(), 0);
    }
}
