-- One queued job's place (common.lua place_of). ARGV: prefix, job, policy JSON.
-- Returns {position, their tokens_in, their tokens_out}, or {-1, 0, 0} if the job is not queued.
return place_of(ARGV[2], cjson.decode(ARGV[3]))
