/*
 * migrate.c - each worker's link to Redis for lazy migration.
 *
 * First-seen: the first time a worker sees a user on a route with
 * `migrate = true`, it runs one script that adds the user to <p>:seen and,
 * only if the user was not there, appends it to <p>:migrate - so a user is
 * enqueued once across every proxy process. The call is asynchronous: the
 * request never waits for it. At most limits.migrate_backlog calls are in
 * flight per worker; beyond that, or while Redis is down, the user is
 * dropped and counted (they will be seen again). Refreshes and created
 * users are different: nothing would ask for them again, so while Redis
 * is down (or the backlog full) they are owed - kept in a queue of up to
 * limits.migrate_backlog and sent once the link is back; only beyond
 * that are they dropped (and counted, and logged). A local cache of users
 * already enqueued (idset.c, limits.seen_cache per worker) saves the call
 * on repeat requests.
 *
 * Read guard: the worker keeps its own copy of <p>:migrated - read once
 * with HSCAN at connect, then kept current by <p>:migrated:changed - so
 * "is this user migrated?" is a lookup, not a round trip. A user missing
 * from the copy counts as not migrated: the safe side, since the read goes
 * to legacy, which still has the user.
 *
 * The connection handling follows flags/watcher.c: two async connections
 * (commands, subscription), dropped together on any failure and opened
 * again after a backoff of 100 ms doubling to 5 s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "proxy/core.h"

#define LINK_CONNECT_TIMEOUT_US 2000000
#define LINK_BACKOFF_MIN_MS 100
#define LINK_BACKOFF_MAX_MS 5000
#define PRIORITY_QUIET_S "30" /* one priority entry per user per this */

/* A refresh or a created user not sent yet (see the top of this file). */
struct owed {
	struct owed *next;
	struct migrate_link *m;
	bool refresh; /* XADD reason refresh; else the first-seen script, reason created */
	size_t len;
	char user[];
};

struct migrate_link {
	struct worker *w;
	struct redis_url url;
	char *target; /* the URL as configured, to notice a reload's new one */
	char *prefix;
	char *changed_channel;
	redisAsyncContext *cmd;
	redisAsyncContext *sub;
	bool subscribed;
	int inflight;
	int backoff_ms;
	int64_t connect_started_us;
	struct event *tick;
	struct event *retry;
	struct idset seen;
	struct idset migrated;
	struct idset prioritized; /* priority entries sent in this quiet period */
	int ticks;
	struct owed *owed, *owed_tail; /* a FIFO */
	int nowed;
	bool owed_dropping; /* logged that owed enqueues are being dropped */
	bool closing;       /* migrate_link_free is dropping the connections */
};

static void owed_flush(struct migrate_link *m);

/* SADD to seen, and XADD only when the user is new. */
static const char first_seen_script[] =
	"local p, user = ARGV[1], ARGV[2]\n"
	"if redis.call('SADD', p .. ':seen', user) == 1 then\n"
	"  redis.call('XADD', p .. ':migrate', '*', 'user', user, 'reason', ARGV[4], 'at', ARGV[3])\n"
	"  return 1\n"
	"end\n"
	"return 0\n";

/* At most one priority entry per user per quiet period. */
static const char priority_script[] =
	"local p, user = ARGV[1], ARGV[2]\n"
	"redis.call('SADD', p .. ':seen', user)\n"
	"if redis.call('SET', p .. ':migrate:prio:' .. user, '1', 'NX', 'EX', " PRIORITY_QUIET_S ") then\n"
	"  redis.call('XADD', p .. ':migrate:priority', '*', 'user', user, 'reason', ARGV[4], 'at', ARGV[3])\n"
	"  return 1\n"
	"end\n"
	"return 0\n";

static void link_connect(struct migrate_link *m);

/* Drops both connections. Owed enqueues in flight come back to their
 * queue (their callbacks see no reply); first-seen ones are lost, and
 * sent again when their users are seen again. */
static void link_drop(struct migrate_link *m)
{
	redis_async_drop(&m->cmd);
	redis_async_drop(&m->sub);
	m->subscribed = false;
	m->inflight = 0;
}

