/*
 * metrics.h - request counters and latency histograms, one set per
 * worker: only the worker writes them (relaxed atomics, no lock on the
 * request path), the admin thread sums them when scraped.
 */
#ifndef CUTOVER_PROXY_METRICS_H
#define CUTOVER_PROXY_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/common.h"

#define METRICS_SERIES 512 /* distinct (route, upstream, reason, status) per worker */
#define METRICS_LATENCY_BUCKETS 12

struct request_series {
	_Atomic(const char *) route; /* NULL: free slot; names live in a never-freed intern table */
	const char *upstream;        /* static strings */
	const char *reason;
	int status;
	atomic_ullong count;
};

struct latency_histogram {
	atomic_ullong buckets[METRICS_LATENCY_BUCKETS + 1]; /* the last is +Inf */
	atomic_ullong sum_us;
	atomic_ullong count;
};

struct worker_metrics {
	struct request_series series[METRICS_SERIES];
	atomic_ullong series_overflow;
	struct latency_histogram upstream_latency[2]; /* by upstream_kind */
	atomic_llong open_connections;
	atomic_ullong upstream_errors[2];
	atomic_ullong breaker_opened;
	atomic_ullong migrate_enqueued; /* script calls that put a user on a stream */
	atomic_ullong migrate_dropped;  /* not sent: backlog full or Redis down */
	atomic_ullong migrate_errors;   /* refused by Redis */
	atomic_ullong migrate_cache_bytes; /* gauges, set by the worker each second */
	atomic_ullong migrated_known;
	atomic_int migrate_link_up;
};

extern const double metrics_latency_bounds_s[METRICS_LATENCY_BUCKETS];
const char *metrics_intern(const char *name);
void metrics_count_request(struct worker_metrics *m, const char *route, const char *upstream, const char *reason,
			   int status);
void metrics_observe_latency(struct worker_metrics *m, int kind, int64_t us);

#endif
