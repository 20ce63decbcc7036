-- A reader opening a job's stream: the job's record (its hash, flat; the text is not read), with one of
-- this instance's readers counted in as readers.lua counts one in, if the job exists and belongs to
-- `tenant` ('': any tenant may read it); an empty list, and nobody counted in, otherwise. The read of
-- the record and the count in are one round trip (api/stream.py).
-- ARGV: prefix, job, tenant, owner, ttl (ms).
local job, tenant, owner = ARGV[2], ARGV[3], ARGV[4]
local h = K('job:' .. job)
local of = redis.call('HGET', h, 'tenant')
if not of or (tenant ~= '' and of ~= tenant) then return {} end
count_in(job, owner, tonumber(ARGV[5]), now_ms())
return redis.call('HGETALL', h)
