-- Start a job on this instance (common.lua start_job).
-- ARGV: prefix, job, owner, pool, replica, engine. Returns what start_job returns.
return start_job(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
