/*
 * conn.c - one client connection: read a request, decide where it goes,
 * stream it to legacy or service, stream the answer back, and keep the
 * connection for the next request.
 *
 * Every socket is registered once, edge-triggered and persistent, for
 * reading, writing and the peer's close (EPOLLRDHUP). An event only says
 * "you may read" or "you may write"; the state machine remembers it
 * (can_read, can_write) and does as much as it can until the kernel says
 * EAGAIN - or until a read comes back short: the socket is then empty,
 * and the next byte to arrive raises a new edge. That saves the EAGAIN
 * read after every request; a close that came with the last bytes is
 * still seen, because EPOLLRDHUP is reported with them (peer_closed).
 * No epoll_ctl per request, no FIONREAD, no allocation per header: the
 * head is parsed in place and forwarded as byte ranges of the
 * connection's buffer.
 *
 * States of a client:
 *   CLIENT_HEAD   reading a request head (or idle between requests)
 *   CLIENT_BODY   buffering a body the route needs for the user id
 *   CLIENT_WAIT   a write waits for its user's migration (migrate-first)
 *   CLIENT_PROXY  the request goes to an upstream, the response comes back
 *   CLIENT_CLOSING  writing what is left, then closing
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/core.h"

#define READ_CHUNK 16384
#define FORWARD_HIGH_WATER (256 * 1024) /* stop reading one side while the other lags */
/* What a response head may gain on its way: X-Cutover-Route, X-Request-Id
 * (64 bytes at most) and Connection. */
#define RESPONSE_HEAD_EXTRA 160

/* Appends string literal s: its length is known when compiling, and
 * buf_puts' strlen was a tenth of writing the heads (callgrind). */
#define BUF_PUT_LITERAL(b, s) buf_append((b), "" s, sizeof(s) - 1)

enum client_state { CLIENT_HEAD, CLIENT_BODY, CLIENT_WAIT, CLIENT_PROXY, CLIENT_CLOSING };

/*
 * What a client holds while it has a request in hand, from the first
 * byte of its head to the end of its response: the parser, the head's
 * index, the decision and the strings the log needs. Between requests
 * a kept-alive client holds none: inline in struct client it made an
 * idle connection cost 1,830 bytes instead of 551 (bench/idle_conns.py).
 * The worker keeps those of finished requests for the next ones
 * (request_take), so that the hot path does not pay a malloc for it.
 */
struct request {
	/* Cleared by client_begin_request, up to id: */
	int64_t start_us;
	int64_t upstream_start_us;
	int64_t upstream_us;
	uint64_t bytes_out;
	uint64_t body_dropped; /* body bytes forwarded and dropped from in */
	size_t user_len;
	/* What the request needs of its route, copied: a reload may free the
	 * config while the request is in flight. */
	const char *route;    /* interned label, or NULL */
	const char *reason;
	unsigned method;
	int route_index;
	unsigned cfg_generation;
	int breaker_failures;
	int breaker_open_ms;
	enum upstream_kind upstream;
	int bucket; /* -1: not bucketed */
	int status;
	bool keep_alive;
	bool expect_continue;
	bool read_fallback;
	bool fallback_allowed;
	bool decided; /* upstream holds a decision (not a request the proxy refused) */
	bool route_migrates; /* the route has migrate = true */
	bool dechunk;       /* relay the decoded body (HTTP/1.0 client, chunked response) */
	bool capture_created; /* create = legacy-first: find the new user's id in the response */
	bool continue_sent; /* the proxy answered Expect: 100-continue itself */
	bool response_started; /* response bytes reached the client's buffer */
	bool body_streamed; /* body bytes were sent and dropped: not replayable */
	/* The strings: a new request clears only their first byte (clearing
	 * all of it was 110 instructions per request, callgrind). */
	char id[65];
	char user[ROUTE_USER_ID_MAX + 1];
	char flag[FLAG_NAME_MAX + 1]; /* "" when none */
	char created_field[FLAG_NAME_MAX + 1]; /* capture_created's JSON field, or "" for the Location header */
	char created[ROUTE_USER_ID_MAX + 1];    /* the id from Location */
	/* Set where they are used: */
	struct client *park_next; /* in the worker's list of waiting writes */
	uint64_t wait_hash;       /* the user it waits for */
	int wait_timeout_status;  /* 0: go to legacy when the wait ends */
	http_parser parser;
	struct http_parse_target target;
	struct buf body;     /* decoded, when the route reads the user id from it */
	struct buf captured; /* a create's response body, when the new id is in it */
	struct http_head head;
};

struct client {
	struct worker *w;
	struct client *prev, *next;
	struct event *ev;
	struct event *timer;
	struct buf in;
	size_t parsed;    /* of in: consumed by the parser */
	size_t forwarded; /* of in: copied to the upstream */
	struct buf out;
	size_t out_sent;
	uint64_t moved;     /* bytes moved on either socket: client_drive's measure of progress */
	struct upstream_conn *up;
	struct request *req; /* NULL between requests (client_take_input, client_finish_request) */
	int fd;
	enum client_state state;
	bool can_read;
	bool can_write;
	bool eof;
	bool peer_closed; /* EPOLLRDHUP seen: read to the end */
	bool draining;
	char peer[INET6_ADDRSTRLEN];
	max_align_t events[];     /* where ev and timer live (client_accept) */
};

static void client_drive(struct client *c);
static void client_dispatch(struct client *c);
static void client_upstream_failed(struct client *c, struct upstream_conn *u, int status, const char *why);

/* ---- spare buffers -------------------------------------------------------- */

/*
 * An idle keep-alive connection gives its buffers back (thousands of
 * idle clients should cost their sockets, not 16 KiB each), and the
 * next request takes them again. From malloc, that was a 16 KiB malloc
 * and free and a small one per request, about 600 instructions, 4% of a
 * pass-through request (callgrind); the worker keeps some of them
 * instead, enough for a few dozen busy connections. Bigger buffers (a
 * long head, a buffered body) go back to malloc.
 */
#define SPARE_MAX_CAP (READ_CHUNK + 1)

/* Empties b, keeping its memory in s if it is of the usual size and s
 * has room, else freeing it. */
static void spare_put(struct spare_bufs *s, struct buf *b)
{
	if (b->data != NULL && b->cap <= SPARE_MAX_CAP && s->n < SPARE_BUFS) {
		s->b[s->n++] = *b;
		buf_init(b);
		return;
	}
	buf_free(b);
}

/* Gives b, which has no memory, a spare from s if there is one. */
static void spare_take(struct spare_bufs *s, struct buf *b)
{
	if (b->data != NULL || s->n == 0)
		return;
	*b = s->b[--s->n];
	buf_reset(b);
}

static void spare_free(struct spare_bufs *s)
{
	while (s->n > 0)
		buf_free(&s->b[--s->n]);
}

/* ---- the request's state ------------------------------------------------- */

/* Makes c's request state (c->req) ready for a new request. */
static void client_begin_request(struct client *c)
{
	struct request *r = c->req;
	http_parser_init(&r->parser, HTTP_REQUEST);
	r->parser.data = &r->target;
	http_head_reset(&r->head);
	r->target = (struct http_parse_target){ &r->head, c->in.data, NULL, false };
	buf_reset(&r->body);
	memset(r, 0, offsetof(struct request, id));
	r->id[0] = r->user[0] = r->flag[0] = r->created_field[0] = r->created[0] = '\0';
	r->bucket = -1;
}