static void link_fail(struct migrate_link *m, const char *reason)
{
	bool was_up = m->subscribed;
	link_drop(m);
	if (was_up || m->backoff_ms == LINK_BACKOFF_MIN_MS)
		log_warn("worker %d: migration link to Redis lost (%s); first-seen users are counted as dropped, "
			 "refreshes and created users kept (up to %d), until it is back",
			 m->w->index, reason, m->w->cfg->migrate_backlog);
	struct timeval tv = { m->backoff_ms / 1000, (m->backoff_ms % 1000) * 1000 };
	evtimer_add(m->retry, &tv);
	m->backoff_ms = m->backoff_ms * 2 > LINK_BACKOFF_MAX_MS ? LINK_BACKOFF_MAX_MS : m->backoff_ms * 2;
}

static void link_on_connect(const redisAsyncContext *ac, int status)
{
	struct migrate_link *m = ac->data;
	if (m == NULL || status == REDIS_OK)
		return;
	/* hiredis frees a context whose connect failed once we return. */
	if (m->cmd == ac)
		m->cmd = NULL;
	else
		m->sub = NULL;
	((redisAsyncContext *)ac)->data = NULL;
	link_fail(m, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void link_on_disconnect(const redisAsyncContext *ac, int status)
{
	(void)status;
	struct migrate_link *m = ac->data;
	if (m == NULL)
		return;
	if (m->cmd == ac)
		m->cmd = NULL;
	else
		m->sub = NULL;
	link_fail(m, ac->errstr[0] ? ac->errstr : "connection closed");
}

/* One page of HSCAN <p>:migrated: every field is a migrated user. */
static void link_on_scan(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)privdata;
	struct migrate_link *m = ac->data;
	redisReply *r = reply;
	if (m == NULL || r == NULL)
		return;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
		link_fail(m, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected HSCAN reply");
		return;
	}
	const redisReply *fields = r->element[1];
	for (size_t i = 0; i + 1 < fields->elements; i += 2)
		idset_add(&m->migrated, idset_hash(fields->element[i]->str, fields->element[i]->len));
	const char *cursor = r->element[0]->str;
	if (strcmp(cursor, "0") != 0)
		redisAsyncCommand(ac, link_on_scan, NULL, "HSCAN %s:migrated %s COUNT 1000", m->prefix, cursor);
	else
		log_info("worker %d: %zu migrated users known", m->w->index, m->migrated.count);
}

static void link_on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)privdata;
	struct migrate_link *m = ac->data;
	redisReply *r = reply;
	if (m == NULL || r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3)
		return;
	if (strcmp(r->element[0]->str, "subscribe") == 0 && !m->subscribed && m->cmd != NULL) {
		/* Subscribed first, scanned second: nothing migrates unseen in
		 * between. */
		m->subscribed = true;
		m->backoff_ms = LINK_BACKOFF_MIN_MS;
		redisAsyncCommand(m->cmd, link_on_scan, NULL, "HSCAN %s:migrated 0 COUNT 1000", m->prefix);
		owed_flush(m);
	} else if (strcmp(r->element[0]->str, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
		uint64_t h = idset_hash(r->element[2]->str, r->element[2]->len);
		idset_add(&m->migrated, h);
		client_user_migrated(m->w, h);
	}
}

static void link_on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct migrate_link *m = arg;
	struct worker_metrics *wm = &m->w->metrics;
	/* Gauges for the admin thread, which must not read the sets. */
	atomic_store_explicit(&wm->migrate_cache_bytes, idset_bytes(&m->seen) + idset_bytes(&m->migrated),
			      memory_order_relaxed);
	atomic_store_explicit(&wm->migrated_known, m->migrated.count, memory_order_relaxed);
	atomic_store_explicit(&wm->migrate_link_up, m->subscribed, memory_order_relaxed);
	/* The script allows one priority entry per user per 30 s; forgetting
	 * our own record at the same pace means we ask again no sooner. */
	if (++m->ticks % 30 == 0) {
		idset_free(&m->prioritized);
		idset_init(&m->prioritized, (size_t)m->w->cfg->seen_cache, true);
	}
	if (m->cmd != NULL && !m->subscribed && clock_monotonic_us() - m->connect_started_us > LINK_CONNECT_TIMEOUT_US)
		link_fail(m, "no answer within 2 s");
	owed_flush(m);
}

