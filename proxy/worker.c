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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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
		struct breaker *fresh = xcalloc(w->cfg->nroutes + 1, sizeof(*fresh)), *stale;
		pthread_mutex_lock(&w->breakers_lock);
		stale = w->breakers;
		w->breakers = fresh;
		w->nbreakers = w->cfg->nroutes;
		pthread_mutex_unlock(&w->breakers_lock);
		free(stale);
		upstream_pool_clear(w);
		migrate_link_retarget(w->migrate, w->cfg);
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
	} else {
		/* Heads and bodies often leave in two writes: without this the
		 * second waits for the client's delayed ACK (about 40 ms). Set
		 * here, on Linux every accepted socket inherits it: one system
		 * call per connection saved. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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

/* Drain check, every 50 ms once draining: done when no client is left
 * and the migration link has sent what it owes (refreshes and created
 * users that nothing would enqueue again), unless Redis is down. */
static void worker_on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct worker *w = arg;
	if (w->nclients == 0 && migrate_settled(w->migrate))
		event_base_loopbreak(w->base);
}

/* Stops taking connections, closes the idle ones and lets the others
 * finish their request. */
static void worker_drain(struct worker *w)
{
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

/* Woken by the main thread (worker_wake): stop at once, or drain. */
static void worker_on_wakeup(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct worker *w = arg;
	uint64_t n;
	if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		log_warn("worker %d: wakeup: %s", w->index, strerror(errno));
	if (atomic_load(&w->stop))
		event_base_loopbreak(w->base);
	else if (w->drain_tick == NULL)
		worker_drain(w);
}

/*
 * The main thread's only way into a worker's loop: a write to the
 * worker's eventfd. The worker's event base is then its thread's alone
 * and needs no lock; with libevent's locking on, every event_add and
 * event_del took a mutex, about 3% of a request (callgrind).
 */
static void worker_wake(struct worker *w)
{
	uint64_t one = 1;
	if (w->wakeup != NULL && write(w->wakeup_fd, &one, sizeof(one)) < 0)
		log_warn("worker %d: cannot wake: %s", w->index, strerror(errno));
}

/* A worker's event base: without locks, see worker_wake. */
static struct event_base *worker_base_new(void)
{
	struct event_config *ec = event_config_new();
	event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
	struct event_base *base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
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
		w->base = worker_base_new();
		w->rng = (uint64_t)clock_realtime_us() * 2654435761u + (uint64_t)i * 0x9e3779b97f4a7c15u + 1;
		pthread_mutex_init(&w->breakers_lock, NULL);
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
		w->wakeup_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (w->wakeup_fd < 0 && rc == 0) {
			snprintf(err, errlen, "eventfd: %s", strerror(errno));
			rc = -1;
		} else if (w->wakeup_fd >= 0) {
			w->wakeup = event_new(w->base, w->wakeup_fd, EV_READ | EV_PERSIST, worker_on_wakeup, w);
			event_add(w->wakeup, NULL);
		}
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
		worker_wake(&p->workers[i]);
}

/* Stops whatever is still running (past the drain timeout), waits for
 * the threads and frees the workers (those that were set up: start-up
 * may have failed half way). */
void proxy_join_workers(struct proxy *p)
{
	for (int i = 0; i < p->nworkers; i++) {
		atomic_store(&p->workers[i].stop, true);
		worker_wake(&p->workers[i]);
	}
	for (int i = 0; i < p->nworkers; i++) {
		struct worker *w = &p->workers[i];
		if (w->base == NULL)
			continue;
		if (w->thread)
			pthread_join(w->thread, NULL);
		client_close_all(w);
		upstream_pool_clear(w);
		migrate_link_free(w->migrate);
		worker_stop_listening(w);
		if (w->drain_tick)
			event_free(w->drain_tick);
		if (w->wakeup != NULL) {
			event_free(w->wakeup);
			close(w->wakeup_fd);
		}
		free(w->listen_fds);
		free(w->listen_events);
		free(w->breakers);
		pthread_mutex_destroy(&w->breakers_lock);
		config_unref(w->cfg);
		flag_snapshot_unref(w->flags);
		event_base_free(w->base);
	}
	free(p->workers);
	p->workers = NULL;
}