/*
 * Gives c, which has none, the state for a new request: one its worker
 * kept, or a new one. Called when the request's first bytes arrive.
 * From malloc, this would be a malloc and a free of 1.2 KB per request
 * on a kept-alive connection; a pop and a push cost a few instructions.
 */
static void request_take(struct client *c)
{
	struct spare_requests *s = &c->w->spare_req;
	if (s->n > 0) {
		c->req = s->r[--s->n];
	} else {
		c->req = xcalloc(1, sizeof(*c->req));
		c->req->head.fields = c->req->head.inline_fields;
		buf_init(&c->req->body);
		buf_init(&c->req->captured);
	}
	client_begin_request(c);
}

/* Takes c's request state, if it has one, and keeps it for another
 * client of the worker if there is room, else frees it. What it
 * allocated (body, captured body, a long head's index) is freed: a
 * spare must not hold more than its own size. Most requests allocated
 * none of these, and the tests save three calls per request (30
 * instructions, callgrind). */
static void request_put(struct client *c)
{
	struct request *r = c->req;
	struct spare_requests *s = &c->w->spare_req;
	if (r == NULL)
		return;
	c->req = NULL;
	if (r->body.data != NULL)
		buf_free(&r->body);
	if (r->captured.data != NULL)
		buf_free(&r->captured);
	if (r->head.fields != r->head.inline_fields)
		http_head_free(&r->head);
	if (s->n < SPARE_REQUESTS)
		s->r[s->n++] = r;
	else
		free(r);
}

static void request_spare_free(struct spare_requests *s)
{
	while (s->n > 0)
		free(s->r[--s->n]);
}

/* ---- lifetime ------------------------------------------------------------ */

static void client_unpark(struct client *c)
{
	for (struct client **p = &c->w->parked; *p; p = &(*p)->req->park_next) {
		if (*p == c) {
			*p = c->req->park_next;
			break;
		}
	}
}

static void client_free(struct client *c)
{
	struct worker *w = c->w;
	if (c->state == CLIENT_WAIT)
		client_unpark(c);
	if (c->up)
		upstream_release(c->up, false);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	w->nclients--;
	atomic_fetch_sub_explicit(&w->metrics.open_connections, 1, memory_order_relaxed);
	event_del(c->ev);
	event_del(c->timer);
	close(c->fd);
	spare_put(&w->spare_in, &c->in);
	spare_put(&w->spare_out, &c->out);
	request_put(c);
	free(c);
}

static void client_arm_timer(struct client *c)
{
	int ms = c->w->cfg->client_timeout_ms;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
}

static void client_on_event(evutil_socket_t fd, short what, void *arg);
static void client_on_timer(evutil_socket_t fd, short what, void *arg);

/* Writes IPv4 address a as inet_ntop does ("192.0.2.1") into out, which
 * has room for INET_ADDRSTRLEN. inet_ntop formats with sprintf: about
 * 1,700 instructions, 7% of a request without keep-alive (callgrind). */
static void format_ipv4(const struct in_addr *a, char *out)
{
	const unsigned char *b = (const unsigned char *)&a->s_addr;
	for (int i = 0; i < 4; i++) {
		if (b[i] >= 100)
			*out++ = (char)('0' + b[i] / 100);
		if (b[i] >= 10)
			*out++ = (char)('0' + b[i] / 10 % 10);
		*out++ = (char)('0' + b[i] % 10);
		*out++ = i < 3 ? '.' : '\0';
	}
}

/* The room one event takes at the end of struct client, asked of
 * libevent at run time as its manual says, so that a newer libevent
 * with a bigger struct event still fits. */
static size_t client_event_room(void)
{
	size_t align = _Alignof(max_align_t);
	return (event_get_struct_event_size() + align - 1) / align * align;
}

/*
 * A new client on accepted socket fd. Its two events live at the end
 * of its struct (event_assign), not in allocations of their own:
 * event_new and event_free cost two mallocs and two frees per
 * connection, 4% of a request without keep-alive (callgrind).
 */
void client_accept(struct worker *w, int fd, const struct sockaddr *addr, socklen_t addrlen)
{
	(void)addrlen;
	size_t room = client_event_room();
	struct client *c = xcalloc(1, sizeof(*c) + 2 * room);
	c->ev = (struct event *)c->events;
	c->timer = (struct event *)((char *)c->events + room);
	c->w = w;
	c->fd = fd; /* TCP_NODELAY: inherited from the listener (worker.c) */
	if (addr->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, c->peer, sizeof(c->peer));
	else
		format_ipv4(&((const struct sockaddr_in *)addr)->sin_addr, c->peer);
	buf_init(&c->in);
	buf_init(&c->out);
	c->state = CLIENT_HEAD; /* no request state until its first bytes (client_take_input) */
	event_assign(c->ev, w->base, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET, client_on_event, c);
	evtimer_assign(c->timer, w->base, client_on_timer, c);
	c->next = w->clients;
	if (w->clients)
		w->clients->prev = c;
	w->clients = c;
	w->nclients++;
	atomic_fetch_add_explicit(&w->metrics.open_connections, 1, memory_order_relaxed);
	event_add(c->ev, NULL);
	client_arm_timer(c);
}

/* ---- replies made by the proxy itself -------------------------------------- */

static const char *status_text(int status)
{
	switch (status) {
	case 400: return "Bad Request";
	case 408: return "Request Timeout";
	case 413: return "Content Too Large";
	case 431: return "Request Header Fields Too Large";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	}
	return "Error";
}

static void access_log_write(struct client *c);
static void client_request_id(struct client *c);

/*
 * Answers the request in hand with status and a small JSON body naming
 * the reason and the request id, then closes: after a bad request or a
 * failed upstream the stream's framing can no longer be trusted.
 */
static void client_fail(struct client *c, int status, const char *reason)
{
	struct request *r = c->req;
	if (r->response_started) {
		/* Too late for a status: the client has part of a response. */
		r->status = r->status ? r->status : status;
		c->state = CLIENT_CLOSING;
		c->out_sent = c->out.len;
		access_log_write(c);
		return;
	}
	if (r->id[0] == '\0')
		client_request_id(c); /* refused before its head was complete */
	struct buf body;
	buf_init(&body);
	buf_printf(&body, "{\"error\":");
	json_put_string(&body, reason, strlen(reason));
	buf_printf(&body, ",\"status\":%d,\"request_id\":\"%s\"}\n", status, r->id);
	buf_printf(&c->out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
			    "Connection: close\r\nX-Request-Id: %s\r\n\r\n",
		   status, status_text(status), body.len, r->id);
	if (r->method != METHOD_HEAD)
		buf_append(&c->out, body.data, body.len);
	buf_free(&body);
	r->status = status;
	r->response_started = true;
	if (r->reason == NULL)
		r->reason = "error";
	if (c->up) {
		upstream_release(c->up, false);
		c->up = NULL;
	}
	c->state = CLIENT_CLOSING;
	access_log_write(c);
}

/* ---- access log and metrics --------------------------------------------------- */

