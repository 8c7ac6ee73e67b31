/*
 * admin.c - the admin listener (libevent's evhttp: speed does not matter
 * here): /healthz, /readyz, /metrics (Prometheus text) and /flags (the
 * snapshot in force). Everything but /healthz requires
 * "Authorization: Bearer <admin_token>" when a token is configured.
 */
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "proxy/core.h"

static void reply(struct evhttp_request *req, int status, const char *type, struct buf *body)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", type);
	evbuffer_add(evhttp_request_get_output_buffer(req), body->data ? body->data : "", body->len);
	evhttp_send_reply(req, status, status == 200 ? "OK" : status == 401 ? "Unauthorized" : "Service Unavailable",
			  NULL);
}

static bool authorized(struct evhttp_request *req, const struct proxy_config *cfg)
{
	if (cfg->admin_token == NULL)
		return true;
	const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	return v && strncmp(v, "Bearer ", 7) == 0 && strcmp(v + 7, cfg->admin_token) == 0;
}

static void render_metrics(struct proxy *p, const struct flag_snapshot *flags, struct buf *out)
{
	buf_puts(out, "# HELP cutover_requests_total Requests by route, upstream, reason and status.\n"
		      "# TYPE cutover_requests_total counter\n");
	for (int i = 0; i < p->nworkers; i++) {
		const struct worker_metrics *m = &p->workers[i].metrics;
		for (size_t k = 0; k < METRICS_SERIES; k++) {
			const struct request_series *s = &m->series[k];
			const char *route = atomic_load_explicit(&s->route, memory_order_acquire);
			if (route == NULL)
				continue;
			buf_printf(out,
				   "cutover_requests_total{worker=\"%d\",route=\"%s\",upstream=\"%s\",reason=\"%s\","
				   "status=\"%d\"} %llu\n",
				   i, route, s->upstream, s->reason, s->status,
				   (unsigned long long)atomic_load_explicit(&s->count, memory_order_relaxed));
		}
	}
	buf_puts(out, "# HELP cutover_upstream_seconds Upstream response time.\n"
		      "# TYPE cutover_upstream_seconds histogram\n");
	for (int kind = 0; kind < UPSTREAM_COUNT; kind++) {
		const char *name = upstream_kind_name((enum upstream_kind)kind);
		unsigned long long cumulative = 0, sum_us = 0, count = 0;
		for (size_t b = 0; b <= METRICS_LATENCY_BUCKETS; b++) {
			for (int i = 0; i < p->nworkers; i++)
				cumulative += atomic_load(&p->workers[i].metrics.upstream_latency[kind].buckets[b]);
			if (b < METRICS_LATENCY_BUCKETS)
				buf_printf(out, "cutover_upstream_seconds_bucket{upstream=\"%s\",le=\"%g\"} %llu\n", name,
					   metrics_latency_bounds_s[b], cumulative);
		}
		for (int i = 0; i < p->nworkers; i++) {
			sum_us += atomic_load(&p->workers[i].metrics.upstream_latency[kind].sum_us);
			count += atomic_load(&p->workers[i].metrics.upstream_latency[kind].count);
		}
		buf_printf(out, "cutover_upstream_seconds_bucket{upstream=\"%s\",le=\"+Inf\"} %llu\n", name, cumulative);
		buf_printf(out, "cutover_upstream_seconds_sum{upstream=\"%s\"} %.6f\n", name, sum_us / 1e6);
		buf_printf(out, "cutover_upstream_seconds_count{upstream=\"%s\"} %llu\n", name, count);
	}
	long long open = 0;
	unsigned long long errors[UPSTREAM_COUNT] = { 0 }, opened = 0, overflow = 0;
	int open_breakers = 0;
	int64_t now = clock_monotonic_us();
	for (int i = 0; i < p->nworkers; i++) {
		struct worker *w = &p->workers[i];
		open += atomic_load(&w->metrics.open_connections);
		opened += atomic_load(&w->metrics.breaker_opened);
		overflow += atomic_load(&w->metrics.series_overflow);
		for (int k = 0; k < UPSTREAM_COUNT; k++)
			errors[k] += atomic_load(&w->metrics.upstream_errors[k]);
		/* The lock keeps the array alive; its values are read while the
		 * worker may write them: a torn read only skews this gauge for
		 * one scrape. */
		pthread_mutex_lock(&w->breakers_lock);
		for (size_t r = 0; r < w->nbreakers; r++)
			open_breakers += w->breakers[r].open_until_us > now;
		pthread_mutex_unlock(&w->breakers_lock);
	}
	buf_printf(out, "# TYPE cutover_open_connections gauge\ncutover_open_connections %lld\n", open);
	buf_puts(out, "# TYPE cutover_upstream_errors_total counter\n");
	for (int k = 0; k < UPSTREAM_COUNT; k++)
		buf_printf(out, "cutover_upstream_errors_total{upstream=\"%s\"} %llu\n",
			   upstream_kind_name((enum upstream_kind)k), errors[k]);
	buf_printf(out, "# TYPE cutover_breaker_opened_total counter\ncutover_breaker_opened_total %llu\n", opened);
	buf_printf(out, "# HELP cutover_breakers_open Route breakers open now, summed over workers.\n"
			"# TYPE cutover_breakers_open gauge\ncutover_breakers_open %d\n",
		   open_breakers);
	buf_printf(out, "# TYPE cutover_metrics_series_overflow_total counter\ncutover_metrics_series_overflow_total %llu\n",
		   overflow);
	unsigned long long enqueued = 0, dropped = 0, merrors = 0, cache = 0, known = 0;
	int links_up = 0;
	for (int i = 0; i < p->nworkers; i++) {
		const struct worker_metrics *m = &p->workers[i].metrics;
		enqueued += atomic_load(&m->migrate_enqueued);
		dropped += atomic_load(&m->migrate_dropped);
		merrors += atomic_load(&m->migrate_errors);
		cache += atomic_load(&m->migrate_cache_bytes);
		known = atomic_load(&m->migrated_known) > known ? atomic_load(&m->migrated_known) : known;
		links_up += atomic_load(&m->migrate_link_up);
	}
	buf_printf(out,
		   "# HELP cutover_migrate_enqueued_total Users put on a migrate stream.\n"
		   "# TYPE cutover_migrate_enqueued_total counter\ncutover_migrate_enqueued_total %llu\n"
		   "# HELP cutover_migrate_dropped_total Enqueues not sent: backlog full or Redis down.\n"
		   "# TYPE cutover_migrate_dropped_total counter\ncutover_migrate_dropped_total %llu\n"
		   "# TYPE cutover_migrate_errors_total counter\ncutover_migrate_errors_total %llu\n"
		   "# HELP cutover_migrate_cache_bytes Memory of the seen caches and migrated-set copies.\n"
		   "# TYPE cutover_migrate_cache_bytes gauge\ncutover_migrate_cache_bytes %llu\n"
		   "# TYPE cutover_migrated_users_known gauge\ncutover_migrated_users_known %llu\n"
		   "# TYPE cutover_migrate_links_up gauge\ncutover_migrate_links_up %d\n",
		   enqueued, dropped, merrors, cache, known, links_up);
	buf_printf(out, "# TYPE cutover_flags_version gauge\ncutover_flags_version %lld\n", flags ? flags->version : -1);
	buf_printf(out, "# TYPE cutover_flags_age_seconds gauge\ncutover_flags_age_seconds %.3f\n",
		   flags ? (clock_realtime_us() - flags->loaded_at_us) / 1e6 : -1.0);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct proxy *p = arg;
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	struct proxy_config *cfg = config_slot_acquire(&p->config);
	struct flag_snapshot *flags = flag_slot_acquire(&p->flags);
	struct buf body;
	buf_init(&body);
	int status = 200;
	const char *type = "text/plain; charset=utf-8";
	if (path && strcmp(path, "/healthz") == 0) {
		buf_puts(&body, "ok\n");
	} else if (!authorized(req, cfg)) {
		status = 401;
		buf_puts(&body, "admin token required\n");
	} else if (path && strcmp(path, "/readyz") == 0) {
		bool waited = clock_monotonic_us() - p->started_us >= (int64_t)cfg->ready_wait_ms * 1000;
		status = flags || waited ? 200 : 503;
		buf_printf(&body, "%s\n", flags ? "ready: flags loaded"
					: waited ? "ready: no flags yet, routing everything to legacy"
						 : "not ready: waiting for the first flag snapshot");
	} else if (path && strcmp(path, "/metrics") == 0) {
		type = "text/plain; version=0.0.4";
		render_metrics(p, flags, &body);
	} else if (path && strcmp(path, "/flags") == 0) {
		type = "application/json";
		buf_printf(&body, "{\"version\":%lld,\"flags\":[", flags ? flags->version : -1);
		for (size_t i = 0; flags && i < flags->nflags; i++) {
			if (i)
				buf_putc(&body, ',');
			flag_encode(flags->flags[i], &body);
		}
		buf_puts(&body, "]}\n");
	} else {
		evhttp_send_error(req, 404, NULL);
		goto out;
	}
	reply(req, status, type, &body);
out:
	buf_free(&body);
	flag_snapshot_unref(flags);
	config_unref(cfg);
}

struct evhttp *admin_start(struct proxy *p, struct event_base *base, char *err, size_t errlen)
{
	struct proxy_config *cfg = config_slot_acquire(&p->config);
	struct evhttp *http = evhttp_new(base);
	if (evhttp_bind_socket(http, cfg->admin.host, (ev_uint16_t)cfg->admin.port) < 0) {
		snprintf(err, errlen, "cannot listen on %s:%d for the admin listener", cfg->admin.host, cfg->admin.port);
		evhttp_free(http);
		http = NULL;
	} else {
		evhttp_set_gencb(http, on_request, p);
	}
	config_unref(cfg);
	return http;
}
