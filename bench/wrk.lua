-- bench/wrk.lua - the wrk script of every bench/run measurement.
--
-- BENCH_USERS=N: request /api/users/u<i>, i cycling through 0..N-1, so a
-- run sends N distinct user ids (in order) before it repeats one;
-- otherwise the URL's own path, every time.
--
-- done() prints one line "BENCH {json}" for bench/run to pick up: wrk's
-- --latency table stops at p99 and the benchmark wants p99.9, and a JSON
-- line is easier to read reliably than wrk's human-readable summary.

local users = tonumber(os.getenv("BENCH_USERS") or "")

if users then
	local i = 0
	request = function()
		local path = "/api/users/u" .. i
		i = (i + 1) % users
		return wrk.format(nil, path)
	end
end

done = function(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		'BENCH {"requests": %d, "duration_s": %.6f, "socket_errors": %d, "non2xx": %d, ' ..
		'"p50_us": %d, "p99_us": %d, "p999_us": %d}\n',
		summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
		latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
