"""The controller database's schema, as the steps that build it: step n takes `user_version` n-1 to n.

Each step is plain SQL that `FleetStore` runs in one transaction (BEGIN IMMEDIATE ... COMMIT)
together with its `PRAGMA user_version` bump: SQLite's DDL is transactional, so a step that fails
half-way leaves the file as it was, and the next start runs the whole step again. (sqlite-utils'
table methods commit on their own, which is why the steps are SQL, not `db[table].create(...)`.)
Append a step to change the schema; never edit one that has shipped.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    summary: str
    """What the step adds, for the log line."""
    statements: tuple[str, ...]


MIGRATIONS: tuple[Step, ...] = (
    Step("devices, enrollment keys, detections", (
        'create table "enroll_keys" ("key_hash" text primary key, "name" text, "created" real, "revoked" integer)',
        'create table "devices" ('
        ' "device_id" text primary key, "hostname" text not null, "hardware_id" text not null,'
        ' "enrolled" real not null, "token_hash" text not null, "agent_version" text, "last_seen" real,'
        ' "profile" text, "plan" text, "health" text, "streams" text, "labels" text,'
        ' "acked_sequence" integer default 0, "detections_stored" integer default 0)',
        'create unique index "idx_devices_hardware_id" on "devices" ("hardware_id")',
        'create unique index "idx_devices_token_hash" on "devices" ("token_hash")',
        'create table "detections" ('
        ' "device_id" text, "sequence" integer, "stream_id" text, "frame_index" integer, "capture_time" real,'
        ' "received" real, "n_objects" integer, "objects" text, primary key ("device_id", "sequence"))',
    )),
    Step("operator tokens, plan overrides", (
        'create table "operator_tokens" ("key_hash" text primary key, "name" text, "created" real, "revoked" integer)',
        'alter table "devices" add column "plan_override" text',
    )),
    Step("health history, artifacts, rollouts, events", (
        'create table "health_samples" ('
        ' "device_id" text not null, "time" real not null, "resolution_s" integer not null, "fps" real,'
        ' "detect_fps" real, "inference_ms_p95" real, "latency_ms_p95" real, "cpu_percent" real,'
        ' "temperature_c" real, "frames_dropped" integer, "outbox_depth" integer)',
        'create index "idx_health_samples_device_id_resolution_s_time"'
        ' on "health_samples" ("device_id", "resolution_s", "time")',
        'create index "idx_detections_received" on "detections" ("received")',
        'create table "artifacts" ('
        ' "sha256" text primary key, "name" text, "format" text, "size_bytes" integer not null,'
        ' "manifest" blob not null, "signature" blob not null, "created" real not null)',
        'create table "rollouts" ('
        ' "rollout_id" text primary key, "artifact_sha256" text not null references "artifacts"("sha256"),'
        ' "state" integer not null, "spec" blob not null, "wave" integer, "created" real not null,'
        ' "updated" real, "reason" text)',
        'create table "rollout_devices" ('
        ' "rollout_id" text references "rollouts"("rollout_id"), "device_id" text, "wave" integer,'
        ' "state" integer, "reason" text, "gate_metrics" text, "updated" real,'
        ' primary key ("rollout_id", "device_id"))',
        'create table "events" ('
        ' "id" integer primary key, "time" real not null, "kind" text not null, "device_id" text,'
        ' "rollout_id" text, "message" text not null)',
        'create index "idx_events_time" on "events" ("time")',
    )),
    Step("operator labels, revocation, desired configuration, token roles, audit", (
        'alter table "devices" add column "operator_labels" text',
        'alter table "devices" add column "revoked" real',  # when its token was revoked; null: never
        'alter table "devices" add column "config_status" text',  # the agent's last ConfigStatus, as JSON
        'create table "desired_configs" ('
        ' "device_id" text primary key, "version" integer not null, "document" text not null,'
        ' "set_from" text not null, "updated" real not null)',
        # Tokens made before roles existed could call everything: they stay admin.
        'alter table "operator_tokens" add column "role" text not null default \'admin\'',
        'create table "audit" ('
        ' "id" integer primary key, "time" real not null, "token_id" text, "token_name" text, "role" text,'
        ' "call" text not null, "target" text, "parameters" text, "ok" integer not null, "error" text)',
        'create index "idx_audit_time" on "audit" ("time")',
    )),
    Step("objects, counts, snapshots", (
        # zones, lines (names of the lines crossed), crossings, path and best_box: JSON text
        'create table "objects" ('
        ' "device_id" text not null, "object_id" text not null, "stream_id" text not null, "track_id" integer,'
        ' "label" text not null, "class_id" integer, "first_seen" real not null, "last_seen" real not null,'
        ' "best_score" real, "best_box" text, "path" text, "zones" text, "lines" text, "crossings" text,'
        ' "frames" integer, "ended" integer not null default 0, "has_snapshot" integer not null default 0,'
        ' "updated" real, primary key ("device_id", "object_id"))',
        'create index "idx_objects_last_seen" on "objects" ("last_seen", "device_id", "object_id")',
        'create index "idx_objects_device_id_last_seen" on "objects" ("device_id", "last_seen")',
        'create index "idx_objects_label_last_seen" on "objects" ("label", "last_seen")',
        'create table "object_counts" ('
        ' "device_id" text not null, "stream_id" text not null, "minute" integer not null, "kind" text not null,'
        ' "name" text not null, "label" text not null, "direction" text not null, "count" integer not null,'
        ' primary key ("device_id", "stream_id", "minute", "kind", "name", "label", "direction"))',
        'create index "idx_object_counts_minute" on "object_counts" ("minute")',
        'create table "snapshots" ('
        ' "sha256" text primary key, "jpeg" blob not null, "size" integer not null, "created" real not null)',
        'create table "object_snapshots" ('
        ' "device_id" text not null, "object_id" text not null, "kind" text not null, "sha256" text not null,'
        ' "time" real not null, "label" text, "score" real, "stream_id" text,'
        ' primary key ("device_id", "object_id", "kind", "sha256"))',
        'create index "idx_object_snapshots_object_id" on "object_snapshots" ("object_id", "kind")',
        'create index "idx_object_snapshots_sha256" on "object_snapshots" ("sha256")',
        'create index "idx_object_snapshots_time" on "object_snapshots" ("time")',
        # records of every kind stored once (not replays): equals acked_sequence while the outbox dropped none
        'alter table "devices" add column "records_stored" integer default 0',
    )),
)

SCHEMA_VERSION = len(MIGRATIONS)
