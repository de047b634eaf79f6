"""The Lua scripts behind the shared query IDF: each one change of the shared state, atomic in Redis.

The state is four keys with one hash tag (so every script also runs on a Redis Cluster):
``seen`` (set of document digests), ``counts`` (hash slot -> documents), ``meta`` (hash: epoch,
generation, documents, and which snapshot the epoch was seeded from: seed_epoch, seed_generation,
seed_documents, seed_kept) and ``seed`` (hash slot -> count of that seed, kept so that a better seed
can replace it later by difference).

Which seed may replace which (``UPGRADE``): a newer generation of the seed's own epoch; and, for a
seed of epoch "" (one replica's own counts, from a replica that held no snapshot), any snapshot
holding more documents, since such a seed is usually a new replica's few documents, not the
history. States created before ``seed_kept`` existed have no stored seed when their epoch is "", so
they are never replaced: subtracting an absent seed would count it twice.

Every script that changes the state takes the epoch the caller believes in and refuses (-2) when
the state is another one, so nothing meant for a lost state lands in its successor unnoticed; -1
means the state does not exist (only ``CREATE`` makes it, so that a lost state is re-seeded, not
restarted from zero).
"""

from __future__ import annotations

MISSING = -1
OTHER_EPOCH = -2

_CHECK_EPOCH = """
local epoch = redis.call('HGET', KEYS[{meta}], 'epoch')
if not epoch then return -1 end
if epoch ~= ARGV[1] then return -2 end
"""

# KEYS: seen, counts, meta. ARGV: epoch, digest, "slot,slot,...", digest, ... Returns how many of the
# documents were new (and counted).
ADD = _CHECK_EPOCH.format(meta=3) + """
local added = 0
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    for slot in string.gmatch(ARGV[i + 1], '[^,]+') do
      redis.call('HINCRBY', KEYS[2], slot, 1)
    end
    added = added + 1
  end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[3], 'documents', added)
  redis.call('HINCRBY', KEYS[3], 'generation', 1)
end
return added
"""

# KEYS: seen, meta. ARGV: epoch, digest, digest, ... Marks documents as counted without counting them:
# a replica's documents that the seed already holds.
MARK_SEEN = _CHECK_EPOCH.format(meta=2) + """
for i = 2, #ARGV do
  redis.call('SADD', KEYS[1], ARGV[i])
end
return #ARGV - 1
"""

# KEYS: seen, counts, meta, seed. ARGV: epoch, generation, documents, "slot:count,...", seed epoch,
# seed generation ("" and -1 when seeded from one replica's own counts). Creates the state only when
# it is absent (1), else leaves it alone (0). The seed's counts are stored in every case: without
# them a seed could not be replaced later.
CREATE = """
if redis.call('HEXISTS', KEYS[3], 'epoch') == 1 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
for pair in string.gmatch(ARGV[4], '[^,]+') do
  local colon = string.find(pair, ':')
  local slot, count = string.sub(pair, 1, colon - 1), string.sub(pair, colon + 1)
  redis.call('HSET', KEYS[2], slot, count)
  redis.call('HSET', KEYS[4], slot, count)
end
redis.call('HSET', KEYS[3], 'epoch', ARGV[1], 'generation', ARGV[2], 'documents', ARGV[3],
           'seed_epoch', ARGV[5], 'seed_generation', ARGV[6], 'seed_documents', ARGV[3], 'seed_kept', '1')
return 1
"""

# KEYS: counts, meta, seed. ARGV: epoch, snapshot epoch, generation, documents, "slot:count,...": a
# snapshot that may be a better seed. Replaces the seed by it: counts += new - seed, so documents
# added since the state was created stay counted. Either a higher generation of the seed's own epoch
# (each improvement applies once, and an older one never undoes a newer one), or any snapshot with
# more documents than a seed of epoch "" (after which the first rule holds, for the snapshot's epoch).
UPGRADE = _CHECK_EPOCH.format(meta=2) + """
local seed = redis.call('HMGET', KEYS[2], 'seed_epoch', 'seed_generation', 'seed_documents', 'seed_kept')
if seed[1] == ARGV[2] then
  if tonumber(seed[2]) >= tonumber(ARGV[3]) then return 0 end
elseif seed[1] ~= '' or seed[4] ~= '1' or tonumber(seed[3]) >= tonumber(ARGV[4]) then
  return 0
end
local old = redis.call('HGETALL', KEYS[3])
for i = 1, #old, 2 do
  redis.call('HINCRBY', KEYS[1], old[i], -tonumber(old[i + 1]))
end
redis.call('DEL', KEYS[3])
for pair in string.gmatch(ARGV[5], '[^,]+') do
  local colon = string.find(pair, ':')
  local slot, count = string.sub(pair, 1, colon - 1), string.sub(pair, colon + 1)
  redis.call('HINCRBY', KEYS[1], slot, count)
  redis.call('HSET', KEYS[3], slot, count)
end
redis.call('HINCRBY', KEYS[2], 'documents', tonumber(ARGV[4]) - tonumber(seed[3]))
redis.call('HSET', KEYS[2], 'seed_epoch', ARGV[2], 'seed_generation', ARGV[3], 'seed_documents', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'generation', 1)
return 1
"""
