"""The gateway's intake kept in Redis, for deployments that configure it instead of
PostgreSQL. It answers exactly as the PostgreSQL `IntakeStore` (`postgres_intake.py`;
`decisions.py` says what a fingerprint's life, a duplicate, the hold and a storm are, and
`backend.py` why there are two backends); only where the state lives differs.

Every decision that reads or writes more than one key runs server-side in one Lua script, so
it is atomic: replicas racing on the same alerts serialize in Redis as they do on PostgreSQL's
row locks. A batch (`take`) is ONE script call, all-or-nothing like the PostgreSQL
transaction: its inputs are checked before its first write, and Redis refuses a script's
writes under OOM or a failing AOF before the first one, never halfway. Every timestamp is
Redis's own clock (TIME in the script), never a replica's. Freshness (`judge_freshness`) and
storm ids (`storm_id_of`) are computed by the replica, as the PostgreSQL version does.

Durability: a batch is answered (2xx) only once Redis has it, and Redis has it durably only
when it runs with `appendonly yes` and `appendfsync always` (the AOF is written and fsynced
before Redis replies). On connect the intake reads both with CONFIG GET and logs a warning
when they are weaker; when CONFIG is disabled (managed Redis) it cannot check and says so.
A replica that Redis fails over to may lack the last writes; use a primary whose AOF is on
durable storage.

Keys (all under the configurable prefix, default `kubernaut:gateway:`; timestamps are integer
microseconds of Redis's clock; `<pair>` is `len(alert_name):alert_name cluster`, unambiguous):

- `fp:<fingerprint>` hash, the current life: alert_name, cluster, state (firing|resolved),
  alert (proto3 JSON of the latest), incident_id, storm_id, occurrences, uncounted, ended
  (0|1), life_started_at, last_seen_at, resolved_at. Indexes kept by every write of it:
  `starts:<pair>` zset (firing, not ended, no storm; by life_started_at: storm detection),
  `storm-members:<storm>` and `storm-firing:<storm>` sets (a storm's size; whether it is
  quiet), `incident-live:<incident>` set (firing and not ended: what a resolution waits for,
  what a closed incident ends), `uncounted` zset (duplicates to count on an incident; by
  last_seen_at), `finished` zset (resolved or ended; by last_seen_at: retention).
- `storm:<storm>` hash (alert_name, cluster, started_at, ended_at), `storms:active` hash
  (<pair> -> the storm of that alert name and cluster that has not ended), `storms:ended`
  zset (by ended_at: retention).
- `row:<id>` hash, a queued alert: id, fingerprint, kind (firing|resolved), alert, storm_id,
  incident_id, enqueued_at, not_before, claimed_until, attempts, last_error, failed_at. Ids
  come from the counter `row-id`. `fp-queue:<fingerprint>` zset (its unfailed rows by id: the
  per-fingerprint order) and `fp-failed:<fingerprint>` zset (its failed rows, kept for
  operators, never claimed; `queue:failed` lists them all by failed_at). `queue:enqueued`
  zset (every unfailed row by enqueued_at: queue_depth). Only the oldest unfailed row of a
  fingerprint may be claimed: that head waits in `queue:pending` (by when it is due) until
  a claim finds it due and moves it to `queue:ready` (by id), from which claims take the
  oldest first; next_due_in reads the two.

Redis Cluster: the scripts compute their key names, so every key must live on one node;
give the prefix a hash tag (e.g. `{kubernaut-gateway}:`) to put them in one slot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import redis.asyncio
import redis.exceptions
from google.protobuf import json_format
from kubernaut.common.v1 import alert_pb2
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from kubernaut.runtime.database import redact_dsn
from kubernaut.services.alerts import alert_json
from kubernaut.services.gateway.backend import MAX_ERROR_CHARS, IntakeUnavailable, QueuedAlert
from kubernaut.services.gateway.decisions import (
    IntakeItem,
    Outcome,
    accepted,
    as_joined,
    dropped_before_forwarding,
    duplicate,
    flagged,
    in_decision_order,
    in_storm,
    items_of,
    not_firing,
    refused,
    resolution_queued,
    storm_id_of,
)
from kubernaut.services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX: Final = "kubernaut:gateway:"
LABEL: Final = "gateway Redis"
# Fingerprints forgotten per script call, so that a large clean-up never blocks Redis long.
_FORGET_BATCH: Final = 1000

# Errors meaning "Redis cannot take this now; nothing was done, retry": it cannot be
# reached, is loading, is a read-only replica, is out of memory, or refuses our user.
_UNREACHABLE: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    OSError,
    TimeoutError,
)
# The same, told by the error code of a plain ResponseError: MISCONF (the AOF or a snapshot
# cannot be written, so Redis refuses writes), BUSY (a script runs too long), NOREPLICAS.
_UNAVAILABLE_CODES: Final = frozenset({"MISCONF", "BUSY", "NOREPLICAS"})


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


# -- the scripts ------------------------------------------------------------------------------
# ARGV[1] is always the key prefix; KEYS[1] the id counter (a key of the right node).

_LIBRARY: Final = r"""
local P = ARGV[1]

