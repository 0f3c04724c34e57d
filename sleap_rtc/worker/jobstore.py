"""The worker's job store: one SQLite file (standard library, WAL) in the state folder.

Every job this worker accepted has one row: its id, owner, spec digest, state
and status message, the JobAccepted answer, the run plan (so the run folder
is known after a restart), the trainer's process identity (pid, process start
time, process group) and ZMQ ports, the last sequence number handed out, and,
once it ended, the final JobComplete/JobFailed. A job handed to a batch
scheduler (the Slurm backend) also has a :class:`BatchRecord`: the
scheduler's job id, the job's relay folder and CURVE public key, and how far
the relay's messages were taken in -- what a restarted worker needs to
re-attach instead of running the job again.

Durability: each state change is committed before it is announced to any
client (:class:`~sleap_rtc.worker.jobrecord.Job` calls :meth:`JobStore.save`
before its listeners hear of it). The database runs in WAL mode with
``synchronous=NORMAL``: a committed transaction survives a kill -9 of the
worker (the case this store exists for); after a power cut the last commits
may be lost (SQLite's documented WAL trade-off).

Idempotency has no count window: a job id is remembered until its row is
purged, which :meth:`JobStore.purge` does only for jobs that ended longer
than the operator's retention period ago (``job_retention_days``).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc_proto.v1 import job_pb2, progress_pb2

__all__ = [
    "BatchRecord",
    "JobRow",
    "JobStore",
    "StoreError",
    "TrainerIdentity",
    "plan_from_json",
    "plan_to_json",
]

V = job_pb2
#: 2: the ``batch`` table (a v1 store is upgraded in place; a v1 worker refuses v2).
SCHEMA_VERSION = 2
DB_NAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    state INTEGER NOT NULL,
    message TEXT NOT NULL,
    accepted BLOB NOT NULL,
    plan TEXT NOT NULL,
    trainer_pid INTEGER,
    trainer_start INTEGER,
    publish_port INTEGER,
    controller_port INTEGER,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    final_kind TEXT,
    final BLOB,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (ended);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS batch (
    job_id TEXT PRIMARY KEY REFERENCES jobs (job_id) ON DELETE CASCADE,
    system TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    relay_dir TEXT NOT NULL,
    client_public TEXT NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
"""

#: States of a job that has not ended.
_OPEN_STATES = (V.JOB_STATE_QUEUED, V.JOB_STATE_RUNNING, V.JOB_STATE_STOPPING)


class StoreError(RuntimeError):
    """The job store cannot be opened or is from a newer worker."""


@dataclass(frozen=True)
class TrainerIdentity:
    """Which process is a job's trainer: pid plus its start time (pid reuse safe)."""

    pid: int
    start_ticks: int
    publish_port: int = 0
    controller_port: int = 0


@dataclass(frozen=True)
class BatchRecord:
    """A job handed to a batch scheduler: what a restarted worker re-attaches with.

    ``batch_id`` is empty between the record and the scheduler's answer (a worker
    that died then finds the job by its name). ``cursor`` is the last relay
    message taken in (messages up to it are not taken twice after a restart).
    """

    job_id: str
    system: str
    batch_id: str
    relay_dir: str
    client_public: str
    cursor: int = 0


@dataclass(frozen=True)
class JobRow:
    """One job as stored."""

    job_id: str
    owner: str
    spec_hash: str
    state: int
    message: str
    accepted: job_pb2.JobAccepted
    plan: TrainPlan
    trainer: TrainerIdentity | None
    last_sequence: int
    final: progress_pb2.JobComplete | progress_pb2.JobFailed | None
    created: float
    ended: float | None


def plan_to_json(plan: TrainPlan) -> str:
    data = dataclasses.asdict(plan)
    data["config_file"] = str(plan.config_file)
    data["ckpt_dir"] = str(plan.ckpt_dir)
    return json.dumps(data, sort_keys=True)


