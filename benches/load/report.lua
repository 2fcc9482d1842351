-- wrk script for one fixed URL (no request() hook, so wrk reuses one prepared request): only a
-- machine-readable summary line for scripts/bench-load.sh.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format("LOAD-RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.status + e.timeout))
end
