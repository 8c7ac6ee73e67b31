/*
 * upstream.c - connections to legacy and service: non-blocking connect,
 * and a per-worker pool of idle keep-alive connections, so that a
 * proxied request usually costs no connect at all.
 *
 * Each socket is registered once, edge-triggered and persistent, for
 * both directions and the peer's close; the event is never changed afterwards, which is what
 * keeps epoll_ctl off the request path.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/core.h"

static void upstream_free(struct upstream_conn *u)
{
	event_free(u->ev);
	event_free(u->timer);
	close(u->fd);
	buf_free(&u->out);
	buf_free(&u->in);
	http_head_free(&u->head);
	free(u);
}

/* An idle connection that becomes readable was closed by the upstream
 * (or sent something unasked): either way it is no longer usable. */
static void upstream_drop_idle(struct upstream_conn *u)
{
	struct upstream_pool *pool = &u->w->pools[u->kind];
	for (struct upstream_conn **p = &pool->idle; *p; p = &(*p)->next_idle) {
		if (*p == u) {
			*p = u->next_idle;
			pool->nidle--;
			break;
		}
	}
	upstream_free(u);
}

static void upstream_on_event(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	struct upstream_conn *u = arg;
	if (u->client != NULL)
		client_on_upstream(u, what);
	else if (what & (EV_READ | EV_CLOSED | EV_TIMEOUT))
		upstream_drop_idle(u);
}

static void upstream_on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct upstream_conn *u = arg;
	if (u->client != NULL)
		client_on_upstream(u, EV_TIMEOUT);
}

void upstream_arm_timer(struct upstream_conn *u, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(u->timer, &tv);
}

static int upstream_connect(struct upstream_conn *u, const struct upstream_config *uc, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	char port[8];
	snprintf(port, sizeof(port), "%d", uc->port);
	/* Addresses in the config are numeric or resolved here once per
	 * connect; a keep-alive pool makes connects rare. */
	int rc = getaddrinfo(uc->host, port, &hints, &ai);
	if (rc != 0) {
		snprintf(err, errlen, "cannot resolve %s: %s", uc->host, gai_strerror(rc));
		return -1;
	}
	u->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (u->fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		freeaddrinfo(ai);
		return -1;
	}
	int one = 1;
	setsockopt(u->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	rc = connect(u->fd, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	if (rc < 0 && errno != EINPROGRESS) {
		snprintf(err, errlen, "connect to %s:%d: %s", uc->host, uc->port, strerror(errno));
		close(u->fd);
		return -1;
	}
	u->connecting = rc < 0;
	return 0;
}

/*
 * A connection to the upstream of kind: an idle one from the pool, or a
 * new one (maybe still connecting). Returns NULL with the reason in err
 * when even the connect could not start. The caller attaches a client.
 */
struct upstream_conn *upstream_get(struct worker *w, enum upstream_kind kind, char *err, size_t errlen)
{
	struct upstream_pool *pool = &w->pools[kind];
	if (pool->idle != NULL) {
		struct upstream_conn *u = pool->idle;
		pool->idle = u->next_idle;
		pool->nidle--;
		u->next_idle = NULL;
		u->reused = true;
		return u;
	}
	struct upstream_conn *u = xcalloc(1, sizeof(*u));
	u->w = w;
	u->kind = kind;
	if (upstream_connect(u, &w->cfg->upstreams[kind], err, errlen) < 0) {
		free(u);
		return NULL;
	}
	buf_init(&u->out);
	buf_init(&u->in);
	u->ev = event_new(w->base, u->fd, EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET, upstream_on_event, u);
	u->timer = evtimer_new(w->base, upstream_on_timer, u);
	u->can_write = !u->connecting;
	event_add(u->ev, NULL);
	return u;
}

/*
 * Detaches u from its client. A reusable connection (its response read
 * to the end, keep-alive on both sides) goes back to the pool if there is
 * room; anything else is closed.
 */
void upstream_release(struct upstream_conn *u, bool reusable)
{
	struct upstream_pool *pool = &u->w->pools[u->kind];
	u->client = NULL;
	evtimer_del(u->timer);
	if (!reusable || pool->nidle >= u->w->cfg->upstreams[u->kind].keepalive) {
		upstream_free(u);
		return;
	}
	buf_reset(&u->out);
	u->out_sent = 0;
	buf_reset(&u->in);
	u->parsed = 0;
	u->next_idle = pool->idle;
	pool->idle = u;
	pool->nidle++;
}

void upstream_pool_clear(struct worker *w)
{
	for (int k = 0; k < UPSTREAM_COUNT; k++) {
		while (w->pools[k].idle != NULL) {
			struct upstream_conn *u = w->pools[k].idle;
			w->pools[k].idle = u->next_idle;
			upstream_free(u);
		}
		w->pools[k].nidle = 0;
	}
}
