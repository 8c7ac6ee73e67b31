/*
 * worker.c - the proxy's worker threads. Each has its own event loop, its
 * own SO_REUSEPORT listening sockets (the kernel spreads connections
 * across workers), its own upstream pools and breakers, and holds its
 * own references to the config and the flag snapshot, refreshed with one
 * atomic load per request. Nothing on the request path is shared between
 * workers but those two immutable objects.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/core.h"

static void *config_ref_any(void *cfg)
{
	return config_ref(cfg);
}

static void config_unref_any(void *cfg)
{
	config_unref(cfg);
}

void config_slot_init(struct config_slot *slot)
{
	slot_init(&slot->slot, config_ref_any, config_unref_any);
}

void config_slot_publish(struct config_slot *slot, struct proxy_config *cfg)
{
	slot_publish(&slot->slot, cfg);
}

struct proxy_config *config_slot_acquire(struct config_slot *slot)
{
	return slot_acquire(&slot->slot);
}

/*
 * Picks up a new config or flag snapshot, if one was published: one
 * atomic load each when nothing changed. A new config resets the
 * breakers (routes may have moved) and empties the upstream pools
 * (addresses may have changed).
 */
void worker_refresh(struct worker *w)
{
	struct proxy *p = w->proxy;
	w->flags = flag_slot_refresh(&p->flags, w->flags, &w->flags_generation);
	struct proxy_config *old = w->cfg;
	w->cfg = slot_refresh(&p->config.slot, w->cfg, &w->cfg_generation);
	if (w->cfg != old) {
		free(w->breakers);
		w->breakers = xcalloc(w->cfg->nroutes + 1, sizeof(*w->breakers));
		upstream_pool_clear(w);
	}
}

static void worker_on_accept(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct worker *w = arg;
	/* Level-triggered listener: take a bounded batch, the rest next turn,
	 * so one busy listener cannot starve the connections already open. */
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage addr;
		socklen_t len = sizeof(addr);
		int cfd = accept4(fd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				log_warn("worker %d: accept: %s", w->index, strerror(errno));
			return;
		}
		client_accept(w, cfd, (struct sockaddr *)&addr, len);
	}
}

static int listen_on(const struct listen_addr *a, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	char port[8];
	snprintf(port, sizeof(port), "%d", a->port);
	int rc = getaddrinfo(a->host, port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s", a->host, a->port, gai_strerror(rc));
		return -1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 511) < 0) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s", a->host, a->port, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static void worker_stop_listening(struct worker *w)
{
	for (size_t i = 0; i < w->nlisten; i++) {
		if (w->listen_events[i]) {
			event_free(w->listen_events[i]);
			w->listen_events[i] = NULL;
			close(w->listen_fds[i]);
		}
	}
}

/* Drain check, every 50 ms once draining: done when no client is left. */
static void worker_on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct worker *w = arg;
	if (w->nclients == 0)
		event_base_loopbreak(w->base);
}

/* Woken by the main thread: drain. */
static void worker_on_wakeup(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct worker *w = arg;
	worker_stop_listening(w);
	for (struct client *c = w->clients, *next; c; c = next) {
		next = client_next(c);
		client_drain(c);
	}
	struct timeval tick = { 0, 50000 };
	struct event *ev = event_new(w->base, -1, EV_PERSIST, worker_on_drain_tick, w);
	event_add(ev, &tick);
	w->drain_tick = ev;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	event_base_dispatch(w->base);
	atomic_fetch_add(&w->proxy->workers_done, 1);
	return NULL;
}

/*
 * Creates and starts p->nworkers workers with the current config. Returns
 * 0, or -1 with the reason in err (a port that cannot be bound: nothing
 * is left running then).
 */
int proxy_start_workers(struct proxy *p, char *err, size_t errlen)
{
	struct proxy_config *cfg = config_slot_acquire(&p->config);
	p->nworkers = cfg->workers;
	p->workers = xcalloc((size_t)p->nworkers, sizeof(*p->workers));
	int rc = 0;
	for (int i = 0; i < p->nworkers && rc == 0; i++) {
		struct worker *w = &p->workers[i];
		w->proxy = p;
		w->index = i;
		w->base = event_base_new();
		w->rng = (uint64_t)clock_realtime_us() * 2654435761u + (uint64_t)i * 0x9e3779b97f4a7c15u + 1;
		worker_refresh(w);
		w->nlisten = cfg->nlisten;
		w->listen_fds = xcalloc(cfg->nlisten, sizeof(int));
		w->listen_events = xcalloc(cfg->nlisten, sizeof(struct event *));
		for (size_t k = 0; k < cfg->nlisten && rc == 0; k++) {
			w->listen_fds[k] = listen_on(&cfg->listen[k], err, errlen);
			if (w->listen_fds[k] < 0) {
				rc = -1;
				break;
			}
			w->listen_events[k] = event_new(w->base, w->listen_fds[k], EV_READ | EV_PERSIST, worker_on_accept, w);
			event_add(w->listen_events[k], NULL);
		}
		w->wakeup = event_new(w->base, -1, 0, worker_on_wakeup, w);
		w->migrate = migrate_link_new(w);
	}
	config_unref(cfg);
	for (int i = 0; i < p->nworkers && rc == 0; i++)
		pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
	return rc;
}

/* Asks every worker to drain (from the main thread). */
void proxy_drain_workers(struct proxy *p)
{
	for (int i = 0; i < p->nworkers; i++)
		event_active(p->workers[i].wakeup, EV_READ, 0);
}

/* Stops whatever is still running (past the drain timeout), waits for
 * the threads and frees the workers. */
void proxy_join_workers(struct proxy *p)
{
	for (int i = 0; i < p->nworkers; i++)
		event_base_loopbreak(p->workers[i].base);
	for (int i = 0; i < p->nworkers; i++) {
		struct worker *w = &p->workers[i];
		if (w->thread)
			pthread_join(w->thread, NULL);
		client_close_all(w);
		upstream_pool_clear(w);
		migrate_link_free(w->migrate);
		worker_stop_listening(w);
		if (w->drain_tick)
			event_free(w->drain_tick);
		event_free(w->wakeup);
		free(w->listen_fds);
		free(w->listen_events);
		free(w->breakers);
		config_unref(w->cfg);
		flag_snapshot_unref(w->flags);
		event_base_free(w->base);
	}
	free(p->workers);
	p->workers = NULL;
}