static void link_on_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	link_connect(arg);
}

static redisAsyncContext *link_open(struct migrate_link *m, char *err, size_t errlen)
{
	redisAsyncContext *ac = redis_connect_async(&m->url, m->w->base, err, errlen);
	if (ac == NULL)
		return NULL;
	ac->data = m;
	redisAsyncSetConnectCallback(ac, link_on_connect);
	redisAsyncSetDisconnectCallback(ac, link_on_disconnect);
	return ac;
}

static void link_connect(struct migrate_link *m)
{
	char err[256];
	m->connect_started_us = clock_monotonic_us();
	if ((m->cmd = link_open(m, err, sizeof(err))) == NULL || (m->sub = link_open(m, err, sizeof(err))) == NULL) {
		link_fail(m, err);
		return;
	}
	redisAsyncCommand(m->sub, link_on_message, NULL, "SUBSCRIBE %s", m->changed_channel);
}

/* Points m at the Redis URL and prefix of cfg: its keys and channel. */
static void link_target(struct migrate_link *m, const struct proxy_config *cfg)
{
	char err[256];
	/* The URL was checked when the config was loaded. */
	if (redis_url_parse(cfg->redis_url, &m->url, err, sizeof(err)) < 0)
		abort();
	m->target = xstrdup(cfg->redis_url);
	m->prefix = xstrdup(cfg->redis_prefix);
	struct buf channel;
	buf_init(&channel);
	flag_store_key(m->prefix, "migrated:changed", &channel);
	m->changed_channel = buf_detach(&channel);
}

static void link_untarget(struct migrate_link *m)
{
	redis_url_free(&m->url);
	free(m->target);
	free(m->prefix);
	free(m->changed_channel);
}

/*
 * A reload that names another Redis (URL or prefix): the link drops its
 * connections and what it knew of the old store (seen, migrated) and
 * connects to the new one at once. What it owes goes to the new one: it
 * is where migration state lives now.
 */
void migrate_link_retarget(struct migrate_link *m, const struct proxy_config *cfg)
{
	if (m == NULL || (strcmp(m->prefix, cfg->redis_prefix) == 0 && strcmp(m->target, cfg->redis_url) == 0))
		return;
	link_drop(m); /* what is owed goes to the new store */
	evtimer_del(m->retry);
	link_untarget(m);
	link_target(m, cfg);
	idset_free(&m->seen);
	idset_free(&m->migrated);
	idset_init(&m->seen, (size_t)cfg->seen_cache, true);
	idset_init(&m->migrated, 0, false);
	m->backoff_ms = LINK_BACKOFF_MIN_MS;
	log_info("worker %d: migration link moves to %s, prefix %s", m->w->index, cfg->redis_url, cfg->redis_prefix);
	link_connect(m);
}

/*
 * The link of worker w, to the Redis of w's config; it connects in the
 * background and keeps reconnecting. Free with migrate_link_free.
 */
struct migrate_link *migrate_link_new(struct worker *w)
{
	struct migrate_link *m = xcalloc(1, sizeof(*m));
	m->w = w;
	link_target(m, w->cfg);
	idset_init(&m->seen, (size_t)w->cfg->seen_cache, true);
	idset_init(&m->migrated, 0, false);
	idset_init(&m->prioritized, (size_t)w->cfg->seen_cache, true);
	m->backoff_ms = LINK_BACKOFF_MIN_MS;
	m->tick = event_new(w->base, -1, EV_PERSIST, link_on_tick, m);
	m->retry = evtimer_new(w->base, link_on_retry, m);
	struct timeval second = { 1, 0 };
	event_add(m->tick, &second);
	link_connect(m);
	return m;
}

