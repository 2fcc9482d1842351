-- wrk script where every request asks for a new key: `-- <path prefix>` followed by a counter
-- (wrk -t1: one Lua state, so the paths are unique). Prints the same line as report.lua.
local prefix = "/1k/unique-"
local counter = 0

function init(args)
   if args[1] ~= nil then
      prefix = args[1]
   end
end

function request()
   counter = counter + 1
   return wrk.format("GET", prefix .. counter)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("LOAD-RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.status + e.timeout))
end
