-- wrk script: random-key reads through Keel's kv plugin with a chosen consistency.
--   wrk ... -s keel-read.lua http://LEADER:PORT -- CONSISTENCY [KEYSPACE]
-- CONSISTENCY: linearizable (ReadIndex), lease (leader lease) or stale.
-- Same key shape as ../shared/peers/keel-kv.lua ("key-%012d" over KEYSPACE, default 10000),
-- so a keyspace prefilled by kv-load.sh's `fill` mode is read here.
-- done() prints: RESULT mode=... rps=... p50_us=... p99_us=... non2xx=...

local bodies = {}
local thread_counter = 0
local threads = {}
consistency = 'linearizable'

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set('tid', thread_counter)
  threads[thread_counter] = thread
end

function init(args)
  consistency = args[1] or 'linearizable'
  local keyspace = tonumber(args[2] or '10000')
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  for i = 0, keyspace - 1 do
    bodies[i + 1] = string.format('{"op":"get","key":"key-%012d"}', i)
  end
  wrk.method = 'POST'
  wrk.path = '/v1/plugins/kv/query?consistency=' .. consistency
  wrk.headers['Content-Type'] = 'application/json'
end

function request()
  return wrk.format(nil, nil, nil, bodies[math.random(1, #bodies)])
end

not_ok = 0
function response(status, headers, body)
  if status ~= 200 then not_ok = not_ok + 1 end
end

function done(summary, latency, requests)
  if threads[1] then consistency = threads[1]:get('consistency') or consistency end
  local e = summary.errors
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (tonumber(t:get('not_ok')) or 0) end
  io.write(string.format(
    'RESULT mode=%s requests=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d non2xx=%d err_timeout=%d\n',
    consistency, summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.max,
    math.max(e.status, bad), e.timeout))
end