void migrate_link_free(struct migrate_link *m)
{
	if (m == NULL)
		return;
	m->closing = true;
	/* ac->data is cleared by the drop: the owed callbacks find m through
	 * their entries, and free them. */
	redis_async_drop(&m->cmd);
	redis_async_drop(&m->sub);
	if (m->nowed > 0)
		log_warn("worker %d: %d refreshes or created users not enqueued at exit", m->w->index, m->nowed);
	while (m->owed != NULL) {
		struct owed *o = m->owed;
		m->owed = o->next;
		free(o);
	}
	event_free(m->tick);
	event_free(m->retry);
	idset_free(&m->seen);
	idset_free(&m->migrated);
	idset_free(&m->prioritized);
	link_untarget(m);
	free(m);
}

/* A reply to one of our scripts: the user is on the stream (or was). */
static void link_on_enqueued(redisAsyncContext *ac, void *reply, void *privdata)
{
	uint64_t *h = privdata;
	struct migrate_link *m = ac->data;
	redisReply *r = reply;
	if (m != NULL && r != NULL) {
		m->inflight--;
		if (r->type == REDIS_REPLY_INTEGER || r->type == REDIS_REPLY_STRING) {
			idset_add(&m->seen, *h);
			if (r->type == REDIS_REPLY_STRING || r->integer == 1)
				atomic_fetch_add_explicit(&m->w->metrics.migrate_enqueued, 1, memory_order_relaxed);
		} else {
			atomic_fetch_add_explicit(&m->w->metrics.migrate_errors, 1, memory_order_relaxed);
			log_warn("worker %d: migrate enqueue refused by Redis: %s", m->w->index,
				 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
		}
	}
	free(h);
}

/* Sends one enqueue script unless the backlog is full or Redis is down. */
/* The current time in ms, as the stream entries' "at" field. */
static void now_ms_text(char at[24])
{
	snprintf(at, 24, "%lld", (long long)(clock_realtime_us() / 1000));
}

/* Runs one of the enqueue scripts for user, with reason, its reply to
 * cb with priv; counts it in flight. */
static void send_script(struct migrate_link *m, redisCallbackFn *cb, void *priv, const char *script,
			const char *user, size_t len, const char *reason)
{
	char at[24];
	now_ms_text(at);
	redisAsyncCommand(m->cmd, cb, priv, "EVAL %s 0 %s %b %s %s", script, m->prefix, user, len, at, reason);
	m->inflight++;
}

static void link_enqueue(struct migrate_link *m, const char *script, const char *user, size_t len,
			 const char *reason)
{
	if (!m->subscribed || m->inflight >= m->w->cfg->migrate_backlog) {
		atomic_fetch_add_explicit(&m->w->metrics.migrate_dropped, 1, memory_order_relaxed);
		return;
	}
	uint64_t *h = xmalloc(sizeof(*h));
	*h = idset_hash(user, len);
	send_script(m, link_on_enqueued, h, script, user, len, reason);
}

/* The first time this worker sees user: enqueue it (once across all
 * proxies; the script decides). Never waits. */
void migrate_first_seen(struct migrate_link *m, const char *user, size_t len)
{
	if (!idset_has(&m->seen, idset_hash(user, len)))
		link_enqueue(m, first_seen_script, user, len, "first-seen");
}

/* Puts o back at the head of the queue (it was first in line), or drops
 * it when the queue is full. */
static void owed_keep(struct migrate_link *m, struct owed *o, bool at_head)
{
	if (m->nowed >= m->w->cfg->migrate_backlog) {
		atomic_fetch_add_explicit(&m->w->metrics.migrate_dropped, 1, memory_order_relaxed);
		if (!m->owed_dropping)
			log_error("worker %d: %d refreshes and created users wait for Redis already: dropping %s of "
				  "user %.*s (and others, counted in cutover_migrate_dropped_total); the service's copy "
				  "may lag until the user is written again",
				  m->w->index, m->nowed, o->refresh ? "the refresh" : "the creation", (int)o->len, o->user);
		m->owed_dropping = true;
		free(o);
		return;
	}
	o->next = NULL;
	if (at_head) {
		o->next = m->owed;
		m->owed = o;
		if (m->owed_tail == NULL)
			m->owed_tail = o;
	} else {
		if (m->owed_tail)
			m->owed_tail->next = o;
		else
			m->owed = o;
		m->owed_tail = o;
	}
	m->nowed++;
}

/* The reply to an owed enqueue: done, or owed again (connection lost, or
 * refused: sent again on the next tick). */
static void owed_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	struct owed *o = privdata;
	struct migrate_link *m = o->m;
	redisReply *r = reply;
	if (m->closing) {
		free(o);
		return;
	}
	if (r != NULL)
		m->inflight--;
	if (r != NULL && r->type != REDIS_REPLY_ERROR) {
		atomic_fetch_add_explicit(&m->w->metrics.migrate_enqueued, 1, memory_order_relaxed);
		free(o);
		return;
	}
	if (r != NULL) {
		atomic_fetch_add_explicit(&m->w->metrics.migrate_errors, 1, memory_order_relaxed);
		log_warn("worker %d: %s of user %.*s refused by Redis (%s): kept for a retry", m->w->index,
			 o->refresh ? "refresh" : "created", (int)o->len, o->user, r->str);
	}
	owed_keep(m, o, true);
}