-- An integer (timestamps in microseconds exceed what tostring prints exactly) as text.
local function num(x)
  return string.format('%.0f', x)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function as_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- The W3C traceparent kept with every row this call queues (take sets it).
local TRACE = ''

local function pair_of(alert_name, cluster)
  return #alert_name .. ':' .. alert_name .. cluster
end

-- fingerprints ---------------------------------------------------------------------------

local FP_FIELDS = {'alert_name', 'cluster', 'state', 'alert', 'incident_id', 'storm_id',
  'occurrences', 'uncounted', 'ended', 'life_started_at', 'last_seen_at', 'resolved_at'}

local function load_fp(fp)
  local flat = redis.call('HGETALL', P .. 'fp:' .. fp)
  if #flat == 0 then return nil end
  return as_table(flat)
end

-- The indexes a fingerprint belongs to: {zset key, score} or {set key}.
local function fp_indexes(f)
  local out = {}
  local firing = f.state == 'firing'
  local live = firing and f.ended == '0'
  if live and f.storm_id == '' then
    out[#out + 1] = {P .. 'starts:' .. pair_of(f.alert_name, f.cluster), f.life_started_at}
  end
  if f.storm_id ~= '' then
    out[#out + 1] = {P .. 'storm-members:' .. f.storm_id}
    if live then out[#out + 1] = {P .. 'storm-firing:' .. f.storm_id} end
  end
  if live and f.incident_id ~= '' then
    out[#out + 1] = {P .. 'incident-live:' .. f.incident_id}
  end
  if tonumber(f.uncounted) > 0 and f.incident_id ~= '' then
    out[#out + 1] = {P .. 'uncounted', f.last_seen_at}
  end
  if f.state == 'resolved' or f.ended == '1' then
    out[#out + 1] = {P .. 'finished', f.last_seen_at}
  end
  return out
end

-- Write a fingerprint (new nil: delete it) and move it between the indexes.
local function save_fp(fp, old, new)
  local key = P .. 'fp:' .. fp
  if old then
    for _, index in ipairs(fp_indexes(old)) do
      if index[2] then redis.call('ZREM', index[1], fp) else redis.call('SREM', index[1], fp) end
    end
  end
  if not new then
    redis.call('DEL', key)
    return
  end
  local changed = {}
  for _, name in ipairs(FP_FIELDS) do
    if not old or old[name] ~= new[name] then
      changed[#changed + 1] = name
      changed[#changed + 1] = new[name]
    end
  end
  if #changed > 0 then redis.call('HSET', key, unpack(changed)) end
  for _, index in ipairs(fp_indexes(new)) do
    if index[2] then
      redis.call('ZADD', index[1], index[2], fp)
    else
      redis.call('SADD', index[1], fp)
    end
  end
end

-- the queue --------------------------------------------------------------------------------

-- When a row is due: greatest(not_before, claimed_until).
local function due_of(not_before, claimed_until)
  local due = tonumber(not_before)
  if claimed_until ~= '' and tonumber(claimed_until) > due then due = tonumber(claimed_until) end
  return due
end

local function head_of(fp)
  return redis.call('ZRANGE', P .. 'fp-queue:' .. fp, 0, 0)[1]
end

-- The fingerprint's oldest unfailed row, the only one a claim may take, waits to fall due.
local function place_head(fp)
  local head = head_of(fp)
  if head then
    local row = redis.call('HMGET', P .. 'row:' .. head, 'not_before', 'claimed_until')
    redis.call('ZREM', P .. 'queue:ready', head)
    redis.call('ZADD', P .. 'queue:pending', num(due_of(row[1], row[2])), head)
  end
end

-- After an unfailed row's not_before or claimed_until changed.
local function reposition(id, fp, not_before, claimed_until)
  local due = num(due_of(not_before, claimed_until))
  redis.call('ZREM', P .. 'queue:ready', id)
  redis.call('ZREM', P .. 'queue:pending', id)
  if head_of(fp) == id then redis.call('ZADD', P .. 'queue:pending', due, id) end
end

-- Take an unfailed row out of the queue's indexes (deleted or failed).
local function unqueue(id, fp)
  local was_head = head_of(fp) == id
  redis.call('ZREM', P .. 'queue:enqueued', id)
  redis.call('ZREM', P .. 'queue:ready', id)
  redis.call('ZREM', P .. 'queue:pending', id)
  redis.call('ZREM', P .. 'fp-queue:' .. fp, id)
  if was_head then place_head(fp) end
end

local function enqueue(fp, kind, alert, storm_id, incident_id, not_before, now)
  local id = num(redis.call('INCR', KEYS[1]))
  redis.call('HSET', P .. 'row:' .. id, 'id', id, 'fingerprint', fp, 'kind', kind,
    'alert', alert, 'storm_id', storm_id, 'incident_id', incident_id,
    'enqueued_at', num(now), 'not_before', num(not_before), 'claimed_until', '',
    'attempts', '0', 'last_error', '', 'failed_at', '', 'trace_context', TRACE)
  redis.call('ZADD', P .. 'fp-queue:' .. fp, id, id)
  redis.call('ZADD', P .. 'queue:enqueued', num(now), id)
  if head_of(fp) == id then redis.call('ZADD', P .. 'queue:pending', num(not_before), id) end
  return id
end

local function delete_row(id)
  local row = redis.call('HMGET', P .. 'row:' .. id, 'fingerprint', 'failed_at')
  if not row[1] then return end
  redis.call('DEL', P .. 'row:' .. id)
  if row[2] == '' then
    unqueue(id, row[1])
  else
    redis.call('ZREM', P .. 'fp-failed:' .. row[1], id)
    redis.call('ZREM', P .. 'queue:failed', id)
  end
end

-- The fingerprint no longer has a life to count on: the next alert of it is new work.
local function end_life(fp)
  local f = load_fp(fp)
  if f and f.ended ~= '1' then
    local ended = copy(f)
    ended.ended = '1'
    save_fp(fp, f, ended)
  end
end
"""

# ARGV: prefix, hold, storm window (microseconds), storm threshold, item count, then per item
# (in the order PostgreSQL locks them: by fingerprint, then request order): fingerprint,
# status (firing|resolved), alert name, cluster, alert JSON, storm id should it start one;
# last, the W3C traceparent kept with the rows it queues.
# Returns {outcome per item, {fingerprint, storm, ...} of those a storm took in}.
_TAKE: Final = (
    _LIBRARY
    + r"""
local hold, window, threshold = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = tonumber(ARGV[5])
-- Checked before the first write: a script that fails halfway keeps what it wrote.
if #ARGV ~= 6 + count * 6 then
  return redis.error_reply('ERR expected ' .. count .. ' items of 6 arguments and a trace')
end
TRACE = ARGV[6 + count * 6]
for i = 0, count - 1 do
  if ARGV[7 + i * 6] ~= 'firing' and ARGV[7 + i * 6] ~= 'resolved' then
    return redis.error_reply('ERR item ' .. i .. ': status must be firing or resolved')
  end
end
local now = now_us()
local since = now - window  -- a recent start is one after this
local joined, joined_order = {}, {}

local function end_storm_if_quiet(storm_id)
  local key = P .. 'storm:' .. storm_id
  local storm = redis.call('HMGET', key, 'alert_name', 'cluster', 'ended_at')
  if storm[3] == '' and redis.call('SCARD', P .. 'storm-firing:' .. storm_id) == 0 then
    redis.call('HSET', key, 'ended_at', num(now))
    redis.call('ZADD', P .. 'storms:ended', num(now), storm_id)
    local pair = pair_of(storm[1], storm[2])
    if redis.call('HGET', P .. 'storms:active', pair) == storm_id then
      redis.call('HDEL', P .. 'storms:active', pair)
    end
  end
end

-- The recent starts join the storm: those still queued and never tried are switched to it,
-- the others keep their own incident and are listed on the storm's too. The starter is
-- queued by the caller.
local function start_storm(alert_name, cluster, pair, starter, storm_id)
  -- Ids are made by the replicas from their clock; should one ever repeat, derive another.
  while redis.call('EXISTS', P .. 'storm:' .. storm_id) == 1 do
    storm_id = 'storm-' .. string.sub(redis.sha1hex(storm_id .. ':' .. num(now)), 1, 26)
  end
  redis.call('HSET', P .. 'storm:' .. storm_id, 'alert_name', alert_name, 'cluster', cluster,
    'started_at', num(now), 'ended_at', '')
  redis.call('HSET', P .. 'storms:active', pair, storm_id)
  local members = redis.call('ZRANGEBYSCORE', P .. 'starts:' .. pair, '(' .. num(since), '+inf')
  local alerts = {}
  for _, member in ipairs(members) do
    local f = load_fp(member)
    local joining = copy(f)
    joining.storm_id = storm_id
    save_fp(member, f, joining)
    alerts[member] = f.alert
    if not joined[member] then joined_order[#joined_order + 1] = member end
    joined[member] = storm_id
  end
  for _, member in ipairs(members) do
    local switched = false
    for _, id in ipairs(redis.call('ZRANGE', P .. 'fp-queue:' .. member, 0, -1)) do
      local key = P .. 'row:' .. id
      local row = redis.call('HMGET', key, 'kind', 'attempts', 'claimed_until')
      if row[1] == 'firing' and row[2] == '0' then
        redis.call('HSET', key, 'storm_id', storm_id, 'not_before', num(now))
        reposition(id, member, num(now), row[3])
        switched = true
      end
    end
    if not switched and member ~= starter then
      enqueue(member, 'firing', alerts[member], storm_id, '', now, now)
    end
  end
  return storm_id
end

local function new_life(fp, alert_name, cluster, alert, storm_candidate)
  local pair = pair_of(alert_name, cluster)
  local storm_id = redis.call('HGET', P .. 'storms:active', pair)
  if not storm_id then
    local starts = P .. 'starts:' .. pair
    -- Older starts never count again: keep the index to the window.
    redis.call('ZREMRANGEBYSCORE', starts, '-inf', num(since))
    if redis.call('ZCOUNT', starts, '(' .. num(since), '+inf') >= threshold then
      storm_id = start_storm(alert_name, cluster, pair, fp, storm_candidate)
    end
  end
  if not storm_id then
    enqueue(fp, 'firing', alert, '', '', now + hold, now)
    return {'accepted'}
  end
  local f = load_fp(fp)
  if f.storm_id ~= storm_id then
    local member = copy(f)
    member.storm_id = storm_id
    save_fp(fp, f, member)
  end
  enqueue(fp, 'firing', alert, storm_id, '', now, now)
  return {'storm', storm_id, num(redis.call('SCARD', P .. 'storm-members:' .. storm_id))}
end

local function firing(fp, alert_name, cluster, alert, storm_candidate)
  local f = load_fp(fp)
  if f and f.state == 'firing' and f.ended == '0' then
    local counted = copy(f)
    counted.occurrences = num(tonumber(f.occurrences) + 1)
    counted.uncounted = num(tonumber(f.uncounted) + 1)
    counted.last_seen_at = num(now)
    save_fp(fp, f, counted)
    -- Without an incident, whether its first alert still waits (or is in flight) or was
    -- forwarded and opened none: the answer says which.
    local queued = '0'
    if f.incident_id == '' then
      for _, id in ipairs(redis.call('ZRANGE', P .. 'fp-queue:' .. fp, 0, -1)) do
        if redis.call('HGET', P .. 'row:' .. id, 'kind') == 'firing' then queued = '1' end
      end
    end
    return {'duplicate', counted.occurrences, f.incident_id, queued}
  end
  -- A new life (a resolved or ended one restarts, keeping its name and cluster).
  local life = f and copy(f) or {alert_name = alert_name, cluster = cluster}
  life.state = 'firing'
  life.alert = alert
  life.incident_id = ''
  life.storm_id = ''
  life.occurrences = '1'
  life.uncounted = '0'
  life.ended = '0'
  life.life_started_at = num(now)
  life.last_seen_at = num(now)
  life.resolved_at = ''
  save_fp(fp, f, life)
  return new_life(fp, alert_name, cluster, alert, storm_candidate)
end

local function resolved(fp, alert)
  local f = load_fp(fp)
  if not f or f.state ~= 'firing' then return {'not-firing'} end
  local r = copy(f)
  r.state = 'resolved'
  r.resolved_at = num(now)
  r.last_seen_at = num(now)
  save_fp(fp, f, r)
  -- A firing alert nobody tried to forward yet: dropping it means it never became work.
  local dropped = 0
  for _, id in ipairs(redis.call('ZRANGE', P .. 'fp-queue:' .. fp, 0, -1)) do
    local row = redis.call('HMGET', P .. 'row:' .. id, 'kind', 'attempts')
    if row[1] == 'firing' and row[2] == '0' then
      delete_row(id)
      dropped = dropped + 1
    end
  end
  if f.storm_id ~= '' then end_storm_if_quiet(f.storm_id) end
  -- Never work only if nothing of this life reached (or is reaching) the alert processor:
  -- no incident yet, and no firing row of it being tried.
  local in_flight = false
  for _, id in ipairs(redis.call('ZRANGE', P .. 'fp-queue:' .. fp, 0, -1)) do
    if redis.call('HGET', P .. 'row:' .. id, 'kind') == 'firing' then in_flight = true end
  end
  if dropped > 0 and f.incident_id == '' and not in_flight then return {'dropped'} end
  enqueue(fp, 'resolved', alert, f.storm_id, f.incident_id, now, now)
  return {'queued', f.incident_id}
end

local outcomes = {}
for i = 0, count - 1 do
  local at = 6 + i * 6
  local fp, status = ARGV[at], ARGV[at + 1]
  if status == 'firing' then
    outcomes[i + 1] = firing(fp, ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5])
  else
    outcomes[i + 1] = resolved(fp, ARGV[at + 4])
  end
end
local joined_flat = {}
for _, fp in ipairs(joined_order) do
  joined_flat[#joined_flat + 1] = fp
  joined_flat[#joined_flat + 1] = joined[fp]
end
return {outcomes, joined_flat}
"""
)

# ARGV: prefix, limit, lease (microseconds). Returns the rows claimed, oldest first:
# {id, fingerprint, kind, alert, storm_id, incident_id, attempts, trace_context}.
_CLAIM: Final = (
    _LIBRARY
    + r"""
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
if limit <= 0 then return {} end
local now = now_us()
local pending, ready = P .. 'queue:pending', P .. 'queue:ready'
-- Heads that fell due: not_before <= now, and a lease (if any) ran out before now.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', pending, '-inf', num(now))) do
  local claimed_until = redis.call('HGET', P .. 'row:' .. id, 'claimed_until')
  if not claimed_until then
    redis.call('ZREM', pending, id)
  elseif claimed_until == '' or tonumber(claimed_until) < now then
    redis.call('ZREM', pending, id)
    redis.call('ZADD', ready, id, id)
  end
end
local claimed = {}
local lease_end = num(now + lease)
for _, id in ipairs(redis.call('ZRANGE', ready, 0, limit - 1)) do
  local key = P .. 'row:' .. id
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  -- Due again when the lease runs out (its forwarder died), as in PostgreSQL.
  local not_before = tonumber(redis.call('HGET', key, 'not_before'))
  redis.call('HSET', key, 'claimed_until', lease_end,
    'not_before', num(math.max(not_before, tonumber(lease_end))))
  local row = as_table(redis.call('HGETALL', key))
  local due = num(due_of(row.not_before, lease_end))
  redis.call('ZREM', ready, id)
  redis.call('ZADD', pending, due, id)
  claimed[#claimed + 1] = {id, row.fingerprint, row.kind, row.alert, row.storm_id,
    row.incident_id, num(attempts), row.trace_context or ''}
end
return claimed
"""
)

# ARGV: prefix, row id, fingerprint, kind, incident id.
_FORWARDED: Final = (
    _LIBRARY
    + r"""
local id, fp, kind, incident_id = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if incident_id ~= '' and kind == 'firing' then
  local f = load_fp(fp)
  if f and f.incident_id == '' then
    local counted_on = copy(f)
    counted_on.incident_id = incident_id
    save_fp(fp, f, counted_on)
  end
end
delete_row(id)
return 1
"""
)

# ARGV: prefix, row id, error, delay (microseconds).
_RETRY_LATER: Final = (
    _LIBRARY
    + r"""
local id, err, delay = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = P .. 'row:' .. id
local row = redis.call('HMGET', key, 'fingerprint', 'failed_at')
if not row[1] then return 0 end
local not_before = num(now_us() + delay)
redis.call('HSET', key, 'claimed_until', '', 'last_error', err, 'not_before', not_before)
if row[2] == '' then reposition(id, row[1], not_before, '') end
return 1
"""
)

# ARGV: prefix, row id, fingerprint, error.
_GIVE_UP: Final = (
    _LIBRARY
    + r"""
local id, fp, err = ARGV[2], ARGV[3], ARGV[4]
local now = num(now_us())
local key = P .. 'row:' .. id
local row = redis.call('HMGET', key, 'fingerprint', 'failed_at')
if row[1] then
  redis.call('HSET', key, 'claimed_until', '', 'last_error', err, 'failed_at', now)
  if row[2] == '' then
    unqueue(id, row[1])
    redis.call('ZADD', P .. 'fp-failed:' .. row[1], id, id)
  end
  redis.call('ZADD', P .. 'queue:failed', now, id)
end
end_life(fp)
return 1
"""
)

# ARGV: prefix, fingerprint, incident id (of the row; '' when unknown at intake).
_RESOLUTION_TARGET: Final = (
    _LIBRARY
    + r"""
local incident_id = ARGV[3]
if incident_id == '' then
  incident_id = redis.call('HGET', P .. 'fp:' .. ARGV[2], 'incident_id') or ''
end
if incident_id == '' then return {'', 0} end
return {incident_id, redis.call('SCARD', P .. 'incident-live:' .. incident_id)}
"""
)

# Microseconds until the next unfailed row is due (negative when overdue); nil when none.
_NEXT_DUE_IN: Final = (
    _LIBRARY
    + r"""
-- Only a fingerprint's first row can be claimed: a row waiting behind one in flight is not
-- due, or an idle forwarder would spin while another replica forwards that row.
if redis.call('ZCARD', P .. 'queue:ready') > 0 then return '0' end
local first = redis.call('ZRANGE', P .. 'queue:pending', 0, 0, 'WITHSCORES')
if #first == 0 then return false end
return num(tonumber(first[2]) - now_us())
"""
)

# ARGV: prefix, limit. Returns {fingerprint, incident_id, uncounted} by last_seen_at.
_UNCOUNTED: Final = (
    _LIBRARY
    + r"""
local limit = tonumber(ARGV[2])
if limit <= 0 then return {} end
local out = {}
for _, fp in ipairs(redis.call('ZRANGE', P .. 'uncounted', 0, limit - 1)) do
  local f = redis.call('HMGET', P .. 'fp:' .. fp, 'incident_id', 'uncounted')
  out[#out + 1] = {fp, f[1], f[2]}
end
return out
"""
)

# ARGV: prefix, incident id, closed (1|0), count n, then n pairs of fingerprint, count.
_COUNTED: Final = (
    _LIBRARY
    + r"""
local incident_id, closed, n = ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
if #ARGV ~= 4 + n * 2 then return redis.error_reply('ERR expected ' .. n .. ' counts') end
for i = 0, n - 1 do
  local fp, count = ARGV[5 + i * 2], tonumber(ARGV[6 + i * 2])
  local f = load_fp(fp)
  if f then
    local left = tonumber(f.uncounted) - count
    if left < 0 then left = 0 end
    local counted = copy(f)
    counted.uncounted = num(left)
    save_fp(fp, f, counted)
  end
end
if closed then
  for _, fp in ipairs(redis.call('SMEMBERS', P .. 'incident-live:' .. incident_id)) do
    end_life(fp)
  end
end
return 1
"""
)

# ARGV: prefix, retention (microseconds), limit, skip. Forgets up to `limit` finished lives,
# the first `skip` of those due being ones kept (they still have queued rows); with skip 0
# also the storms that ended before the retention. Returns {removed, kept, scanned}.
_FORGET_FINISHED: Final = (
    _LIBRARY
    + r"""
local retention, limit, skip = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local before = '(' .. num(now_us() - retention)
local removed, kept = 0, 0
local due = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', before, 'LIMIT', skip, limit)
for _, fp in ipairs(due) do
  if redis.call('EXISTS', P .. 'fp-queue:' .. fp, P .. 'fp-failed:' .. fp) == 0 then
    local f = load_fp(fp)
    if f then save_fp(fp, f, nil) else redis.call('ZREM', P .. 'finished', fp) end
    removed = removed + 1
  else
    kept = kept + 1
  end
end
if skip == 0 then
  for _, storm_id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'storms:ended', '-inf', before)) do
    redis.call('DEL', P .. 'storm:' .. storm_id, P .. 'storm-members:' .. storm_id,
      P .. 'storm-firing:' .. storm_id)
    redis.call('ZREM', P .. 'storms:ended', storm_id)
  end
end
return {removed, kept, #due}
"""
)

# Returns {unfailed rows, microseconds since the oldest was queued (0 when none)}.
_QUEUE_DEPTH: Final = (
    _LIBRARY
    + r"""
local now = now_us()
local depth = redis.call('ZCARD', P .. 'queue:enqueued')
if depth == 0 then return {0, '0'} end
local first = redis.call('ZRANGE', P .. 'queue:enqueued', 0, 0, 'WITHSCORES')
return {depth, num(now - tonumber(first[2]))}
"""
)


# -- the intake -------------------------------------------------------------------------------


def _client(url: str, timeout: float) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # No automatic retries: a script whose reply was lost may have run, and running it
        # again would decide the batch twice (the second time as duplicates). The caller
        # retries (the edge, the forwarder), as with PostgreSQL.
        retry=Retry(NoBackoff(), 0),
        # RESP2, which every Redis speaks. Under RESP3 redis-py 8 turns on maintenance
        # notifications, and with them stops checking a pooled connection before use, so
        # every connection a Redis restart closed would fail one command.
        protocol=2,
        client_name="kubernaut-gateway",
    )


# KEYS: the lease; ARGV: the holder's token. Deletes the lease only if this holder still
# has it (it may have expired and been taken by another replica).
_RELEASE_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Longer than any counting round takes; a replica that dies holding it frees it then.
_COUNT_LEASE_MS: Final = 60_000


class RedisIntake:
    """The intake in Redis; see the module docstring. Use `connect()`."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: GatewaySettings,
        *,
        url: str,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = 10.0,
    ) -> None:
        """`timeout` bounds `ping()`."""
        self.client = client
        self.settings = settings
        self.key_prefix = key_prefix
        self.server = redact_dsn(url)
        self._timeout = timeout
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(source)
            for name, source in (
                ("take", _TAKE),
                ("claim", _CLAIM),
                ("forwarded", _FORWARDED),
                ("retry_later", _RETRY_LATER),
                ("give_up", _GIVE_UP),
                ("resolution_target", _RESOLUTION_TARGET),
                ("next_due_in", _NEXT_DUE_IN),
                ("uncounted", _UNCOUNTED),
                ("counted", _COUNTED),
                ("forget_finished", _FORGET_FINISHED),
                ("queue_depth", _QUEUE_DEPTH),
                ("release_lease", _RELEASE_LEASE),
            )
        }

    @classmethod
    async def connect(
        cls,
        url: str,
        settings: GatewaySettings,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = 10.0,
    ) -> RedisIntake:
        """Connect to `url` and check that it answers; IntakeUnavailable (naming the server,
        never the password) when it cannot be reached. Warns when Redis does not keep
        accepted alerts durably. `timeout` bounds connecting and each command."""
        intake = cls(
            _client(url, timeout), settings, url=url, key_prefix=key_prefix, timeout=timeout
        )
        cannot = f"cannot connect to Redis at {intake.server}"
        try:
            async with intake._reaching(cannot):
                await intake.client.ping()
                await intake._check_durability()
        except redis.exceptions.RedisError as error:
            # Any other answer to PING: not a Redis we can use (and readiness never raises).
            await intake.close()
            raise IntakeUnavailable(f"{cannot}: {error}") from error
        except BaseException:
            await intake.close()
            raise
        return intake

    def key(self, name: str) -> str:
        """The full name of one of the keys the module docstring lists (for inspection)."""
        return self.key_prefix + name

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        """True when Redis answers within the timeout; never raises."""
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self.client.ping())
        except (redis.exceptions.RedisError, OSError, TimeoutError):
            return False

    async def _check_durability(self) -> None:
        try:
            config = await self.client.config_get("append*")
        except redis.exceptions.ResponseError as error:
            # CONFIG renamed away or not granted (managed Redis): we cannot tell.
            log.info(
                "cannot read Redis's persistence settings; accepted alerts are durable only "
                "with appendonly yes and appendfsync always",
                extra={"redis": self.server, "error": str(error)},
            )
            return
        appendonly, appendfsync = config.get("appendonly"), config.get("appendfsync")
        if appendonly != "yes" or appendfsync != "always":
            log.warning(
                "Redis does not fsync every write: alerts the gateway accepted may be lost "
                "if Redis crashes; run it with appendonly yes and appendfsync always",
                extra={"redis": self.server, "appendonly": appendonly, "appendfsync": appendfsync},
            )

    @asynccontextmanager
    async def _reaching(self, what: str = "") -> AsyncIterator[None]:
        """Redis failing to take a command (unreachable, loading, read-only, out of memory,
        failing to write its AOF) raises IntakeUnavailable, "<what>: <error>"; other errors
        pass as they are."""
        what = what or f"{LABEL} at {self.server} unavailable"
        try:
            yield
        except _UNREACHABLE as error:
            raise IntakeUnavailable(f"{what}: {error or type(error).__name__}") from error
        except redis.exceptions.ResponseError as error:
            if str(error).split(" ", 1)[0] not in _UNAVAILABLE_CODES:
                raise
            raise IntakeUnavailable(f"{what}: {error}") from error

    async def _run(self, script: str, *args: str | int) -> Any:
        async with self._reaching():
            return await self._scripts[script](
                keys=[self.key("row-id")], args=[self.key_prefix, *args]
            )

    # -- what the servicer uses ------------------------------------------------------------------

    async def take(
        self, alerts: Sequence[alert_pb2.Alert], trace_context: str = ""
    ) -> list[Outcome]:
        """Decide every alert of a batch, in one script; outcomes in request order.
        IntakeUnavailable (nothing taken) when Redis cannot take it."""
        settings = self.settings
        now = dt.datetime.now(dt.UTC)
        items = items_of(alerts, now, settings)
        outcomes: dict[int, Outcome] = {}
        decided: list[IntakeItem] = []
        args: list[str | int] = []
        # The order in which the PostgreSQL version decides them.
        for item in in_decision_order(items):
            if item.freshness.refusal:
                outcomes[item.index] = refused(item)
                continue
            firing = item.alert.status != alert_pb2.ALERT_STATUS_RESOLVED
            alert = flagged(item.alert, item.freshness.flags) if firing else item.alert
            # Should this alert start a storm; distinct per item, so that two storms of one
            # name started by one batch never share an id.
            storm_id = storm_id_of(
                item.alert.name, item.cluster, now + dt.timedelta(microseconds=len(decided))
            )
            args += [
                item.fingerprint,
                "firing" if firing else "resolved",
                item.alert.name,
                item.cluster,
                alert_json(alert),
                storm_id if firing else "",
            ]
            decided.append(item)
        results, joined_flat = await self._run(
            "take",
            _micros(settings.hold_seconds),
            _micros(settings.storm_window_seconds),
            settings.storm_threshold,
            len(decided),
            *args,
            trace_context,
        )
        for item, result in zip(decided, results, strict=True):
            outcomes[item.index] = _outcome(item, result)
        joined = dict(zip(joined_flat[::2], joined_flat[1::2], strict=True))
        return [as_joined(outcomes[i], joined) for i in range(len(items))]

    # -- what the forwarder uses -----------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[QueuedAlert]:
        """Take up to `limit` due rows for `lease_seconds`: the oldest of each fingerprint
        only, so that a fingerprint's firing alert is always forwarded before its
        resolution. A row whose lease ran out (its forwarder died) is due again."""
        rows = await self._run("claim", limit, _micros(lease_seconds))
        return [
            QueuedAlert(
                int(row_id),
                fingerprint,
                kind,
                json_format.Parse(alert, alert_pb2.Alert(), ignore_unknown_fields=True),
                storm_id,
                incident_id,
                int(attempts),
                trace,
            )
            for row_id, fingerprint, kind, alert, storm_id, incident_id, attempts, trace in rows
        ]

    async def forwarded(self, queued: QueuedAlert, incident_id: str) -> None:
        """The alert processor took it: remember the incident the fingerprint's alerts are
        counted on (a member of a storm listed late keeps its own), drop the row."""
        await self._run("forwarded", queued.row_id, queued.fingerprint, queued.kind, incident_id)

    async def retry_later(self, queued: QueuedAlert, error: str, delay_seconds: float) -> None:
        await self._run(
            "retry_later", queued.row_id, error[:MAX_ERROR_CHARS], _micros(delay_seconds)
        )

    async def give_up(self, queued: QueuedAlert, error: str) -> None:
        """Refused for good: kept for operators, and the fingerprint's life ends so that
        the next alert of it is tried afresh."""
        await self._run("give_up", queued.row_id, queued.fingerprint, error[:MAX_ERROR_CHARS])

    async def resolution_target(self, queued: QueuedAlert) -> tuple[str, int]:
        """(the incident a resolution is about, how many of its fingerprints still fire)."""
        incident_id, firing = await self._run(
            "resolution_target", queued.fingerprint, queued.incident_id
        )
        return str(incident_id), int(firing)

    async def next_due_in(self) -> float | None:
        """Seconds until the next queued row is due (0 when one is); None when none waits."""
        micros = await self._run("next_due_in")
        return None if micros is None else max(0.0, int(micros) / 1_000_000)

    async def uncounted(self, limit: int) -> list[tuple[str, str, int]]:
        """(fingerprint, incident_id, duplicates not yet counted on it)."""
        rows = await self._run("uncounted", limit)
        return [(fingerprint, incident, int(count)) for fingerprint, incident, count in rows]

    @asynccontextmanager
    async def counting_lease(self) -> AsyncIterator[bool]:
        """Whether this replica may count duplicates now (see IntakeStore.counting_lease):
        a key set only if absent, expiring on its own if the replica dies."""
        token = uuid.uuid4().hex
        key = self.key("count-lease")
        async with self._reaching():
            held = await self.client.set(key, token, nx=True, px=_COUNT_LEASE_MS)
        try:
            yield bool(held)
        finally:
            if held:
                async with self._reaching():
                    await self._scripts["release_lease"](keys=[key], args=[token])

    async def counted(
        self, incident_id: str, counts: Sequence[tuple[str, int]], incident_closed: bool
    ) -> None:
        """The duplicates were added to the incident; a closed incident ends the life of
        every fingerprint counted on it."""
        pairs = [value for fingerprint, count in counts for value in (fingerprint, count)]
        await self._run("counted", incident_id, int(incident_closed), len(counts), *pairs)

    async def forget_finished(self) -> int:
        """Delete lives that finished longer than the retention ago; how many. In batches,
        each atomic, so that a large clean-up never blocks Redis for long."""
        removed = skip = 0
        while True:
            gone, kept, scanned = await self._run(
                "forget_finished", _micros(self.settings.retention_seconds), _FORGET_BATCH, skip
            )
            removed += int(gone)
            skip += int(kept)
            if int(scanned) < _FORGET_BATCH:
                return removed

    async def queue_depth(self) -> tuple[int, float]:
        """(rows waiting to be forwarded, age of the oldest in seconds)."""
        depth, oldest = await self._run("queue_depth")
        return int(depth), int(oldest) / 1_000_000


def _outcome(item: IntakeItem, result: list[str]) -> Outcome:
    """The take script's answer for one alert, told as the PostgreSQL version tells it."""
    match result:
        case ["accepted"]:
            return accepted(item)
        case ["duplicate", occurrences, incident, queued]:
            return duplicate(item, int(occurrences), incident, queued == "1")
        case ["storm", storm_id, size]:
            return in_storm(item, storm_id, int(size))
        case ["not-firing"]:
            return not_firing(item)
        case ["dropped"]:
            return dropped_before_forwarding(item)
        case ["queued", incident]:
            return resolution_queued(item, incident)
    raise ValueError(f"unexpected answer from the take script: {result!r}")


class RedisIntakeSource:
    """The intake in Redis, connected lazily: the gateway starts NOT_SERVING while Redis
    cannot be reached and turns SERVING once it answers."""

    def __init__(
        self,
        url: str,
        settings: GatewaySettings,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = 10.0,
    ) -> None:
        """A malformed `url` raises ValueError here, at start, not on every use."""
        parse_url(url)
        self.url = url
        self.settings = settings
        self.key_prefix = key_prefix
        self._timeout = timeout
        self._intake: RedisIntake | None = None
        # One connect at a time: concurrent first calls share one client.
        self._lock = asyncio.Lock()

    async def store(self) -> RedisIntake:
        """The connected intake; IntakeUnavailable while Redis cannot be reached (the next
        call tries again)."""
        async with self._lock:
            if self._intake is None:
                self._intake = await RedisIntake.connect(
                    self.url, self.settings, key_prefix=self.key_prefix, timeout=self._timeout
                )
                log.info(
                    "%s ready",
                    LABEL,
                    extra={"redis": self._intake.server, "key_prefix": self.key_prefix},
                )
            return self._intake

    @property
    def current(self) -> RedisIntake | None:
        """The intake when connected already (never connects)."""
        return self._intake

    async def ready(self) -> bool:
        """Connected and answering; False (never an error) while it cannot be."""
        try:
            return await (await self.store()).ping()
        except IntakeUnavailable:
            return False

    async def close(self) -> None:
        if self._intake is not None:
            await self._intake.close()
            self._intake = None
