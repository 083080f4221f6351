-- wrk script of the gateway benchmarks: POST the JSON body in the file named by $WRK_BODY_FILE,
-- then print one parseable summary line (latencies in microseconds) for wrk_runner.py.
-- With $WRK_PACE_MS, each connection waits a random time (exponential, that mean, in whole
-- milliseconds as wrk counts them) before each request: a paced load below saturation
-- instead of as many requests as the server can answer.

local file = assert(io.open(assert(os.getenv("WRK_BODY_FILE"), "WRK_BODY_FILE is not set"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-client"

local pace = tonumber(os.getenv("WRK_PACE_MS") or "")
if pace then
  function setup(thread)
    thread:set("seed", math.random(1, 2 ^ 30))
  end

  function init(args)
    math.randomseed(seed or os.time())
  end

  function delay()
    return math.floor(-pace * math.log(1 - math.random()) + 0.5)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d"
      .. " timeout=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
