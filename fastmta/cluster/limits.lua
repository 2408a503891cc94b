#!lua name=fastmta
-- fastmta's shared limits (docs/scale.md).  Every score and expiry is computed from the
-- server's TIME in microseconds (no node clock), and every admission checks all the
-- limits it is given before charging any of them (no tokens drained by a later denial).

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(x)
  return string.format('%.0f', x)
end

-- Connection leases.  KEYS: one ZSET per limit (members = lease ids "node:uuid", score
-- = expiry), then as many demand ZSETs (node -> when it was last refused).
-- ARGV: ttl_ms, lease id, then one limit per key (-1: count without a limit).
-- Fair shares: while other nodes were refused a lease of a key in the last second, a
-- node holds at most ceil(limit / nodes wanting) of it (first come does not take all).
-- Returns {1, 0} (granted) or {0, ms until the earliest lease of the full key expires,
-- negative when the node was refused because it holds its fair share already}.
local function holds(k, node)
  local n, pre = 0, node .. ':'
  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    if string.sub(m, 1, #pre) == pre then n = n + 1 end
  end
  return n
end

local function acquire(keys, args)
  local now = now_us()
  local ttl = tonumber(args[1]) * 1000
  local id = args[2]
  local node = string.match(id, '^(.-):') or id
  local n = #keys / 2
  for i = 1, n do
    local k, w = keys[i], keys[n + i]
    redis.call('ZREMRANGEBYSCORE', k, '-inf', num(now))
    local lim = tonumber(args[2 + i])
    if lim >= 0 and redis.call('ZSCORE', k, id) == false then
      local deny = redis.call('ZCARD', k) >= lim
      local fair = 0
      if not deny then
        redis.call('ZREMRANGEBYSCORE', w, '-inf', num(now - 1000000))
        local wanting = redis.call('ZCARD', w)
        if redis.call('ZSCORE', w, node) == false then wanting = wanting + 1 end
        if wanting > 1 and holds(k, node) >= math.ceil(lim / wanting) then
          deny = true
          fair = 1
        end
      end
      if deny then
        redis.call('ZADD', w, num(now), node)
        redis.call('PEXPIRE', w, 2000)
        local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
        local wait = 1000
        if first[2] then wait = math.max(1, math.floor((tonumber(first[2]) - now) / 1000)) end
        if fair == 1 then wait = -wait end
        return {0, wait}
      end
    end
  end
  local exp = num(now + ttl)
  for i = 1, n do
    redis.call('ZADD', keys[i], exp, id)
    redis.call('PEXPIRE', keys[i], 2 * tonumber(args[1]))
  end
  return {1, 0}
end

-- Renewal (also re-creates leases lost by a Redis restart, and adopts leases taken on a
-- local share during an outage).  KEYS[i] pairs with ARGV[i + 1] (a lease id).
-- Returns how many leases had to be re-created.
local function renew(keys, args)
  local now = now_us()
  local ttl = tonumber(args[1])
  local exp = num(now + ttl * 1000)
  local added = 0
  for i, k in ipairs(keys) do
    added = added + redis.call('ZADD', k, exp, args[i + 1])
    redis.call('PEXPIRE', k, 2 * ttl)
  end
  return added
end

-- Release.  KEYS: the lease's ZSETs; ARGV[1]: the lease id.
local function release(keys, args)
  local n = 0
  for _, k in ipairs(keys) do n = n + redis.call('ZREM', k, args[1]) end
  return n
end

-- Releases owed since an outage (released meanwhile, or an acquire whose reply was
-- lost).  KEYS[i] pairs with ARGV[i] (a lease id).  Returns how many were still there.
local function drop(keys, args)
  local n = 0
  for i, k in ipairs(keys) do n = n + redis.call('ZREM', k, args[i]) end
  return n
end

-- GCRA over several buckets at once.  KEYS: one TAT string per bucket.  ARGV: n (cells),
-- then per key: emission interval (us), tolerance (us).  All conform -> all charged,
-- returns {1, 0}; else nothing charged, returns {0, us to wait}.
local function take(keys, args)
  local now = now_us()
  local n = tonumber(args[1])
  local new = {}
  local wait = 0
  for i, k in ipairs(keys) do
    local interval = tonumber(args[2 * i])
    local tol = tonumber(args[2 * i + 1])
    local tat = tonumber(redis.call('GET', k) or '0')
    if tat < now then tat = now end
    local allow_at = tat + interval * (n - 1) - tol
    if allow_at > now and allow_at - now > wait then wait = allow_at - now end
    new[i] = tat + interval * n
  end
  if wait > 0 then return {0, num(wait)} end
  for i, k in ipairs(keys) do
    redis.call('SET', k, num(new[i]), 'PX', math.floor((new[i] - now) / 1000) + 1000)
  end
  return {1, 0}
end

-- GCRA reservation: like take, but a batch that conforms within ARGV[2] us from now is
-- charged at once and the reply says when it may be used (so several nodes queue on the
-- buckets instead of asking again and again).  ARGV: n, ahead_us, then per key: interval
-- (us), tolerance (us).  Returns {1, us until the whole batch conforms} (charged) or
-- {0, us until a request would be within ahead_us} (nothing charged).  The caller uses
-- the cells no earlier than the time returned: every bucket's rate holds exactly.
local function reserve(keys, args)
  local now = now_us()
  local n = tonumber(args[1])
  local ahead = tonumber(args[2])
  local new = {}
  local ready = 0
  for i, k in ipairs(keys) do
    local interval = tonumber(args[2 * i + 1])
    local tol = tonumber(args[2 * i + 2])
    local tat = tonumber(redis.call('GET', k) or '0')
    if tat < now then tat = now end
    local allow_at = tat + interval * (n - 1) - tol
    if allow_at - now > ready then ready = allow_at - now end
    new[i] = tat + interval * n
  end
  if ready > ahead then return {0, num(ready - ahead)} end
  for i, k in ipairs(keys) do
    redis.call('SET', k, num(new[i]), 'PX', math.floor((new[i] - now) / 1000) + 1000)
  end
  return {1, num(ready)}
end

-- A learned limit or a suspension, seen by one node, for all.  KEYS[1]: the site's state
-- hash.  ARGV: field ('limit'|'rate'|'suspend'), value (suspend: seconds from now),
-- ttl_s of the state.  Returns the value for the signal stream (the caller adds it:
-- the stream is in another Redis Cluster slot), or nil when nothing changed.
local function signal(keys, args)
  local now = now_us()
  local field, value = args[1], tonumber(args[2])
  if field == 'suspend' then
    local untl = now + value * 1000000
    local cur = tonumber(redis.call('HGET', keys[1], 'suspend') or '0')
    if untl <= cur then return nil end
    redis.call('HSET', keys[1], 'suspend', num(untl))
    value = num(untl)
  else
    redis.call('HSET', keys[1], field, tostring(value), field .. '_at', num(now))
    value = tostring(value)
  end
  redis.call('EXPIRE', keys[1], tonumber(args[3]))
  return value
end

-- Membership: ZADD node now; drop nodes unseen for ARGV[2] ms; returns {now_us, nodes}.
local function member(keys, args)
  local now = now_us()
  redis.call('ZADD', keys[1], num(now), args[1])
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', num(now - tonumber(args[2]) * 1000))
  return {num(now), redis.call('ZRANGE', keys[1], 0, -1)}
end

-- Server time (us) and the state hashes of KEYS.
local function state(keys, args)
  local out = {num(now_us())}
  for _, k in ipairs(keys) do table.insert(out, redis.call('HGETALL', k)) end
  return out
end

redis.register_function('fm_acquire', acquire)
redis.register_function('fm_renew', renew)
redis.register_function('fm_release', release)
redis.register_function('fm_take', take)
redis.register_function('fm_reserve', reserve)
redis.register_function('fm_drop', drop)
redis.register_function('fm_signal', signal)
redis.register_function('fm_member', member)
redis.register_function{function_name = 'fm_state', callback = state,
                        flags = {'no-writes'}}
