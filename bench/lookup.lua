-- wrk script: GET /metadata/<pid> over the PIDs in $PIDS (space-separated), round robin per
-- thread, or the URL's path when $PIDS is empty; prints one machine-readable RESULT line.
local pids = {}
for pid in string.gmatch(os.getenv("PIDS") or "", "%d+") do
  table.insert(pids, pid)
end
local i = 0
request = function()
  if #pids == 0 then
    -- No PIDS: the URL's own path (`/healthz`), measured the same way.
    return wrk.format("GET", wrk.path)
  end
  i = i % #pids + 1
  return wrk.format("GET", "/metadata/" .. pids[i])
end
local bad = 0
response = function(status)
  if status ~= 200 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
