-- wrk script: writes keys 0..N-1 once each, in sequence, through the kv plugin, then stops
-- (issue #16's states of a given size "written through the API").
--   wrk -t1 -c64 -d3600s -s keel-fill.lua http://LEADER:PORT -- N VALUE_BYTES DONE_FILE
-- Keys are "key-%012d"; bodies are built per request (a 4 GB state's bodies would not fit in
-- wrk's memory). Once N answers came, the thread stops and DONE_FILE is created: wrk's main
-- thread sleeps for the whole -d, so the caller stops it with SIGINT (then done() runs and
-- prints one RESULT line like keel-kv.lua's).
local n, vbytes, value, done_file = 100000, 1000, nil, nil
local next_key, answered, not_ok = 0, 0, 0

function init(args)
  n = tonumber(args[1] or '100000')
  vbytes = tonumber(args[2] or '1000')
  done_file = args[3]
  value = string.rep('v', vbytes)
  wrk.method = 'POST'
  wrk.path = '/v1/plugins/kv/commands'
  wrk.headers['Content-Type'] = 'application/json'
end

function request()
  local k = string.format('key-%012d', next_key % n)
  next_key = next_key + 1
  return wrk.format(nil, nil, nil, '{"op":"put","key":"' .. k .. '","value":"' .. value .. '"}')
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then not_ok = not_ok + 1 end
  -- Stop once every key has been sent and answered (a few duplicates at the end, from the
  -- connections still in flight, are harmless overwrites).
  if answered == n then
    if done_file then
      local f = io.open(done_file, 'w')
      if f then f:close() end
    end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format(
    'RESULT mode=fill rps=%.1f p50_us=%d p99_us=%d max_us=%d requests=%d non2xx=%d errors=%d\n',
    summary.requests / secs, latency:percentile(50), latency:percentile(99), latency.max,
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
