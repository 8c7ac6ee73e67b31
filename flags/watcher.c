/*
 * watcher.c - keeps a snapshot slot current from Redis.
 *
 * Two hiredis async connections on the caller's libevent base: one
 * SUBSCRIBEd to <prefix>:flags:changed, one for commands. Every message
 * triggers a reload (one script, one round trip; reloads that pile up
 * while one is in flight collapse into one more). Once a second the
 * version key is compared with the snapshot's, which catches a message
 * lost to a reconnect.
 *
 * A connection can also die silently (a partition, a NAT dropping the
 * flow, a host gone without a reset): nothing arrives and nothing fails.
 * So every tick also publishes a heartbeat on a channel of this watcher's
 * own, which the subscriber must receive; a version check or heartbeat
 * left unanswered for WATCHER_MAX_UNANSWERED ticks counts as a failure.
 * (hiredis 0.14 drops the reply to PING on a subscribed connection, hence
 * the heartbeat through PUBLISH.)
 *
 * Fail-static: when Redis goes away the slot keeps the last snapshot,
 * the state becomes WATCHER_DISCONNECTED and the watcher reconnects with
 * exponential backoff (100 ms doubling to 5 s). hiredis 0.14 has no
 * connect timeout for async contexts, so the once-a-second tick also
 * abandons a connect that has not completed within 2 s.
 *
 * A Redis that lost its data (restarted without persistence, flushed)
 * has no version key. Taking that as "no flags" would send every user
 * back to legacy at once, a rollback nobody asked for, so a snapshot of
 * version 0 never replaces a real one: the watcher keeps what it has and
 * logs an error until an operator writes a flag again.
 *
 * Context lifetime: ac->data points back at the watcher while the
 * context is ours; a context being torn down has data NULL, so callbacks
 * hiredis runs during the teardown find nothing to do.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "flags.h"

#define WATCHER_TICK_MS 1000
#define WATCHER_CONNECT_TIMEOUT_US 2000000
#define WATCHER_BACKOFF_MIN_MS 100
#define WATCHER_BACKOFF_MAX_MS 5000
#define WATCHER_MAX_UNANSWERED 3

struct flag_watcher {
	struct event_base *base;
	struct redis_url url;
	char *prefix;
	char *channel;
	char *heartbeat_channel;
	char description[256];
	struct flag_snapshot_slot *slot;
	struct watcher_hooks hooks;
	redisAsyncContext *cmd;
	redisAsyncContext *sub;
	enum watcher_state state;
	bool subscribed;
	int version_unanswered;   /* ticks since a version check was answered */
	int heartbeat_unanswered; /* ticks since a heartbeat came back */
	long long rejected_version; /* a version whose data failed to decode */
	bool loaded; /* a snapshot was read over the current connection */
	bool loading;
	bool reload_again;
	long long version; /* of the published snapshot; -1 before the first */
	int64_t connect_started_us;
	int backoff_ms;
	struct event *tick;
	struct event *retry;
};

static void watcher_connect(struct flag_watcher *w);
static void watcher_load(struct flag_watcher *w);

const char *watcher_state_name(enum watcher_state state)
{
	switch (state) {
	case WATCHER_CONNECTING: return "connecting";
	case WATCHER_LIVE: return "live";
	case WATCHER_DISCONNECTED: return "disconnected";
	}
	return "unknown";
}

static void watcher_set_state(struct flag_watcher *w, enum watcher_state state, const char *detail)
{
	if (w->state == state)
		return;
	w->state = state;
	if (w->hooks.on_state)
		w->hooks.on_state(state, detail, w->hooks.arg);
}

/* Redis is gone or misbehaving: keep the snapshot, drop both
 * connections, and try again after the backoff. */
static void watcher_fail(struct flag_watcher *w, const char *reason)
{
	redis_async_drop(&w->cmd);
	redis_async_drop(&w->sub);
	w->subscribed = false;
	w->version_unanswered = 0;
	w->heartbeat_unanswered = 0;
	w->loaded = false;
	w->loading = false;
	w->reload_again = false;
	if (w->state != WATCHER_DISCONNECTED) {
		char detail[512], kept[64] = "no snapshot yet: everything goes to legacy";
		if (w->version >= 0)
			snprintf(kept, sizeof(kept), "keeping snapshot version %lld", w->version);
		snprintf(detail, sizeof(detail), "Redis at %s: %s; %s", w->description, reason, kept);
		log_warn("flag watcher: %s", detail);
		watcher_set_state(w, WATCHER_DISCONNECTED, detail);
	}
	int jitter = rand() % (w->backoff_ms / 4 + 1);
	struct timeval tv = { 0, (w->backoff_ms + jitter) * 1000 };
	tv.tv_sec = tv.tv_usec / 1000000;
	tv.tv_usec %= 1000000;
	evtimer_add(w->retry, &tv);
	w->backoff_ms = w->backoff_ms * 2 > WATCHER_BACKOFF_MAX_MS ? WATCHER_BACKOFF_MAX_MS : w->backoff_ms * 2;
}