def plan_from_json(text: str) -> TrainPlan:
    data: dict[str, Any] = json.loads(text)
    data["config_file"] = Path(data["config_file"])
    data["ckpt_dir"] = Path(data["ckpt_dir"])
    for name, value in data.items():  # JSON lists back into the plan's tuples
        if isinstance(value, list):
            data[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    known = {f.name for f in dataclasses.fields(TrainPlan)}
    return TrainPlan(**{k: v for k, v in data.items() if k in known})


def _final_of(
    kind: str | None, blob: bytes | None
) -> progress_pb2.JobComplete | progress_pb2.JobFailed | None:
    if kind is None or blob is None:
        return None
    final: progress_pb2.JobComplete | progress_pb2.JobFailed = (
        progress_pb2.JobComplete() if kind == "complete" else progress_pb2.JobFailed()
    )
    final.ParseFromString(blob)
    return final


class JobStore:
    """The job table in ``state_dir/jobs.sqlite3``; safe to call from any thread."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / DB_NAME
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._tx():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"the job store {self.path} was written by a newer worker "
                        f"(schema {row[0]}, this worker knows {SCHEMA_VERSION})"
                    )
                elif int(row[0]) < SCHEMA_VERSION:  # the tables above were added
                    self._db.execute(
                        "UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),)
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job store {self.path}: {exc}") from exc
        self.path.chmod(0o600)

    def _tx(self) -> Any:
        store = self

        class _Tx:
            def __enter__(self) -> None:
                store._db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind: object, *_: object) -> None:
                store._db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Tx()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes ----------------------------------------------------------------

    def save(
        self,
        *,
        job_id: str,
        owner: str,
        spec_hash: str,
        state: int,
        message: str,
        accepted: job_pb2.JobAccepted,
        plan: TrainPlan,
        trainer: TrainerIdentity | None,
        last_sequence: int,
        final: progress_pb2.JobComplete | progress_pb2.JobFailed | None,
    ) -> None:
        """Insert or replace one job's row, committed when this returns."""
        now = time.time()
        kind = (
            None
            if final is None
            else ("complete" if isinstance(final, progress_pb2.JobComplete) else "failed")
        )
        with self._lock, self._tx():
            self._db.execute(
                """INSERT INTO jobs (job_id, owner, spec_hash, state, message, accepted, plan,
                       trainer_pid, trainer_start, publish_port, controller_port,
                       last_sequence, final_kind, final, created, updated, ended)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(job_id) DO UPDATE SET
                       state=excluded.state, message=excluded.message,
                       trainer_pid=excluded.trainer_pid, trainer_start=excluded.trainer_start,
                       publish_port=excluded.publish_port,
                       controller_port=excluded.controller_port,
                       last_sequence=excluded.last_sequence, final_kind=excluded.final_kind,
                       final=excluded.final, updated=excluded.updated, ended=excluded.ended""",
                (
                    job_id,
                    owner,
                    spec_hash,
                    state,
                    message,
                    accepted.SerializeToString(deterministic=True),
                    plan_to_json(plan),
                    None if trainer is None else trainer.pid,
                    None if trainer is None else trainer.start_ticks,
                    None if trainer is None else trainer.publish_port,
                    None if trainer is None else trainer.controller_port,
                    last_sequence,
                    kind,
                    None if final is None else final.SerializeToString(deterministic=True),
                    now,
                    now,
                    now if final is not None else None,
                ),
            )

    def set_sequence(self, job_id: str, last_sequence: int, cursor: int | None = None) -> None:
        """Record the last sequence number handed out (the progress position) and,
        for a batch job, the relay message it came from (one transaction)."""
        now = time.time()
        with self._lock:
            if cursor is None:
                self._db.execute(
                    "UPDATE jobs SET last_sequence=?, updated=? WHERE job_id=?",
                    (last_sequence, now, job_id),
                )
                return
            with self._tx():
                self._db.execute(
                    "UPDATE jobs SET last_sequence=?, updated=? WHERE job_id=?",
                    (last_sequence, now, job_id),
                )
                self._db.execute(
                    "UPDATE batch SET cursor=?, updated=? WHERE job_id=?", (cursor, now, job_id)
                )

    def save_batch(self, record: BatchRecord) -> None:
        """Insert or replace a job's batch record (its job row must exist)."""
        with self._lock, self._tx():
            self._db.execute(
                """INSERT INTO batch (job_id, system, batch_id, relay_dir, client_public,
                       cursor, updated) VALUES (?,?,?,?,?,?,?)
                   ON CONFLICT(job_id) DO UPDATE SET system=excluded.system,
                       batch_id=excluded.batch_id, relay_dir=excluded.relay_dir,
                       client_public=excluded.client_public, cursor=excluded.cursor,
                       updated=excluded.updated""",
                (
                    record.job_id,
                    record.system,
                    record.batch_id,
                    record.relay_dir,
                    record.client_public,
                    record.cursor,
                    time.time(),
                ),
            )

    def batch(self, job_id: str) -> BatchRecord | None:
        """The job's batch record, if it was handed to a scheduler."""
        with self._lock:
            values = self._db.execute(
                "SELECT job_id, system, batch_id, relay_dir, client_public, cursor"
                " FROM batch WHERE job_id=?",
                (job_id,),
            ).fetchone()
        if values is None:
            return None
        job, system, batch_id, relay_dir, public, cursor = values
        return BatchRecord(job, system, batch_id, relay_dir, public, int(cursor))

    def forget(self, job_id: str) -> None:
        """Remove a job that never ran (a refusal found after the row was written)."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM batch WHERE job_id=?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE job_id=?", (job_id,))

    def purge(self, retention_s: float | None, now: float | None = None) -> int:
        """Forget jobs that ended more than ``retention_s`` ago (None: keep all);
        returns how many rows were removed. Open jobs are never purged."""
        if retention_s is None:
            return 0
        cutoff = (time.time() if now is None else now) - retention_s
        with self._lock, self._tx():
            self._db.execute(
                "DELETE FROM batch WHERE job_id IN"
                " (SELECT job_id FROM jobs WHERE ended IS NOT NULL AND ended < ?)",
                (cutoff,),
            )
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE ended IS NOT NULL AND ended < ?", (cutoff,)
            )
            return cursor.rowcount

    # --- reads -----------------------------------------------------------------

    _COLUMNS = (
        "job_id, owner, spec_hash, state, message, accepted, plan, trainer_pid, trainer_start,"
        " publish_port, controller_port, last_sequence, final_kind, final, created, ended"
    )

    @staticmethod
    def _row(values: tuple[Any, ...]) -> JobRow:
        (
            job_id,
            owner,
            digest,
            state,
            message,
            accepted_blob,
            plan,
            pid,
            start,
            pub,
            ctl,
            seq,
            kind,
            final,
            created,
            ended,
        ) = values
        accepted = job_pb2.JobAccepted()
        accepted.ParseFromString(accepted_blob)
        trainer = (
            None
            if pid is None
            else TrainerIdentity(int(pid), int(start or 0), int(pub or 0), int(ctl or 0))
        )
        return JobRow(
            job_id=job_id,
            owner=owner,
            spec_hash=digest,
            state=int(state),
            message=message,
            accepted=accepted,
            plan=plan_from_json(plan),
            trainer=trainer,
            last_sequence=int(seq),
            final=_final_of(kind, final),
            created=float(created),
            ended=None if ended is None else float(ended),
        )

    def get(self, job_id: str) -> JobRow | None:
        with self._lock:
            values = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE job_id=?", (job_id,)
            ).fetchone()
        return None if values is None else self._row(values)

    def open_jobs(self) -> list[JobRow]:
        """Jobs recorded as queued, running or stopping (not ended)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLUMNS} FROM jobs WHERE state IN (?,?,?) ORDER BY created",
                _OPEN_STATES,
            ).fetchall()
        return [self._row(r) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def __iter__(self) -> Iterator[JobRow]:
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLUMNS} FROM jobs ORDER BY created").fetchall()
        return iter([self._row(r) for r in rows])
