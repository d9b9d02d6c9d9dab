"""The Lua scripts behind :class:`backend.loop.coordinator.Coordinator`: each state transition runs as one
script, so concurrent webhooks and workers never interleave inside one (see that module's docstring)."""

# KEYS[1]: state hash. ARGV[1]: owner job id ('' = unchecked); ARGV[2..]: field/value pairs to set.
# Sets them only while ARGV[1] owns the run; returns 1 if it did, 0 if not. A state that lost its
# job id (Redis restarted without persistence) is owned again by the run still at work on it.
OWNED_SET = """
if ARGV[1] ~= '' then
  local owner = redis.call('HGET', KEYS[1], 'job_id')
  if not owner then
    redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'updated', redis.call('TIME')[1])
    if not redis.call('HGET', KEYS[1], 'state') then redis.call('HSET', KEYS[1], 'state', 'training') end
  elseif owner ~= ARGV[1] then
    return 0
  end
end
if #ARGV > 1 then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return 1
"""

# Request a run. KEYS[1]: state hash; ARGV[1]: now; ARGV[2]: job id. Returns ENQUEUE (idle -> queued:
# the caller enqueues job ARGV[2]), QUEUED (a run is already waiting: nothing to do) or FOLLOW_UP
# (training/ranking: follow_up set, exactly one more run after this one) while the run's lease is
# still valid at ARGV[1], FOLLOW_UP_STALE when it is not (expired, or none: the caller looks whether
# the run is dead). A webhook during a healthy run is thus one Redis round trip.
TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'idle' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'updated', ARGV[1], 'job_id', ARGV[2])
  return 1
elseif state == 'queued' then
  return 2
end
redis.call('HSET', KEYS[1], 'follow_up', '1')
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '')
if lease and tonumber(ARGV[1]) < lease then return 3 end
return 4
"""
ENQUEUE, QUEUED, FOLLOW_UP, FOLLOW_UP_STALE = 1, 2, 3, 4
REQUEST = TRANSITION

# KEYS: state, counts, counts_inflight. ARGV: now, job id, threshold, modality names...
# Adds one to each modality; when the total reaches the threshold, requests a run as above (else 0).
RECORD = """
for i = 4, #ARGV do redis.call('HINCRBY', KEYS[2], ARGV[i], 1) end
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
if total < tonumber(ARGV[3]) then return 0 end
""" + TRANSITION

# KEYS: state, counts, counts_inflight. ARGV: now, lease, owner ('' = unchecked). Moves counts aside;
# state -> training. Returns 0 (nothing done) when ARGV[3] is not the job the state waits for.
BEGIN = """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
redis.call('HSET', KEYS[1], 'state', 'training', 'follow_up', '0', 'updated', ARGV[1], 'started', ARGV[1],
           'epoch', '0', 'step', '0', 'loss', '', 'lease', ARGV[2])
return 1
"""

# KEYS: state, counts, counts_inflight. ARGV: now, new job id, the lease seen as expired.
# Takes over a dead run (state and lease unchanged since the caller looked): counts back, -> queued.
TAKE_OVER = """
local state = redis.call('HGET', KEYS[1], 'state')
if (state ~= 'training' and state ~= 'ranking') or (redis.call('HGET', KEYS[1], 'lease') or '') ~= ARGV[3] then
  return 0
end
local kv = redis.call('HGETALL', KEYS[3])
for i = 1, #kv, 2 do redis.call('HINCRBY', KEYS[2], kv[i], tonumber(kv[i + 1])) end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[1], 'state', 'queued', 'follow_up', '0', 'updated', ARGV[1], 'job_id', ARGV[2],
           'error', 'previous run stopped without finishing (its lease expired); restarted')
return 1
"""

# KEYS: state, counts, counts_inflight. ARGV: now, failed ('1'/'0'), job id, owner ('' = unchecked).
# Ends a run: merges counts back on failure; returns 1 when a follow-up must be enqueued, -1 when ARGV[4]
# does not own the run (nothing done).
FINISH = """
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[4] then return -1 end
if ARGV[2] == '1' then
  local kv = redis.call('HGETALL', KEYS[3])
  for i = 1, #kv, 2 do redis.call('HINCRBY', KEYS[2], kv[i], tonumber(kv[i + 1])) end
end
redis.call('DEL', KEYS[3])
if redis.call('HGET', KEYS[1], 'follow_up') == '1' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'follow_up', '0', 'updated', ARGV[1], 'job_id', ARGV[3])
  return 1
end
redis.call('HSET', KEYS[1], 'state', 'idle', 'updated', ARGV[1])
return 0
"""