static void access_log_write(struct client *c)
{
	struct request *r = c->req;
	const char *route = r->route ? r->route : metrics_intern("-");
	const char *upstream = r->decided ? upstream_kind_name(r->upstream) : "-";
	metrics_count_request(&c->w->metrics, route, upstream, r->reason ? r->reason : "error",
			      r->status);
	int fd = c->w->proxy->access_log_fd;
	if (fd < 0)
		return;
	char when[32];
	format_utc_ms(clock_realtime_us() / 1000, when, sizeof(when));
	struct buf line;
	buf_init(&line);
	buf_printf(&line, "{\"time\":\"%s\",\"request_id\":\"%s\",\"client\":\"%s\",\"method\":", when, r->id, c->peer);
	const char *method = http_method_str(r->parser.method);
	json_put_string(&line, method, strlen(method));
	BUF_PUT_LITERAL(&line, ",\"path\":");
	json_put_string(&line, c->in.data + r->head.url.off, r->head.url.len);
	BUF_PUT_LITERAL(&line, ",\"user\":");
	if (r->user_len)
		json_put_string(&line, r->user, r->user_len);
	else
		BUF_PUT_LITERAL(&line, "null");
	buf_printf(&line, ",\"route\":");
	json_put_string(&line, route, strlen(route));
	buf_printf(&line, ",\"decision\":\"%s\",\"reason\":\"%s\",\"flag\":", upstream, r->reason ? r->reason : "error");
	if (r->flag[0])
		json_put_string(&line, r->flag, strlen(r->flag));
	else
		BUF_PUT_LITERAL(&line, "null");
	buf_printf(&line, ",\"bucket\":%d,\"status\":%d,\"bytes\":%llu,\"upstream_ms\":%.3f,\"total_ms\":%.3f}\n",
		   r->bucket, r->status, (unsigned long long)r->bytes_out, r->upstream_us / 1000.0,
		   (clock_monotonic_us() - r->start_us) / 1000.0);
	/* One write per line on an O_APPEND descriptor: lines from several
	 * workers never interleave, and no lock is needed. */
	if (write(fd, line.data, line.len) < 0)
		log_debug("access log write failed: %s", strerror(errno));
	buf_free(&line);
}

/* ---- deciding -------------------------------------------------------------------- */

