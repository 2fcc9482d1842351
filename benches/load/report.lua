-- wrk script for one fixed URL: no request() hook (wrk reuses one prepared request), only a
-- machine-readable summary line for benches/load.rs.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "LOAD-RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d max_us=%d " ..
      "connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
