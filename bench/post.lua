-- wrk script: POST one fixed Open Inference Protocol request and print a JSON summary.
-- The body file is named by the BENCH_BODY environment variable. No response()
-- callback on purpose: defining one makes wrk parse every response in Lua, which
-- would make the load generator, not the server, the bottleneck. Non-2xx answers
-- are still counted by wrk itself (summary.errors.status).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"requests":%d,"duration_us":%d,' ..
    '"err_status":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d}\n',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout))
end
