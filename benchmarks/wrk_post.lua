-- wrk script for benchmarks/serve_bench.py: POST the JSON body in the file named by $WRK_BODY.
--   WRK_BODY=body.json wrk -t2 -c8 -d10s --latency -s benchmarks/wrk_post.lua http://127.0.0.1:8080/predict
-- Non-2xx answers are counted by wrk itself ("Non-2xx or 3xx responses"); the benchmark treats any as a failure.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local path = os.getenv("WRK_BODY")
assert(path, "set WRK_BODY to the file holding the request body")
local f = assert(io.open(path, "rb"))
wrk.body = f:read("*a")
f:close()
