-- Take a job out of the queue (cancel). ARGV: prefix, job. Returns the stored entry, or nil.
local stored = dequeue(ARGV[2])
return stored
