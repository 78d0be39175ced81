-- wrk script: PUT /v1/blobs with a body of VALUE_BYTES bytes (the same bytes every time:
-- each upload is streamed to the members and stored again, not skipped).
--   wrk ... -s keel-blob-put.lua http://LEADER:PORT -- put KEYSPACE VALUE_BYTES
-- Prints the same RESULT line as ../shared/peers/keel-kv.lua.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local n = tonumber(args[3] or '1048576')
  wrk.method = 'PUT'
  wrk.path = '/v1/blobs'
  wrk.body = string.rep('b', n)
  wrk.headers['Content-Type'] = 'application/octet-stream'
end
not_ok = 0
function response(status, headers, body)
  if status ~= 200 then not_ok = not_ok + 1 end
end
function done(summary, latency, requests)
  local e = summary.errors
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (tonumber(t:get('not_ok')) or 0) end
  io.write(string.format(
    'RESULT mode=blob requests=%d duration_s=%.2f rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.0f non2xx=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    math.max(e.status, bad), e.connect, e.read, e.write, e.timeout))
end