static void watcher_on_connect(const redisAsyncContext *ac, int status)
{
	struct flag_watcher *w = ac->data;
	if (w == NULL || status == REDIS_OK)
		return;
	/* hiredis frees a context whose connect failed once we return. */
	if (w->cmd == ac)
		w->cmd = NULL;
	else
		w->sub = NULL;
	((redisAsyncContext *)ac)->data = NULL;
	watcher_fail(w, ac->errstr[0] ? ac->errstr : "connect failed");
}

static void watcher_on_disconnect(const redisAsyncContext *ac, int status)
{
	(void)status;
	struct flag_watcher *w = ac->data;
	if (w == NULL)
		return;
	if (w->cmd == ac)
		w->cmd = NULL;
	else
		w->sub = NULL;
	watcher_fail(w, ac->errstr[0] ? ac->errstr : "connection closed");
}

/* Both connections are up and the first snapshot is in: live. */
static void watcher_maybe_live(struct flag_watcher *w)
{
	if (w->state == WATCHER_LIVE || !w->subscribed || !w->loaded || w->cmd == NULL)
		return;
	char detail[320];
	snprintf(detail, sizeof(detail), "Redis at %s, snapshot version %lld", w->description, w->version);
	if (w->state == WATCHER_DISCONNECTED)
		log_info("flag watcher: reconnected to %s", detail);
	w->backoff_ms = WATCHER_BACKOFF_MIN_MS;
	watcher_set_state(w, WATCHER_LIVE, detail);
}

static void watcher_on_loaded(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)privdata;
	struct flag_watcher *w = ac->data;
	redisReply *r = reply;
	if (w == NULL || r == NULL)
		return;
	w->loading = false;
	if (r->type == REDIS_REPLY_ERROR) {
		watcher_fail(w, r->str);
		return;
	}
	w->loaded = true;
	char err[FLAG_ERR_MAX];
	struct flag_snapshot *snap;
	if (flag_snapshot_from_reply(r, &snap, err, sizeof(err)) < 0) {
		/* Bad data is not an outage: stay connected, keep serving the
		 * last good snapshot, and try again on the next change. */
		if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->type == REDIS_REPLY_STRING)
			w->rejected_version = strtoll(r->element[0]->str, NULL, 10);
		log_error("flag watcher: rejected new snapshot, keeping version %lld: %s", w->version, err);
	} else if (snap->version == w->version) {
		flag_snapshot_unref(snap);
	} else if (snap->version == 0 && w->version > 0) {
		log_error("flag watcher: Redis at %s has no flags version (data lost?); keeping snapshot version %lld "
			  "until a flag is written again",
			  w->description, w->version);
		flag_snapshot_unref(snap);
	} else {
		struct flag_snapshot *old = flag_slot_acquire(w->slot);
		w->version = snap->version;
		flag_slot_publish(w->slot, flag_snapshot_ref(snap));
		if (w->hooks.on_snapshot)
			w->hooks.on_snapshot(old, snap, w->hooks.arg);
		flag_snapshot_unref(old);
		flag_snapshot_unref(snap);
	}
	watcher_maybe_live(w);
	if (w->reload_again && w->cmd != NULL) {
		w->reload_again = false;
		watcher_load(w);
	}
}

static void watcher_load(struct flag_watcher *w)
{
	if (w->loading) {
		w->reload_again = true;
		return;
	}
	w->loading = true;
	redisAsyncCommand(w->cmd, watcher_on_loaded, NULL, "EVAL %s 0 %s", flag_store_load_script, w->prefix);
}

static void watcher_on_message(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)privdata;
	struct flag_watcher *w = ac->data;
	redisReply *r = reply;
	if (w == NULL || r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		watcher_fail(w, r->str);
		return;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING)
		return;
	if (strcmp(r->element[0]->str, "subscribe") == 0) {
		w->subscribed = true;
		watcher_maybe_live(w);
	} else if (strcmp(r->element[0]->str, "message") == 0 && w->cmd != NULL) {
		if (strcmp(r->element[1]->str, w->heartbeat_channel) == 0)
			w->heartbeat_unanswered = 0;
		else
			watcher_load(w);
	}
}

static void watcher_on_version(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)privdata;
	struct flag_watcher *w = ac->data;
	redisReply *r = reply;
	if (w == NULL || r == NULL)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		watcher_fail(w, r->str);
		return;
	}
	w->version_unanswered = 0;
	long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
	/* Any difference, not just an increase: a Redis restored from an
	 * older dump has a smaller version and different flags. */
	if (v != w->version && v != w->rejected_version && !(v == 0 && w->version > 0)) {
		log_info("flag watcher: version %lld in Redis, %lld in memory: reloading", v, w->version);
		watcher_load(w);
	}
}

