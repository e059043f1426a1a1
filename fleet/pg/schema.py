"""The PostgreSQL schema, as steps: step n takes `schema_version` n-1 to n (`fleet.pg.base.migrate`).

The same tables as the SQLite file (fleet/schema.py), in PostgreSQL's types, plus what several
replicas share: `replicas` (who is alive), `sessions` (which replica holds a device's stream) and
`artifact_chunks` (artifact bytes every replica can serve) and `relay` (replica messages too big
for a notification). Detections are partitioned by day of
capture time (`detections_pYYYYMMDD`, created ahead and dropped whole by retention), with a default
partition for frames whose capture time falls outside every day made so far (a device whose clock
is years off). The primary key (device_id, sequence, capture_time) keeps storage idempotent: a
resent frame carries the same capture time, so it meets its first copy in the same partition.
Append a step to change the schema; never edit one that has shipped.
"""
from __future__ import annotations

from ..schema import Step

MIGRATIONS: tuple[Step, ...] = (
    Step("devices, secrets, detections, health, artifacts, rollouts, events, audit, replicas", (
        "create table enroll_keys (key_hash text primary key, name text, created double precision,"
        " revoked integer not null default 0)",
        "create table operator_tokens (key_hash text primary key, name text, created double precision,"
        " revoked integer not null default 0, role text not null default 'admin')",
        "create table devices ("
        " device_id text primary key, hostname text not null, hardware_id text not null unique,"
        " enrolled double precision not null, token_hash text not null unique, agent_version text,"
        " last_seen double precision, profile text, plan text, health text, streams text, labels text,"
        " acked_sequence bigint not null default 0, detections_stored bigint not null default 0,"
        " plan_override text, operator_labels text, revoked double precision, config_status text)",
        "create table detections ("
        " device_id text not null, sequence bigint not null, stream_id text, frame_index bigint,"
        " capture_time double precision not null, received double precision not null, n_objects integer,"
        " objects text, primary key (device_id, sequence, capture_time)) partition by range (capture_time)",
        "create table detections_default partition of detections default",
        "create index on detections (received)",
        "create index on detections (device_id, capture_time)",
        "create table health_samples ("
        " device_id text not null, time double precision not null, resolution_s integer not null, fps double"
        " precision, detect_fps double precision, inference_ms_p95 double precision, latency_ms_p95 double"
        " precision, cpu_percent double precision, temperature_c double precision, frames_dropped bigint,"
        " outbox_depth bigint)",
        "create index on health_samples (device_id, resolution_s, time)",
        "create table artifacts ("
        " sha256 text primary key, name text, format text, size_bytes bigint not null, manifest bytea not null,"
        " signature bytea not null, created double precision not null)",
        "create table artifact_chunks ("
        " sha256 text not null, index integer not null, data bytea not null, primary key (sha256, index))",
        "create table rollouts ("
        " rollout_id text primary key, artifact_sha256 text not null references artifacts (sha256),"
        " state integer not null, spec text not null, wave integer, created double precision not null,"
        " updated double precision, reason text)",
        "create table rollout_devices ("
        " rollout_id text references rollouts (rollout_id), device_id text, wave integer, state integer,"
        " reason text, gate_metrics text, updated double precision, primary key (rollout_id, device_id))",
        "create table events ("
        " id bigint generated always as identity primary key, time double precision not null, kind text not null,"
        " device_id text, rollout_id text, message text not null)",
        "create index on events (time)",
        "create table desired_configs ("
        " device_id text primary key, version integer not null, document text not null, set_from text not null,"
        " updated double precision not null)",
        "create table audit ("
        " id bigint generated always as identity primary key, time double precision not null, token_id text,"
        " token_name text, role text, call text not null, target text, parameters text, ok integer not null,"
        " error text)",
        "create index on audit (time)",
        "create table replicas ("
        " replica_id text primary key, address text not null, started double precision not null,"
        " last_beat double precision not null, leader boolean not null default false)",
        "create table sessions ("
        " device_id text primary key, replica_id text not null, since double precision not null)",
        "create table relay ("
        " id bigint generated always as identity primary key, body text not null, created double precision not null)",
    )),
    Step("objects, counts, snapshots", (
        # zones, lines (names of the lines crossed), crossings, path and best_box: JSON text
        "create table objects ("
        " device_id text not null, object_id text not null, stream_id text not null, track_id bigint,"
        " label text not null, class_id integer, first_seen double precision not null,"
        " last_seen double precision not null, best_score double precision, best_box text, path text, zones text,"
        " lines text, crossings text, frames bigint, ended integer not null default 0,"
        " has_snapshot integer not null default 0, updated double precision, primary key (device_id, object_id))",
        'create index on objects (last_seen, device_id collate "C", object_id collate "C")',
        "create index on objects (device_id, last_seen)",
        "create index on objects (label, last_seen)",
        "create table object_counts ("
        " device_id text not null, stream_id text not null, minute bigint not null, kind text not null,"
        " name text not null, label text not null, direction text not null, count bigint not null,"
        " primary key (device_id, stream_id, minute, kind, name, label, direction))",
        "create index on object_counts (minute)",
        "create table snapshots ("
        " sha256 text primary key, jpeg bytea not null, size integer not null, created double precision not null)",
        "create table object_snapshots ("
        " device_id text not null, object_id text not null, kind text not null, sha256 text not null,"
        " time double precision not null, label text, score double precision, stream_id text,"
        " primary key (device_id, object_id, kind, sha256))",
        "create index on object_snapshots (object_id, kind)",
        "create index on object_snapshots (sha256)",
        "create index on object_snapshots (time)",
        # records of every kind stored once (not replays): equals acked_sequence while the outbox dropped none
        "alter table devices add column records_stored bigint not null default 0",
    )),
)

SCHEMA_VERSION = len(MIGRATIONS)
