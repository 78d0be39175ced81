-- Wraps one of ../shared/peers' wrk scripts (its path in $KV_LUA) so that every request
-- carries `Authorization: $KV_AUTH` (keel-vs-etcd.sh -m secure: Keel's bearer token, etcd's
-- simple token). Everything else (load shape, RESULT line) is the wrapped script's.
dofile(os.getenv('KV_LUA'))
local wrapped_init = init
function init(args)
  wrapped_init(args)
  wrk.headers['Authorization'] = os.getenv('KV_AUTH')
end