static void watcher_on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	struct flag_watcher *w = arg;
	if (w->state == WATCHER_CONNECTING || (w->state == WATCHER_DISCONNECTED && w->cmd != NULL)) {
		if (clock_monotonic_us() - w->connect_started_us > WATCHER_CONNECT_TIMEOUT_US)
			watcher_fail(w, "no answer within 2 s");
	} else if (w->state == WATCHER_LIVE && w->cmd != NULL) {
		if (w->version_unanswered >= WATCHER_MAX_UNANSWERED ||
		    w->heartbeat_unanswered >= WATCHER_MAX_UNANSWERED) {
			watcher_fail(w, "no reply for 3 s");
			return;
		}
		w->version_unanswered++;
		w->heartbeat_unanswered++;
		redisAsyncCommand(w->cmd, watcher_on_version, NULL, "GET %s:flags:version", w->prefix);
		redisAsyncCommand(w->cmd, NULL, NULL, "PUBLISH %s 1", w->heartbeat_channel);
	}
}

static void watcher_on_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	watcher_connect(arg);
}

static redisAsyncContext *watcher_open(struct flag_watcher *w, char *err, size_t errlen)
{
	redisAsyncContext *ac = redis_connect_async(&w->url, w->base, err, errlen);
	if (ac == NULL)
		return NULL;
	ac->data = w;
	redisAsyncSetConnectCallback(ac, watcher_on_connect);
	redisAsyncSetDisconnectCallback(ac, watcher_on_disconnect);
	return ac;
}

static void watcher_connect(struct flag_watcher *w)
{
	char err[FLAG_ERR_MAX];
	w->connect_started_us = clock_monotonic_us();
	if (w->state != WATCHER_DISCONNECTED)
		watcher_set_state(w, WATCHER_CONNECTING, w->description);
	if ((w->cmd = watcher_open(w, err, sizeof(err))) == NULL ||
	    (w->sub = watcher_open(w, err, sizeof(err))) == NULL) {
		watcher_fail(w, err);
		return;
	}
	redisAsyncCommand(w->sub, watcher_on_message, NULL, "SUBSCRIBE %s %s", w->channel, w->heartbeat_channel);
	watcher_load(w);
}

/*
 * Starts watching the flags under prefix in the Redis at url, publishing
 * each new snapshot into slot (borrowed; must outlive the watcher) and
 * reporting to hooks (copied; may be NULL). Runs on base. Returns the
 * watcher (free with flag_watcher_free), or NULL with the reason in err
 * for a bad URL; an unreachable Redis is not an error, it is retried.
 */
struct flag_watcher *flag_watcher_new(struct event_base *base, const char *url, const char *prefix,
				      struct flag_snapshot_slot *slot, const struct watcher_hooks *hooks,
				      char *err, size_t errlen)
{
	struct flag_watcher *w = xcalloc(1, sizeof(*w));
	char why[FLAG_ERR_MAX];
	if (redis_url_parse(url, &w->url, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "invalid Redis URL '%s': %s", url, why);
		free(w);
		return NULL;
	}
	redis_url_describe(&w->url, w->description, sizeof(w->description));
	w->base = base;
	w->prefix = xstrdup(prefix);
	struct buf channel;
	buf_init(&channel);
	flag_store_key(prefix, "flags:changed", &channel);
	w->channel = buf_detach(&channel);
	buf_printf(&channel, "%s:flags:heartbeat:%d-%p", prefix, (int)getpid(), (void *)w);
	w->heartbeat_channel = buf_detach(&channel);
	w->slot = slot;
	if (hooks)
		w->hooks = *hooks;
	w->version = -1;
	w->rejected_version = -1;
	w->state = WATCHER_CONNECTING;
	w->backoff_ms = WATCHER_BACKOFF_MIN_MS;
	w->tick = event_new(base, -1, EV_PERSIST, watcher_on_tick, w);
	w->retry = evtimer_new(base, watcher_on_retry, w);
	struct timeval tick = { WATCHER_TICK_MS / 1000, (WATCHER_TICK_MS % 1000) * 1000 };
	event_add(w->tick, &tick);
	watcher_connect(w);
	return w;
}

void flag_watcher_free(struct flag_watcher *w)
{
	if (w == NULL)
		return;
	redis_async_drop(&w->cmd);
	redis_async_drop(&w->sub);
	event_free(w->tick);
	event_free(w->retry);
	redis_url_free(&w->url);
	free(w->prefix);
	free(w->channel);
	free(w->heartbeat_channel);
	free(w);
}

enum watcher_state flag_watcher_state(const struct flag_watcher *w)
{
	return w->state;
}
