/*
 * core.h - the proxy's running state: the process (struct proxy), its
 * workers, client and upstream connections. Shared by the files of the
 * request path; nothing outside proxy/ needs it.
 */
#ifndef CUTOVER_PROXY_CORE_H
#define CUTOVER_PROXY_CORE_H

#include <pthread.h>

#include <event2/event.h>

#include "proxy/http.h"
#include "proxy/metrics.h"
#include "proxy/migrate.h"
#include "proxy/proxy.h"

/* Hands configs to workers (see struct slot). */
struct config_slot {
	struct slot slot;
};

struct worker;

struct proxy {
	struct config_slot config;
	struct flag_snapshot_slot flags;
	struct worker *workers;
	int nworkers;
	atomic_bool draining;
	atomic_int workers_done;
	int64_t started_us;
	int access_log_fd; /* -1: off; dup2'd over on reopen, so workers never see a change */
};

/* Circuit breaker of one route's service reads, per worker. */
struct breaker {
	int failures;        /* consecutive */
	int64_t open_until_us; /* 0: closed */
	bool probing;        /* half-open: one request is trying */
};

/* A connection to legacy or service: idle in its worker's pool, or
 * carrying one client's request. */
struct upstream_conn {
	struct worker *w;
	enum upstream_kind kind;
	int fd;
	struct event *ev;
	struct event *timer;
	bool connecting;
	bool can_read;
	bool can_write;
	bool reused; /* served a request before: may have been closed meanwhile */
	bool peer_closed; /* EPOLLRDHUP seen: read to the end */
	bool eof;         /* read returned 0 (or failed): nothing more will come */
	struct buf out;
	size_t out_sent;
	struct buf in;
	size_t parsed;  /* of in: consumed by the parser */
	size_t relayed; /* of in: copied to the client */
	bool head_written;
	http_parser parser;
	struct http_parse_target target;
	struct http_head head;
	struct client *client; /* NULL while idle */
	struct upstream_conn *next_idle;
};

struct upstream_pool {
	struct upstream_conn *idle; /* a stack */
	int nidle;
};

struct client;

/* Buffers of finished requests a worker keeps for the next ones (see
 * conn.c: spare_put). */
#define SPARE_BUFS 32
struct spare_bufs {
	struct buf b[SPARE_BUFS];
	int n;
};

/* The state of finished requests a worker keeps for the next ones (see
 * conn.c: request_take). */
#define SPARE_REQUESTS 32
struct request;
struct spare_requests {
	struct request *r[SPARE_REQUESTS];
	int n;
};

struct worker {
	struct proxy *proxy;
	int index;
	pthread_t thread;
	struct event_base *base;
	struct proxy_config *cfg;
	unsigned cfg_generation;
	struct flag_snapshot *flags;
	unsigned flags_generation;
	int *listen_fds;
	struct event **listen_events;
	size_t nlisten;
	struct upstream_pool pools[UPSTREAM_COUNT];
	struct breaker *breakers; /* one per route of cfg */
	size_t nbreakers;
	/* Taken by the worker only to swap breakers (on a reload), and by the
	 * admin thread to count the open ones: /metrics must never read an
	 * array the worker has freed. */
	pthread_mutex_t breakers_lock;
	struct client *clients;   /* a list, for draining */
	struct client *parked;    /* writes waiting for their user's migration */
	int nclients;
	int wakeup_fd;            /* an eventfd the main thread writes to: drain, or stop */
	struct event *wakeup;
	atomic_bool stop;         /* set by the main thread before it wakes the worker */
	struct event *drain_tick;
	struct worker_metrics metrics;
	struct spare_bufs spare_in;  /* clients' input buffers */
	struct spare_bufs spare_out; /* clients' output buffers */
	struct spare_requests spare_req;
	struct migrate_link *migrate;
	uint64_t rng;
};

/* worker.c */
int proxy_start_workers(struct proxy *p, char *err, size_t errlen);
void proxy_drain_workers(struct proxy *p);
void proxy_join_workers(struct proxy *p);
void worker_refresh(struct worker *w);

/* conn.c */
void client_accept(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen);
void client_drain(struct client *c);
struct client *client_next(struct client *c);
void client_user_migrated(struct worker *w, uint64_t h);
void client_close_all(struct worker *w);

/* conn.c, called by upstream.c */
void client_on_upstream(struct upstream_conn *u, short what);

/* upstream.c */
struct upstream_conn *upstream_get(struct worker *w, enum upstream_kind kind, char *err, size_t errlen);
void upstream_release(struct upstream_conn *u, bool reusable);
void upstream_arm_timer(struct upstream_conn *u, int ms);
void upstream_pool_clear(struct worker *w);

/* worker.c: the config slot */
void config_slot_init(struct config_slot *slot);
void config_slot_publish(struct config_slot *slot, struct proxy_config *cfg);
struct proxy_config *config_slot_acquire(struct config_slot *slot);

/* admin.c */
struct evhttp;
struct evhttp *admin_start(struct proxy *p, struct event_base *base, char *err, size_t errlen);

#endif