static void owed_send(struct migrate_link *m, struct owed *o)
{
	if (!o->refresh) {
		send_script(m, owed_on_reply, o, first_seen_script, o->user, o->len, "created");
		return;
	}
	char at[24];
	now_ms_text(at);
	redisAsyncCommand(m->cmd, owed_on_reply, o, "XADD %s:migrate * user %b reason refresh at %s", m->prefix, o->user,
			  o->len, at);
	m->inflight++;
}

/* Sends what is owed while the link is up and the backlog has room. */
static void owed_flush(struct migrate_link *m)
{
	while (m->owed != NULL && m->subscribed && m->inflight < m->w->cfg->migrate_backlog) {
		struct owed *o = m->owed;
		m->owed = o->next;
		if (m->owed == NULL)
			m->owed_tail = NULL;
		m->nowed--;
		owed_send(m, o);
	}
	if (m->nowed == 0)
		m->owed_dropping = false;
}

/* A refresh or a created user: sent now if it can be, else owed. */
static void owe(struct migrate_link *m, bool refresh, const char *user, size_t len)
{
	struct owed *o = xmalloc(sizeof(*o) + len);
	o->m = m;
	o->refresh = refresh;
	o->len = len;
	memcpy(o->user, user, len);
	if (m->owed == NULL && m->subscribed && m->inflight < m->w->cfg->migrate_backlog)
		owed_send(m, o);
	else
		owed_keep(m, o, false);
}

/* A user the legacy app just created (create = legacy-first): enqueue it
 * now, so the service builds it while nothing in the monolith waits. */
void migrate_created(struct migrate_link *m, const char *user, size_t len)
{
	owe(m, false, user, len);
}

/* A read waits on this user: put it on the priority stream (at most once
 * per 30 s per user, across all proxies). */
void migrate_priority(struct migrate_link *m, const char *user, size_t len)
{
	/* Every read of an unmigrated user lands here: without this local
	 * record each one would cost a script call that Redis then ignores. */
	uint64_t h = idset_hash(user, len);
	if (idset_has(&m->prioritized, h))
		return;
	idset_add(&m->prioritized, h);
	link_enqueue(m, priority_script, user, len, "read-guard");
}

/* A migrated user was written through legacy: migrate again, so the
 * service's copy catches up (the worker's version guard makes it
 * idempotent). */
void migrate_refresh(struct migrate_link *m, const char *user, size_t len)
{
	owe(m, true, user, len);
}

/* Whether nothing is left to send or to hear back about, or nothing can
 * be sent (the link is down): what a draining worker waits for. */
bool migrate_settled(const struct migrate_link *m)
{
	return m == NULL || !m->subscribed || (m->owed == NULL && m->inflight == 0);
}

bool migrate_is_migrated(const struct migrate_link *m, const char *user, size_t len)
{
	return idset_has(&m->migrated, idset_hash(user, len));
}