static bool secrets_equal(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);
	unsigned char diff = alen != blen;
	for (size_t i = 0; i < alen && i < blen; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

/* "service SECRET" or "legacy SECRET" with the configured secret forces
 * the upstream. Returns whether it did. */
static bool client_forced(struct client *c, const struct proxy_config *cfg)
{
	size_t len;
	const struct http_head *h = &c->req->head;
	const char *v = cfg->force_header ? http_header_value(h, c->in.data, cfg->force_header, &len) : NULL;
	if (v == NULL)
		return false;
	for (int k = 0; k < UPSTREAM_COUNT; k++) {
		const char *name = upstream_kind_name((enum upstream_kind)k);
		size_t n = strlen(name);
		if (len > n + 1 && strncasecmp(v, name, n) == 0 && v[n] == ' ' &&
		    secrets_equal(v + n + 1, len - n - 1, cfg->force_secret)) {
			c->req->upstream = (enum upstream_kind)k;
			c->req->reason = "force";
			return true;
		}
	}
	return false;
}

/* The breaker of the route's service reads: may this read go there? */
static bool breaker_allows(struct worker *w, int route_index)
{
	struct breaker *b = &w->breakers[route_index];
	if (b->open_until_us == 0)
		return true;
	if (clock_monotonic_us() < b->open_until_us || b->probing)
		return false;
	b->probing = true; /* half-open: this request is the probe */
	return true;
}

static void breaker_record(struct client *c, bool ok)
{
	const struct request *r = c->req;
	if (!r->read_fallback || r->upstream != UPSTREAM_SERVICE || !(r->method & METHODS_READ) ||
	    r->cfg_generation != c->w->cfg_generation)
		return; /* not a guarded read, or its config was replaced since */
	struct breaker *b = &c->w->breakers[r->route_index];
	if (ok) {
		*b = (struct breaker){ 0, 0, false };
		return;
	}
	b->probing = false;
	if (++b->failures >= r->breaker_failures || b->open_until_us != 0) {
		if (b->open_until_us == 0)
			atomic_fetch_add_explicit(&c->w->metrics.breaker_opened, 1, memory_order_relaxed);
		b->open_until_us = clock_monotonic_us() + (int64_t)r->breaker_open_ms * 1000;
		log_warn("route %s: service breaker open for %d ms after %d failures", r->route, r->breaker_open_ms,
			 b->failures);
	}
}

/* Copies string src into dst of size n (> 0), cut to fit: what
 * snprintf(dst, n, "%s", src) does, without its formatting machinery
 * (600 instructions per request for the flag's name, callgrind). */
static void copy_string(char *dst, size_t n, const char *src)
{
	size_t len = strnlen(src, n - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

/* The request line of c as route.c sees it: method, path and query,
 * pointing into c->in (valid until c->in grows). */
static void client_path_view(const struct client *c, struct http_view *view)
{
	const struct request *r = c->req;
	const char *url = c->in.data + r->head.url.off;
	const char *q = memchr(url, '?', r->head.url.len);
	*view = (struct http_view){
		.method = r->method,
		.path = url,
		.path_len = q ? (size_t)(q - url) : r->head.url.len,
		.query = q ? q + 1 : NULL,
		.query_len = q ? r->head.url.len - (size_t)(q - url) - 1 : 0,
	};
}

/* Flag name of the worker's snapshot, or NULL with *reason: no snapshot
 * yet, or no such flag in it. */
static const struct flag *snapshot_flag(const struct worker *w, const char *name, const char **reason)
{
	const struct flag *f = w->flags ? flag_snapshot_find(w->flags, name) : NULL;
	if (f == NULL)
		*reason = w->flags == NULL ? "no-flags-yet" : "unknown-flag";
	return f;
}

/*
 * Whether a create = "service" route may send its creates to the
 * service: while its write flag is enabled and not killed, so that a kill
 * or a rollback sends creates back to legacy with every other request
 * (they are then handled as legacy-first ones). No write flag: always.
 * Sets *reason when not.
 */
static bool service_takes_creates(const struct worker *w, const struct route *route, const char **reason)
{
	if (route->write_flag == NULL)
		return true;
	const struct flag *f = snapshot_flag(w, route->write_flag, reason);
	if (f == NULL)
		return false;
	if (f->kill)
		*reason = "kill";
	else if (!f->enabled)
		*reason = "disabled";
	return f->enabled && !f->kill;
}

/*
 * Fills the decision fields of c->req. at_head is the route match made
 * when the head came in (borrowed; its params point into c->in), or NULL
 * to match again: after a body was buffered c->in may have moved, and
 * after a wait the config may have been replaced. Returns 0 to
 * dispatch, 1 when the request waits for its user's migration, -1 after
 * answering the request itself (a bad user id).
 */
static int client_decide(struct client *c, const struct route_match *at_head)
{
	struct worker *w = c->w;
	const struct proxy_config *cfg = w->cfg;
	struct request *r = c->req;
	struct http_header_view views[HTTP_MAX_HEADERS];
	http_headers_view(&r->head, c->in.data, views);
	struct http_view view;
	client_path_view(c, &view);
	view.headers = views;
	view.nheaders = r->head.nheaders;
	view.body = r->body.len ? r->body.data : NULL;
	view.body_len = r->body.len;
	struct route_match fresh;
	const struct route_match *m = at_head;
	if (m == NULL) {
		route_match(cfg, &view, &fresh);
		m = &fresh;
	}
	bool matched = m->route != NULL;
	if (matched) {
		r->route = m->route->label;
		r->route_index = (int)(m->route - cfg->routes);
		r->cfg_generation = w->cfg_generation;
		r->read_fallback = m->route->read_fallback;
		r->breaker_failures = m->route->breaker_failures;
		r->breaker_open_ms = m->route->breaker_open_ms;
		r->route_migrates = m->route->migrate;
	}
	char why[256];
	int found = matched ? route_user_id(m, &view, r->user, &r->user_len, why, sizeof(why)) : USER_ID_NONE;
	if (found == USER_ID_BAD) {
		r->reason = "bad-user-id";
		client_fail(c, 400, why);
		return -1;
	}
	if (client_forced(c, cfg))
		return 0;
	if (!matched) {
		r->upstream = cfg->default_upstream;
		r->reason = "no-route";
		return 0;
	}
	if (r->method == METHOD_POST && m->route->create != CREATE_BY_FLAG) {
		/* Creates go by the route's strategy, not by a user's bucket:
		 * the user does not exist yet. */
		r->reason = m->route->create == CREATE_LEGACY_FIRST ? "create-legacy-first" : "create-service";
		bool legacy_first = m->route->create == CREATE_LEGACY_FIRST || !service_takes_creates(w, m->route, &r->reason);
		r->upstream = legacy_first ? UPSTREAM_LEGACY : UPSTREAM_SERVICE;
		r->capture_created = legacy_first;
		const char *field = m->route->created_id;
		copy_string(r->created_field, sizeof(r->created_field), strncmp(field, "json:", 5) == 0 ? field + 5 : "");
		return 0;
	}
	if (found == USER_ID_NONE) {
		r->upstream = m->route->no_user;
		r->reason = "no-user";
		return 0;
	}
	if (m->route->migrate)
		migrate_first_seen(w->migrate, r->user, r->user_len);
	bool read = r->method & METHODS_READ;
	const char *flag = read ? m->route->read_flag : m->route->write_flag;
	r->upstream = UPSTREAM_LEGACY;
	if (flag == NULL) {
		r->reason = "no-flag";
		return 0;
	}
	copy_string(r->flag, sizeof(r->flag), flag);
	const struct flag *f = snapshot_flag(w, flag, &r->reason);
	if (f == NULL)
		return 0;
	struct flag_decision d;
	flag_eval(f, r->user, r->user_len, &d);
	r->bucket = d.bucket;
	r->reason = flag_reason_name(d.reason);
	if (!d.on)
		return 0;
	if (m->route->read_guard && !migrate_is_migrated(w->migrate, r->user, r->user_len)) {
		/* Not in the service yet: reads and (by default) writes stay on
		 * legacy, and the worker is asked to hurry. */
		migrate_priority(w->migrate, r->user, r->user_len);
		if (!read && m->route->migrate_first) {
			c->state = CLIENT_WAIT;
			r->wait_hash = idset_hash(r->user, r->user_len);
			r->wait_timeout_status = m->route->migrate_timeout_status;
			r->park_next = w->parked;
			w->parked = c;
			int ms = m->route->migrate_wait_ms;
			struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
			evtimer_add(c->timer, &tv);
			return 1;
		}
		r->reason = "not-migrated";
		return 0;
	}
	r->upstream = UPSTREAM_SERVICE;
	r->fallback_allowed = read && m->route->read_fallback;
	if (r->fallback_allowed && !breaker_allows(w, r->route_index)) {
		r->upstream = UPSTREAM_LEGACY;
		r->reason = "fallback";
		r->fallback_allowed = false;
	}
	return 0;
}

/* ---- the upstream request ------------------------------------------------------ */

static bool request_id_ok(const char *v, size_t len)
{
	if (len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++)
		if (v[i] <= ' ' || v[i] > '~' || v[i] == '"' || v[i] == '\\')
			return false;
	return true;
}

/*
 * Writes 64 random bits r as 16 lowercase hex digits to out (no NUL),
 * eight at a time: each nibble spread into a byte of its own, then
 * turned into its digit in all eight bytes at once. The digits come out
 * in reverse order, which does not matter for random bits. A digit per
 * loop turn cost 220 instructions per request id (callgrind).
 */
static void put_random_hex(char *out, uint64_t r)
{
	for (int half = 0; half < 2; half++, r >>= 32) {
		uint64_t v = (uint32_t)r;
		v = (v | v << 16) & 0x0000ffff0000ffffull;
		v = (v | v << 8) & 0x00ff00ff00ff00ffull;
		v = (v | v << 4) & 0x0f0f0f0f0f0f0f0full;
		/* Each byte n (0-15) becomes '0' + n, plus 'a' - '0' - 10 (0x27)
		 * where n > 9, that is where n + 6 carries into bit 4. No byte
		 * overflows into the next. */
		v += 0x3030303030303030ull + (((v + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull) * 0x27;
		memcpy(out + 8 * half, &v, 8);
	}
}

static void client_request_id(struct client *c)
{
	struct request *r = c->req;
	size_t len;
	const char *v = HTTP_HEADER_VALUE(&r->head, c->in.data, "X-Request-Id", &len);
	if (v && request_id_ok(v, len)) {
		memcpy(r->id, v, len);
		r->id[len] = '\0';
		return;
	}
	/* xorshift per worker: unique enough to find a request in the logs,
	 * and no system call per request. */
	uint64_t *s = &c->w->rng;
	uint64_t a = (*s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17);
	uint64_t b = (*s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17);
	put_random_hex(r->id, a);
	put_random_hex(r->id + 16, b);
	r->id[32] = '\0';
}

/* The request head as the upstream gets it. */
static void client_write_upstream_head(struct client *c, struct buf *out)
{
	const struct request *r = c->req;
	const char *base = c->in.data;
	/* Plain appends on the request path: formatting with printf cost
	 * about 6% of the proxy's CPU (bench/, callgrind). */
	buf_puts(out, http_method_str(r->parser.method));
	buf_putc(out, ' ');
	buf_append(out, base + r->head.url.off, r->head.url.len);
	BUF_PUT_LITERAL(out, " HTTP/1.1\r\n");
	/* One pass over the headers: the first Host (hop-by-hop or not) is
	 * remembered, X-Forwarded-For is only noted, the proxy's own headers
	 * and the hop-by-hop ones are dropped. */
	const struct http_head *h = &r->head;
	size_t host_len = 0;
	const char *host = NULL;
	bool forwarded_for = false;
	for (size_t i = 0; i < h->nheaders; i++) {
		if (host == NULL && HTTP_HEAD_IS(h, base, i, "Host")) {
			host = base + h->fields[i].value.off;
			host_len = h->fields[i].value.len;
		}
		if (HTTP_HEAD_IS(h, base, i, "X-Forwarded-For")) {
			forwarded_for = true;
			continue;
		}
		if (http_is_hop(h, i) || HTTP_HEAD_IS(h, base, i, "X-Forwarded-Proto") ||
		    HTTP_HEAD_IS(h, base, i, "X-Forwarded-Host") || HTTP_HEAD_IS(h, base, i, "X-Request-Id") ||
		    (r->continue_sent && HTTP_HEAD_IS(h, base, i, "Expect")))
			continue;
		http_append_header(out, h, base, i);
	}
	/* Every earlier hop, in order, then this client. */
	BUF_PUT_LITERAL(out, "X-Forwarded-For: ");
	for (size_t i = 0; forwarded_for && i < h->nheaders; i++) {
		if (HTTP_HEAD_IS(h, base, i, "X-Forwarded-For")) {
			const struct span *v = &h->fields[i].value;
			buf_append(out, base + v->off, v->len);
			BUF_PUT_LITERAL(out, ", ");
		}
	}
	buf_puts(out, c->peer);
	BUF_PUT_LITERAL(out, "\r\nX-Forwarded-Proto: http\r\n");
	if (host) {
		BUF_PUT_LITERAL(out, "X-Forwarded-Host: ");
		buf_append(out, host, host_len);
		BUF_PUT_LITERAL(out, "\r\n");
	}
	BUF_PUT_LITERAL(out, "X-Request-Id: ");
	buf_puts(out, r->id);
	BUF_PUT_LITERAL(out, "\r\n\r\n");
}

/* Copies request bytes the parser has consumed to the upstream. */
static void client_forward_body(struct client *c)
{
	if (c->up == NULL || c->forwarded >= c->parsed)
		return;
	buf_append(&c->up->out, c->in.data + c->forwarded, c->parsed - c->forwarded);
	c->forwarded = c->parsed;
}


/* ---- moving bytes ------------------------------------------------------------------ */

/* Grows b in one step, if it must, to hold n more bytes and the NUL
 * (common/buf.c only grows by doubling from 64 bytes). */
static void grow_to_fit(struct buf *b, size_t n)
{
	if (b->cap >= b->len + n + 1)
		return;
	b->cap = b->len + n + 1;
	b->data = xrealloc(b->data, b->cap);
	b->data[b->len] = '\0';
}

/* Reads what sock has into b, at most up to limit bytes in b. Returns 1
 * if something arrived, 0 if nothing (EAGAIN or a short read clears
 * *can_read, unless the peer closed; EOF sets *eof), -1 on an error. */
static int read_into(int fd, struct buf *b, size_t limit, bool peer_closed, bool *can_read, bool *eof,
		     uint64_t *moved)
{
	int got = 0;
	while (*can_read && b->len < limit) {
		size_t want = limit - b->len < READ_CHUNK ? limit - b->len : READ_CHUNK;
		if (b->cap < b->len + want + 1)
			grow_to_fit(b, want > READ_CHUNK / 2 ? want : READ_CHUNK);
		ssize_t n = read(fd, b->data + b->len, want);
		if (n > 0) {
			b->len += (size_t)n;
			b->data[b->len] = '\0';
			*moved += (uint64_t)n;
			got = 1;
			if ((size_t)n < want && !peer_closed)
				*can_read = false;
		} else if (n == 0) {
			*eof = true;
			*can_read = false;
		} else if (errno == EAGAIN) {
			*can_read = false;
		} else if (errno != EINTR) {
			*can_read = false;
			return -1;
		}
	}
	return got;
}

/* Writes b from *sent on. Returns -1 on an error; clears *can_write on
 * EAGAIN; empties b once all of it is out. */
static int write_from(int fd, struct buf *b, size_t *sent, bool *can_write, uint64_t *moved)
{
	while (*can_write && *sent < b->len) {
		ssize_t n = write(fd, b->data + *sent, b->len - *sent);
		if (n > 0) {
			*sent += (size_t)n;
			*moved += (uint64_t)n;
		} else if (n < 0 && errno == EAGAIN) {
			*can_write = false;
		} else if (n < 0 && errno != EINTR) {
			return -1;
		}
	}
	if (*sent == b->len && b->len > 0) {
		buf_reset(b);
		*sent = 0;
	}
	return 0;
}

/* ---- the request ------------------------------------------------------------------- */

/* Where the request's head ends in c->in: just after the parser paused
 * at the end of the head, it has not yet consumed the final LF. */
static size_t client_head_end(const struct client *c)
{
	return c->req->head.head_len;
}

/* Runs the parser over unparsed input. Returns -1 after answering a
 * malformed request. */
static int client_parse(struct client *c)
{
	struct request *r = c->req;
	while (c->parsed < c->in.len && !r->head.message_done) {
		bool had_head = r->head.complete;
		if (HTTP_PARSER_ERRNO(&r->parser) == HPE_PAUSED)
			http_parser_pause(&r->parser, 0);
		r->target.base = c->in.data;
		size_t n = http_parser_execute(&r->parser, http_request_settings(), c->in.data + c->parsed,
					       c->in.len - c->parsed);
		c->parsed += n;
		enum http_errno e = HTTP_PARSER_ERRNO(&r->parser);
		if (e != HPE_OK && e != HPE_PAUSED) {
			char why[160];
			snprintf(why, sizeof(why), "malformed request: %s",
				 r->head.folded ? "a header line folded onto the next (obs-fold)" : http_errno_description(e));
			client_fail(c, r->head.too_many ? 431 : 400, r->head.too_many ? "too many request headers" : why);
			return -1;
		}
		if (r->head.complete && !had_head) {
			r->head.head_len = (uint32_t)c->parsed + 1;
			return 0; /* the caller routes before any body is parsed */
		}
	}
	return 0;
}

/* Sends the request in hand to c->req->upstream: the rewritten head, and
 * whatever body has been parsed so far. */
static void client_dispatch(struct client *c)
{
	struct request *r = c->req;
	char err[256];
	struct upstream_conn *u = upstream_get(c->w, r->upstream, err, sizeof(err));
	if (u == NULL) {
		log_warn("request %s: %s: %s", r->id, upstream_kind_name(r->upstream), err);
		atomic_fetch_add_explicit(&c->w->metrics.upstream_errors[r->upstream], 1, memory_order_relaxed);
		client_upstream_failed(c, NULL, 502, "cannot connect to upstream");
		return;
	}
	c->up = u;
	u->client = c;
	http_parser_init(&u->parser, HTTP_RESPONSE);
	u->parser.data = &u->target;
	http_head_reset(&u->head);
	u->target = (struct http_parse_target){ &u->head, u->in.data, NULL, r->method == METHOD_HEAD };
	u->relayed = 0;
	u->head_written = false;
	client_write_upstream_head(c, &u->out);
	c->forwarded = client_head_end(c);
	client_forward_body(c);
	r->upstream_start_us = clock_monotonic_us();
	const struct upstream_config *uc = &c->w->cfg->upstreams[u->kind];
	upstream_arm_timer(u, u->connecting ? uc->connect_timeout_ms : uc->read_timeout_ms);
	evtimer_del(c->timer);
	c->state = CLIENT_PROXY;
}

/* Decides, then dispatches. m: as at_head of client_decide. */
static void client_route(struct client *c, const struct route_match *m)
{
	if (client_decide(c, m) == 0) {
		c->req->decided = true;
		client_dispatch(c);
	}
}

/*
 * The upstream failed before the response began (u NULL: the connect
 * could not start). Tries, in this order: a fresh connection when a
 * pooled one had gone stale; legacy for a service read whose route allows
 * the fallback; else status (502, or 504 for a timeout).
 */
static void client_upstream_failed(struct client *c, struct upstream_conn *u, int status, const char *why)
{
	struct request *r = c->req;
	bool replayable = !r->response_started && !r->body_streamed && (r->method & METHODS_READ);
	/* A pooled connection the upstream had closed fails at once (502),
	 * before any byte of an answer; a timeout says the upstream is slow,
	 * and asking it again would only double its load. */
	bool stale = u != NULL && u->reused && u->in.len == 0 && status == 502;
	if (u != NULL) {
		upstream_release(u, false);
		c->up = NULL;
	}
	if (r->response_started) {
		client_fail(c, status, why);
		return;
	}
	if (stale && replayable) {
		client_dispatch(c);
		return;
	}
	breaker_record(c, false);
	if (replayable && r->fallback_allowed && r->upstream == UPSTREAM_SERVICE) {
		log_info("request %s: user %s: service failed (%s), served by legacy", r->id, r->user, why);
		r->upstream = UPSTREAM_LEGACY;
		r->reason = "fallback";
		r->fallback_allowed = false;
		client_dispatch(c);
		return;
	}
	log_warn("request %s: %s failed: %s", r->id, upstream_kind_name(r->upstream), why);
	client_fail(c, status, why);
}

/* The head is in: check it, then route now or once the body is in. */
static void client_on_head(struct client *c)
{
	worker_refresh(c->w);
	const struct proxy_config *cfg = c->w->cfg;
	struct request *r = c->req;
	const char *method = http_method_str(r->parser.method);
	r->start_us = clock_monotonic_us();
	if (r->parser.http_major != 1) {
		client_fail(c, 400, "HTTP/1.0 or HTTP/1.1 required");
		return;
	}
	r->method = http_method_bit(method, strlen(method));
	r->keep_alive = http_should_keep_alive(&r->parser) && !c->draining;
	client_request_id(c);
	http_mark_hop_by_hop(&r->head, c->in.data, cfg->force_header);
	size_t len;
	const char *expect = HTTP_HEADER_VALUE(&r->head, c->in.data, "Expect", &len);
	r->expect_continue = expect && len == 12 && strncasecmp(expect, "100-continue", 12) == 0;
	if ((r->parser.flags & F_CONTENTLENGTH) && r->parser.content_length > cfg->max_body_bytes) {
		client_fail(c, 413, "request body over the limit");
		return;
	}
	struct http_view view;
	client_path_view(c, &view);
	struct route_match m;
	if (route_match(cfg, &view, &m) && route_needs_body(m.route) && r->parser.content_length != 0) {
		/* The user id is in the body: read all of it before choosing
		 * (and match again then, the buffer may move). */
		r->target.body = &r->body;
		c->state = CLIENT_BODY;
		if (r->expect_continue) {
			BUF_PUT_LITERAL(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
			r->continue_sent = true;
		}
		return;
	}
	client_route(c, &m);
}

/* ---- the response ---------------------------------------------------------------- */

/* The upstream's response head, rewritten for the client. */
static void client_write_response_head(struct client *c, struct upstream_conn *u)
{
	const char *base = u->in.data;
	struct request *r = c->req;
	/* Room for the response read so far and what the proxy adds to its
	 * head, at once: growing from nothing by doubling took four reallocs
	 * per response, 5% of a request without keep-alive (callgrind). */
	spare_take(&c->w->spare_out, &c->out);
	grow_to_fit(&c->out, u->in.len + RESPONSE_HEAD_EXTRA);
	r->status = u->parser.status_code;
	/* http_parser only accepts three-digit status codes. */
	char status_line[] = "HTTP/1.1 000 ";
	status_line[9] = (char)('0' + r->status / 100);
	status_line[10] = (char)('0' + r->status / 10 % 10);
	status_line[11] = (char)('0' + r->status % 10);
	buf_append(&c->out, status_line, sizeof(status_line) - 1);
	buf_append(&c->out, base + u->head.status.off, u->head.status.len);
	BUF_PUT_LITERAL(&c->out, "\r\n");
	/* An HTTP/1.0 client cannot read chunked framing: it gets the
	 * decoded body, delimited by the close. */
	bool old_client = r->parser.http_minor == 0;
	r->dechunk = old_client && (u->parser.flags & F_CHUNKED);
	http_mark_hop_by_hop(&u->head, base, r->dechunk ? "Transfer-Encoding" : NULL);
	http_append_headers(&c->out, &u->head, base);
	if (r->dechunk) {
		u->target.body = &c->out;
		r->keep_alive = false;
	}
	if (c->w->cfg->route_header)
		buf_puts(&c->out, r->upstream == UPSTREAM_SERVICE ? "X-Cutover-Route: service\r\n"
								   : "X-Cutover-Route: legacy\r\n");
	size_t len;
	if (HTTP_HEADER_VALUE(&u->head, base, "X-Request-Id", &len) == NULL) {
		BUF_PUT_LITERAL(&c->out, "X-Request-Id: ");
		buf_puts(&c->out, r->id);
		BUF_PUT_LITERAL(&c->out, "\r\n");
	}
	/* The client keeps its connection when it asked to, the response's
	 * end is known without a close, and the proxy is not draining. */
	bool framed = (u->parser.flags & (F_CONTENTLENGTH | F_CHUNKED)) || r->method == METHOD_HEAD ||
		      r->status == 204 || r->status == 304;
	r->keep_alive = r->keep_alive && framed && !c->draining;
	if (r->capture_created && r->status >= 200 && r->status < 300) {
		size_t loc_len;
		const char *loc = HTTP_HEADER_VALUE(&u->head, base, "Location", &loc_len);
		if (r->created_field[0] != '\0' && !r->dechunk) {
			buf_reset(&r->captured);
			u->target.body = &r->captured;
		} else if (r->created_field[0] == '\0' && loc != NULL) {
			/* The last segment of the path: /api/users/u42 -> u42 */
			const char *end = memchr(loc, '?', loc_len) ? memchr(loc, '?', loc_len) : loc + loc_len;
			const char *start = end;
			while (start > loc && start[-1] != '/')
				start--;
			snprintf(r->created, sizeof(r->created), "%.*s", (int)(end - start), start);
		}
	}
	if (!r->keep_alive)
		BUF_PUT_LITERAL(&c->out, "Connection: close\r\n");
	else if (old_client)
		BUF_PUT_LITERAL(&c->out, "Connection: keep-alive\r\n");
	BUF_PUT_LITERAL(&c->out, "\r\n");
	r->response_started = true;
}

/* A legacy-first create succeeded: find the new user's id (Location, or
 * a field of the JSON body) and put the user on the migrate stream. */
static void client_enqueue_created(struct client *c)
{
	struct request *r = c->req;
	char id[ROUTE_USER_ID_MAX + 1] = "", why[256];
	size_t len = 0;
	if (r->created_field[0] != '\0') {
		struct user_source source = { USER_FROM_BODY, r->created_field };
		struct route route = { .sources = &source, .nsources = 1 };
		struct route_match m = { .route = &route };
		struct http_view view = { .body = r->captured.data, .body_len = r->captured.len };
		if (route_user_id(&m, &view, id, &len, why, sizeof(why)) != USER_ID_FOUND)
			len = 0;
	} else if (flag_user_id_check(r->created, strlen(r->created), why, sizeof(why)) == 0) {
		len = strlen(r->created);
		memcpy(id, r->created, len + 1);
	}
	if (len == 0) {
		log_warn("request %s: create answered %d but the new user's id was not found in the %s", r->id,
			 r->status, r->created_field[0] ? "response body" : "Location header");
		atomic_fetch_add_explicit(&c->w->metrics.migrate_errors, 1, memory_order_relaxed);
		return;
	}
	memcpy(r->user, id, len + 1);
	r->user_len = len;
	migrate_created(c->w->migrate, id, len);
}

static void client_finish_request(struct client *c)
{
	struct upstream_conn *u = c->up;
	struct request *r = c->req;
	r->upstream_us = clock_monotonic_us() - r->upstream_start_us;
	metrics_observe_latency(&c->w->metrics, r->upstream, r->upstream_us);
	breaker_record(c, r->status < 500);
	bool request_sent = r->head.message_done && c->forwarded == c->parsed && u->out.len == 0;
	upstream_release(u, request_sent && http_should_keep_alive(&u->parser));
	c->up = NULL;
	/* A write legacy took, for a user the service has or is being given
	 * (a migration in flight may have read the user just before it):
	 * migrate the user again, so the service's copy catches up. The
	 * worker's version guard makes a needless repeat harmless. */
	bool ok = r->status >= 200 && r->status < 300;
	if (ok && r->route_migrates && !(r->method & METHODS_READ) && r->upstream == UPSTREAM_LEGACY &&
	    r->user_len > 0 && !r->capture_created)
		migrate_refresh(c->w->migrate, r->user, r->user_len);
	if (ok && r->capture_created)
		client_enqueue_created(c);
	access_log_write(c);
	if (!r->keep_alive || !r->head.message_done) {
		c->state = CLIENT_CLOSING;
		return;
	}
	/* Drop the finished request; a pipelined next one is parsed at once.
	 * An idle keep-alive connection gives its buffers and its request
	 * state back: thousands of idle clients should cost their sockets,
	 * not 16 KiB each. The next request takes them when it arrives. */
	memmove(c->in.data, c->in.data + c->parsed, c->in.len - c->parsed);
	c->in.len -= c->parsed;
	c->parsed = c->forwarded = 0;
	c->state = CLIENT_HEAD;
	if (c->in.len == 0) {
		spare_put(&c->w->spare_in, &c->in);
		request_put(c);
	} else {
		buf_free(&r->body);
		buf_free(&r->captured);
		client_begin_request(c);
	}
	client_arm_timer(c);
}

/* Parses what the upstream sent and relays it. Returns -1 when the
 * request ended (finished or failed). */
static int client_relay_response(struct client *c, struct upstream_conn *u)
{
	while (u->parsed < u->in.len) {
		if (HTTP_PARSER_ERRNO(&u->parser) == HPE_PAUSED)
			http_parser_pause(&u->parser, 0);
		u->target.base = u->in.data;
		u->parsed += http_parser_execute(&u->parser, http_response_settings(), u->in.data + u->parsed,
						 u->in.len - u->parsed);
		enum http_errno e = HTTP_PARSER_ERRNO(&u->parser);
		if (e != HPE_OK && e != HPE_PAUSED) {
			atomic_fetch_add_explicit(&c->w->metrics.upstream_errors[u->kind], 1, memory_order_relaxed);
			client_upstream_failed(c, u, 502, "invalid response from upstream");
			return -1;
		}
		if (u->head.complete && !u->head_written) {
			size_t head_end = u->parsed + 1; /* the parser paused before the last LF */
			int status = u->parser.status_code;
			if (status >= 100 && status < 200 && status != 101) {
				/* 100 Continue: pass it on, then read the real response. */
				buf_append(&c->out, u->in.data, head_end);
				memmove(u->in.data, u->in.data + head_end, u->in.len - head_end);
				u->in.len -= head_end;
				u->parsed = 0;
				http_parser_init(&u->parser, HTTP_RESPONSE);
				http_head_reset(&u->head);
				continue;
			}
			client_write_response_head(c, u);
			u->head_written = true;
			u->relayed = head_end;
			continue;
		}
		if (u->head_written && c->req->dechunk) {
			u->relayed = u->parsed; /* on_body has put the decoded bytes in c->out */
		} else if (u->head_written && u->parsed > u->relayed) {
			buf_append(&c->out, u->in.data + u->relayed, u->parsed - u->relayed);
			c->req->bytes_out += u->parsed - u->relayed;
			u->relayed = u->parsed;
		}
		if (u->head.message_done) {
			client_finish_request(c);
			return -1;
		}
	}
	if (u->head_written && u->relayed == u->in.len) {
		u->in.len = u->parsed = u->relayed = 0; /* all relayed: reuse the buffer */
	}
	return 0;
}

/* Moves the response from the upstream to the client, as far as the
 * sockets allow. */
static void client_pump_response(struct client *c)
{
	struct upstream_conn *u = c->up;
	const struct upstream_config *uc = &c->w->cfg->upstreams[u->kind];
	bool progress = false;
	for (;;) {
		if (client_relay_response(c, u) < 0)
			return;
		/* New bytes restart the read timeout, once relayed: when they
		 * end the response, upstream_release stops the timer instead,
		 * and arming it first cost a timer update per request. */
		if (progress)
			upstream_arm_timer(u, uc->read_timeout_ms);
		progress = false;
		if (u->eof) {
			/* A body that runs until close ends here; anything else
			 * was cut short. */
			if (HTTP_PARSER_ERRNO(&u->parser) == HPE_PAUSED)
				http_parser_pause(&u->parser, 0);
			http_parser_execute(&u->parser, http_response_settings(), NULL, 0);
			if (u->head.message_done && u->head_written) {
				c->req->keep_alive = false;
				client_finish_request(c);
			} else if (c->req->response_started) {
				log_warn("request %s: %s closed mid-response", c->req->id, upstream_kind_name(u->kind));
				client_fail(c, 502, "upstream closed mid-response");
			} else {
				client_upstream_failed(c, u, 502, "upstream closed the connection");
			}
			return;
		}
		if (!u->can_read || c->out.len - c->out_sent >= FORWARD_HIGH_WATER)
			return;
		/* An error counts as the end: what came before it is relayed,
		 * and a response it cut short is treated as such. */
		int got = read_into(u->fd, &u->in, u->in.len + READ_CHUNK, u->peer_closed, &u->can_read, &u->eof,
				    &c->moved);
		if (got < 0)
			u->eof = true;
		else if (got > 0)
			progress = true;
	}
}

/* Sends what the upstream is owed and reports a finished connect. */
static void client_pump_request(struct client *c)
{
	struct upstream_conn *u = c->up;
	if (u->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0) {
			atomic_fetch_add_explicit(&c->w->metrics.upstream_errors[u->kind], 1, memory_order_relaxed);
			client_upstream_failed(c, u, 502, strerror(err));
			return;
		}
		u->connecting = false;
		upstream_arm_timer(u, c->w->cfg->upstreams[u->kind].read_timeout_ms);
	}
	if (write_from(u->fd, &u->out, &u->out_sent, &u->can_write, &c->moved) < 0)
		client_upstream_failed(c, u, 502, "cannot write to upstream");
}

/* Called by upstream.c for events on c's upstream connection. */
void client_on_upstream(struct upstream_conn *u, short what)
{
	struct client *c = u->client;
	if (what & EV_TIMEOUT) {
		atomic_fetch_add_explicit(&c->w->metrics.upstream_errors[u->kind], 1, memory_order_relaxed);
		client_upstream_failed(c, u, 504, u->connecting ? "upstream connect timed out" : "upstream timed out");
		client_drive(c);
		return;
	}
	if (what & EV_WRITE)
		u->can_write = true;
	if (what & EV_CLOSED)
		u->peer_closed = true;
	if (what & (EV_READ | EV_CLOSED))
		u->can_read = true;
	client_drive(c);
}

/* ---- the client's state machine ---------------------------------------------------- */

static int client_use_input(struct client *c, size_t limit);

/* Reads and parses request bytes in the states that want them. Returns
 * -1 when the client is gone. */
static int client_take_input(struct client *c)
{
	const struct proxy_config *cfg = c->w->cfg;
	size_t limit;
	switch (c->state) {
	case CLIENT_HEAD:
		limit = cfg->max_header_bytes + 1;
		break;
	case CLIENT_BODY:
		/* The decoded body is limited below; this bounds chunk framing. */
		limit = client_head_end(c) + cfg->max_body_bytes + 65536;
		break;
	case CLIENT_PROXY:
		if (c->req->head.message_done || c->up->out.len - c->up->out_sent >= FORWARD_HIGH_WATER)
			return 0;
		limit = c->in.len + READ_CHUNK;
		break;
	case CLIENT_WAIT:
		/* A client that hung up while its write waited for the migration
		 * must not have the write carried out later. */
		if (c->can_read && !c->peer_closed) {
			bool eof = false;
			if (read_into(c->fd, &c->in, c->in.len + READ_CHUNK, false, &c->can_read, &eof, &c->moved) < 0 ||
			    eof)
				c->peer_closed = true;
		}
		if (c->peer_closed) {
			c->req->status = 499;
			c->req->reason = "client-gone";
			access_log_write(c);
			return -1;
		}
		return 0;
	default:
		return 0;
	}
	bool eof = false;
	if (c->can_read)
		spare_take(&c->w->spare_in, &c->in);
	if (read_into(c->fd, &c->in, limit, c->peer_closed, &c->can_read, &eof, &c->moved) < 0)
		return -1;
	if (eof)
		c->eof = true;
	if (c->req == NULL) {
		/* Idle until now: a request begins with its first byte. A
		 * wakeup without one leaves the client as idle as it was. */
		if (c->in.len == 0) {
			spare_put(&c->w->spare_in, &c->in);
			return c->eof ? -1 : 0;
		}
		request_take(c);
	}
	/* New bytes restart the client's clock, unless they completed the
	 * request: the upstream's clock runs then (client_dispatch stopped
	 * the client's, client_decide set the wait's). Arming it first cost
	 * a timer update per request (callgrind). */
	bool progress = c->in.len > c->parsed && c->state != CLIENT_PROXY;
	int rc = client_use_input(c, limit);
	if (rc == 0 && progress &&
	    (c->state == CLIENT_HEAD || c->state == CLIENT_BODY || c->state == CLIENT_CLOSING))
		client_arm_timer(c);
	return rc;
}

/* Parses what client_take_input read (up to limit bytes in c->in) and
 * acts on it in c's state. Returns -1 when the client is gone. */
static int client_use_input(struct client *c, size_t limit)
{
	const struct proxy_config *cfg = c->w->cfg;
	if (client_parse(c) < 0)
		return 0;
	switch (c->state) {
	case CLIENT_HEAD:
		if (c->req->head.complete) {
			client_on_head(c);
		} else if (c->in.len > cfg->max_header_bytes) {
			client_fail(c, 431, "request head over the limit");
		} else if (c->eof) {
			return c->in.len > 0 ? (client_fail(c, 400, "request cut short"), 0) : -1;
		}
		break;
	case CLIENT_BODY:
		if (c->req->body.len > cfg->max_body_bytes || (c->in.len >= limit && !c->req->head.message_done))
			client_fail(c, 413, "request body over the limit");
		else if (c->req->head.message_done)
			client_route(c, NULL);
		else if (c->eof)
			client_fail(c, 400, "request body cut short");
		break;
	case CLIENT_PROXY:
		if (c->parsed - client_head_end(c) + c->req->body_dropped > cfg->max_body_bytes) {
			client_fail(c, 413, "request body over the limit");
			break;
		}
		client_forward_body(c);
		if (c->forwarded > client_head_end(c) && c->forwarded == c->parsed && c->parsed == c->in.len &&
		    !c->req->head.message_done) {
			/* Streamed: keep the head, drop body bytes already sent. */
			c->req->body_dropped += c->parsed - client_head_end(c);
			c->in.len = c->parsed = c->forwarded = client_head_end(c);
			c->req->body_streamed = true;
		}
		if (c->eof && !c->req->head.message_done)
			client_fail(c, 400, "request body cut short");
		break;
	default:
		break;
	}
	return 0;
}

/*
 * Does everything the sockets allow right now, until nothing changes:
 * read the client, write the upstream, read the upstream, write the
 * client. Frees c when the connection ends.
 */
static void client_drive(struct client *c)
{
	for (int round = 0; round < 64; round++) {
		uint64_t moved = c->moved;
		enum client_state state = c->state;
		size_t pending = c->out.len;
		if (c->state != CLIENT_CLOSING && client_take_input(c) < 0)
			goto done;
		if (c->state == CLIENT_PROXY && c->up) {
			client_pump_request(c);
			if (c->state == CLIENT_PROXY && c->up)
				client_pump_response(c);
		}
		if (write_from(c->fd, &c->out, &c->out_sent, &c->can_write, &c->moved) < 0)
			goto done;
		if (c->out.len == 0 && c->state == CLIENT_HEAD)
			spare_put(&c->w->spare_out, &c->out);
		if (c->state == CLIENT_CLOSING && c->out.len == 0)
			goto done;
		if (c->state == CLIENT_HEAD && c->draining && c->in.len == 0)
			goto done;
		if (c->moved == moved && c->state == state && c->out.len == pending)
			return; /* nothing more until the next event */
	}
	/* Still busy after a fair share of turns (a big body): go on at the
	 * loop's next turn, after the other connections had theirs. */
	event_active(c->ev, EV_READ | EV_WRITE, 0);
	return;
done:
	client_free(c);
}

static void client_on_event(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	struct client *c = arg;
	if (what & EV_CLOSED)
		c->peer_closed = true;
	if (what & (EV_READ | EV_CLOSED))
		c->can_read = true;
	if (what & EV_WRITE)
		c->can_write = true;
	client_drive(c);
}

/* A write waited for its user (migrate-first): the user is migrated now
 * (decide again: to the service), or the wait is over (timeout, or the
 * proxy draining: handled as a timeout, with that reason). */
static void client_end_wait(struct client *c, bool migrated)
{
	const char *reason = c->draining ? "migrate-draining" : "migrate-timeout";
	client_unpark(c);
	evtimer_del(c->timer);
	c->state = CLIENT_BODY; /* the request is read; only the decision is missing */
	if (migrated) {
		client_route(c, NULL);
	} else if (c->req->wait_timeout_status) {
		c->req->reason = reason;
		client_fail(c, c->req->wait_timeout_status, "the user's migration did not finish in time");
	} else {
		c->req->upstream = UPSTREAM_LEGACY;
		c->req->reason = reason;
		c->req->decided = true;
		client_dispatch(c);
	}
	client_drive(c);
}

/* Called by migrate.c when user hash h became migrated. */
void client_user_migrated(struct worker *w, uint64_t h)
{
	struct client *c = w->parked;
	while (c != NULL) {
		struct client *next = c->req->park_next;
		if (c->req->wait_hash == h)
			client_end_wait(c, true);
		c = next;
	}
}

/* Idle too long, or too slow to send its request. */
static void client_on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct client *c = arg;
	if (c->state == CLIENT_WAIT) {
		client_end_wait(c, false);
		return;
	}
	if (c->state == CLIENT_HEAD && c->in.len == 0) {
		client_free(c);
		return;
	}
	client_fail(c, 408, "request not received in time");
	client_drive(c);
}

/* SIGTERM: idle connections close now, busy ones after their request;
 * a write waiting for its user's migration stops waiting (as on its
 * timeout), so that it is answered within the drain. */
void client_drain(struct client *c)
{
	c->draining = true;
	if (c->req)
		c->req->keep_alive = false;
	if (c->state == CLIENT_HEAD && c->in.len == 0)
		client_free(c);
	else if (c->state == CLIENT_WAIT)
		client_end_wait(c, false);
}

struct client *client_next(struct client *c)
{
	return c->next;
}

/* Closes every client of w and frees the spare buffers they leave. */
void client_close_all(struct worker *w)
{
	while (w->clients)
		client_free(w->clients);
	spare_free(&w->spare_in);
	spare_free(&w->spare_out);
	request_spare_free(&w->spare_req);
}
