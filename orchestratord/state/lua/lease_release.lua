-- Release a job's lease. ARGV: prefix, job. Returns pool SEP replica, or nil.
local where = release_lease(ARGV[2])
return where
