/*
 * metrics.c - the recording half of the proxy's metrics (the rendering
 * is in admin.c). A worker finds its series by linear probing on a hash
 * of the labels; series are never removed, so the admin thread can read
 * them while the worker adds more.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/metrics.h"

const double metrics_latency_bounds_s[METRICS_LATENCY_BUCKETS] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
};

/*
 * Route names outlive any one config (a series keeps its label after a
 * reload), so they are interned: copied once into a table that lives as
 * long as the process. Called when a config is loaded, and for "-" (no
 * route) by every request that matched none: that one is answered
 * without the lock and the search, which cost 260 instructions of a
 * pass-through request (callgrind).
 */
static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;
static char **interned;
static size_t ninterned;
static const char no_route[] = "-";

const char *metrics_intern(const char *name)
{
	if (name[0] == '-' && name[1] == '\0')
		return no_route;
	pthread_mutex_lock(&intern_lock);
	const char *found = NULL;
	for (size_t i = 0; i < ninterned && found == NULL; i++)
		if (strcmp(interned[i], name) == 0)
			found = interned[i];
	if (found == NULL) {
		interned = xrealloc(interned, (ninterned + 1) * sizeof(*interned));
		found = interned[ninterned++] = xstrdup(name);
	}
	pthread_mutex_unlock(&intern_lock);
	return found;
}

/* route must come from metrics_intern; upstream and reason are static. */
void metrics_count_request(struct worker_metrics *m, const char *route, const char *upstream, const char *reason,
			   int status)
{
	uintptr_t h = ((uintptr_t)route >> 4) ^ ((uintptr_t)upstream * 31) ^ ((uintptr_t)reason * 17) ^
		      (uintptr_t)status * 2654435761u;
	for (size_t probe = 0; probe < METRICS_SERIES; probe++) {
		struct request_series *s = &m->series[(h + probe) % METRICS_SERIES];
		const char *r = atomic_load_explicit(&s->route, memory_order_acquire);
		if (r == NULL) {
			s->upstream = upstream;
			s->reason = reason;
			s->status = status;
			atomic_store_explicit(&s->count, 1, memory_order_relaxed);
			/* Published last: the reader sees the labels complete. */
			atomic_store_explicit(&s->route, route, memory_order_release);
			return;
		}
		if (r == route && s->upstream == upstream && s->reason == reason && s->status == status) {
			atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
			return;
		}
	}
	atomic_fetch_add_explicit(&m->series_overflow, 1, memory_order_relaxed);
}

void metrics_observe_latency(struct worker_metrics *m, int kind, int64_t us)
{
	struct latency_histogram *h = &m->upstream_latency[kind];
	size_t b = 0;
	while (b < METRICS_LATENCY_BUCKETS && us > metrics_latency_bounds_s[b] * 1e6)
		b++;
	atomic_fetch_add_explicit(&h->buckets[b], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (unsigned long long)us, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}
