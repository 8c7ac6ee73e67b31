/*
 * consumer.c - one member of a Redis consumer group, reading one or more
 * streams: the connection (made on demand, with the groups), turns of
 * XAUTOCLAIM or XREADGROUP, acknowledgements, pipelined commands, and
 * the waits after an outage. The migrate worker (worker.c), the backfill
 * and sync-back (syncback.c) share it; what an entry means is theirs.
 *
 * Entries idle for claim_idle (a consumer that died holding them, or a
 * retry left pending on purpose) are looked for at most once a second,
 * with a cursor per stream; new entries come from one XREADGROUP over
 * all the streams, the first stream's entries first.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

#define REDIS_TIMEOUT_MS 2000 /* connect, and each command beyond BLOCK */
#define CLAIM_EVERY_US 1000000
#define STREAM_ID_MAX 48
#define SLEEP_SLICE_MS 50

struct consumer {
	struct consumer_options o; /* the strings are the caller's */
	const volatile sig_atomic_t *stop;
	struct redis_url url;
	char where[256]; /* the Redis URL without its password */
	redisContext *redis;
	char cursor[CONSUMER_STREAMS_MAX][STREAM_ID_MAX]; /* XAUTOCLAIM's */
	int64_t next_claim_us;
};

/*
 * A consumer of o's streams that stops once *stop is set; nothing is
 * connected yet. o's strings must outlive it. Returns it, or NULL with
 * err (a bad Redis URL).
 */
struct consumer *consumer_new(const char *redis_url, const struct consumer_options *o,
			      const volatile sig_atomic_t *stop, char *err, size_t errlen)
{
	struct consumer *c = xcalloc(1, sizeof(*c));
	char why[256];
	c->o = *o;
	c->stop = stop;
	if (redis_url_parse(redis_url, &c->url, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "invalid Redis URL: %s", why);
		free(c);
		return NULL;
	}
	redis_url_describe(&c->url, c->where, sizeof(c->where));
	return c;
}

/* Options from cfg's loop settings, for group; no streams yet. */
void consumer_options_init(struct consumer_options *o, const struct migrate_config *cfg, const char *group)
{
	memset(o, 0, sizeof(*o));
	o->group = group;
	o->name = cfg->consumer;
	o->batch = cfg->batch;
	o->block_ms = cfg->block_ms;
	o->claim_idle_ms = cfg->claim_idle_ms;
	o->backoff_ms = cfg->backoff_ms;
	o->backoff_max_ms = cfg->backoff_max_ms;
}

/* Frees c (NULL is fine) and closes its connection. */
void consumer_free(struct consumer *c)
{
	if (c == NULL)
		return;
	if (c->redis)
		redisFree(c->redis);
	redis_url_free(&c->url);
	free(c);
}

/* Whether the stop signal came. */
bool consumer_stopping(const struct consumer *c)
{
	return *c->stop != 0;
}

/* Sleeps ms, in slices, returning early once the consumer is stopping. */
void consumer_sleep(const struct consumer *c, int ms)
{
	while (ms > 0 && !*c->stop) {
		int slice = ms < SLEEP_SLICE_MS ? ms : SLEEP_SLICE_MS;
		struct timespec ts = { 0, (long)slice * 1000000 };
		nanosleep(&ts, NULL);
		ms -= slice;
	}
}

/* The backoff doubled n - 1 times, capped at backoff_max. */
int consumer_backoff_ms(const struct consumer *c, int n)
{
	long ms = c->o.backoff_ms;
	for (int i = 1; i < n && ms < c->o.backoff_max_ms; i++)
		ms *= 2;
	return ms < c->o.backoff_max_ms ? (int)ms : c->o.backoff_max_ms;
}

/* Waits out the (*n)-th consecutive outage. Returns -1 at once if the
 * consumer is stopping, else 0 after the wait (-1 if it stopped
 * meanwhile). */
int consumer_wait_outage(const struct consumer *c, int *n)
{
	if (*c->stop)
		return -1;
	consumer_sleep(c, consumer_backoff_ms(c, ++*n));
	return *c->stop ? -1 : 0;
}

/* ---- the connection ------------------------------------------------------ */

/* Drops a connection that failed (the reply to what was lost). */
void consumer_lost(struct consumer *c, const char *what)
{
	log_warn("Redis at %s: %s: %s", c->where, what, redis_error_text(c->redis));
	metrics_count(COUNT_REDIS_ERRORS, 1);
	metrics_error("Redis at %s: %s: %s", c->where, what, redis_error_text(c->redis));
	redisFree(c->redis);
	c->redis = NULL;
}

/* Logs a command Redis refused. */
void consumer_refused(const struct consumer *c, const char *what, const redisReply *r)
{
	log_error("Redis at %s refused %s: %s", c->where, what, r->str);
	metrics_count(COUNT_REDIS_ERRORS, 1);
	metrics_error("Redis refused %s: %s", what, r->str);
}

/* The next pipelined reply into *r (the caller frees it). Returns -1
 * after consumer_lost when the connection failed. */
int consumer_next_reply(struct consumer *c, const char *what, redisReply **r)
{
	void *reply = NULL;
	if (redisGetReply(c->redis, &reply) != REDIS_OK || reply == NULL) {
		consumer_lost(c, what);
		return -1;
	}
	*r = reply;
	return 0;
}

void cmd_arg(struct command *cmd, const char *s, size_t len)
{
	cmd->argv[cmd->argc] = s;
	cmd->len[cmd->argc++] = len;
}

void cmd_str(struct command *cmd, const char *s)
{
	cmd_arg(cmd, s, strlen(s));
}

/* Appends each C string argument up to a NULL. */
void cmd_strs(struct command *cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
		cmd_str(cmd, s);
	va_end(ap);
}

/* Appends cmd to c's pipeline and empties it for the next command. */
void cmd_send(struct consumer *c, struct command *cmd)
{
	redisAppendCommandArgv(c->redis, cmd->argc, cmd->argv, cmd->len);
	cmd->argc = 0;
}

/*
 * Creates the group on every stream, and the streams, unless they
 * exist. The group starts at 0, not $: a stream written before any
 * consumer ran already holds work that nobody will write again.
 */
static int ensure_groups(struct consumer *c)
{
	for (int s = 0; s < c->o.nstreams; s++) {
		redisReply *r = redisCommand(c->redis, "XGROUP CREATE %s %s 0 MKSTREAM", c->o.streams[s], c->o.group);
		if (r == NULL) {
			consumer_lost(c, "XGROUP CREATE");
			return -1;
		}
		bool refused = r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0;
		if (refused)
			consumer_refused(c, "XGROUP CREATE", r);
		freeReplyObject(r);
		if (refused)
			return -1;
	}
	return 0;
}

/* Logs a read Redis refused; a stream deleted under the group (NOGROUP,
 * or UNBLOCKED for a read waiting on it) gets the group back. */
static void read_refused(struct consumer *c, const char *what, const redisReply *r)
{
	consumer_refused(c, what, r);
	if (strncmp(r->str, "NOGROUP", 7) == 0 || strncmp(r->str, "UNBLOCKED", 9) == 0)
		ensure_groups(c);
}

/* Connects when there is no connection, and makes sure of the groups.
 * Returns 0 when connected, or -1 (logged). */
int consumer_ready(struct consumer *c)
{
	char err[MIGRATE_ERR_MAX];
	if (c->redis)
		return 0;
	c->redis = redis_connect(&c->url, REDIS_TIMEOUT_MS, err, sizeof(err));
	if (c->redis == NULL) {
		log_warn("cannot reach Redis at %s: %s", c->where, err);
		metrics_count(COUNT_REDIS_ERRORS, 1);
		metrics_error("cannot reach Redis at %s: %s", c->where, err);
		return -1;
	}
	int ms = c->o.block_ms + REDIS_TIMEOUT_MS;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	if (redisSetTimeout(c->redis, tv) != REDIS_OK) {
		consumer_lost(c, "setting the timeout");
		return -1;
	}
	if (ensure_groups(c) < 0) {
		if (c->redis) {
			redisFree(c->redis);
			c->redis = NULL;
		}
		return -1;
	}
	for (int s = 0; s < c->o.nstreams; s++)
		snprintf(c->cursor[s], sizeof(c->cursor[s]), "0-0");
	c->next_claim_us = 0;
	log_info("connected to Redis at %s as consumer %s of group %s", c->where, c->o.name, c->o.group);
	return 0;
}

/*
 * Runs one command (argv with lengths), connecting as needed; a lost
 * connection or a refusal is logged and waited out like an outage, and
 * the command sent again. Returns Redis's reply (the caller frees it),
 * or NULL if the consumer stopped first. A reply lost with the
 * connection may leave the command run twice.
 */
redisReply *consumer_command(struct consumer *c, const char *what, int argc, const char **argv, const size_t *len)
{
	int outages = 0;
	for (;;) {
		redisReply *r = NULL;
		if (consumer_ready(c) == 0 && (r = redisCommandArgv(c->redis, argc, argv, len)) == NULL)
			consumer_lost(c, what);
		if (r && r->type != REDIS_REPLY_ERROR)
			return r;
		if (r) {
			consumer_refused(c, what, r);
			freeReplyObject(r);
		}
		if (consumer_wait_outage(c, &outages) < 0)
			return NULL;
	}
}

/* ---- reading ------------------------------------------------------------- */

/* Hands each [id, fields] of an array reply to take. */
static void take_entries(const redisReply *list, int stream, bool claimed, consumer_take_fn take, void *ctx)
{
	for (size_t i = 0; list->type == REDIS_REPLY_ARRAY && i < list->elements; i++) {
		const redisReply *item = list->element[i];
		if (item->type == REDIS_REPLY_ARRAY && item->elements == 2 && item->element[0]->type == REDIS_REPLY_STRING)
			take(ctx, stream, item->element[0]->str, item->element[1], claimed);
	}
}

/*
 * XAUTOCLAIM from each stream's cursor: entries idle for claim_idle,
 * ours or another consumer's. Once every cursor is back at 0-0 (a whole
 * pass done) the next look is a second away. Returns how many entries it
 * took, or -1 when the connection failed.
 */
static int read_claimed(struct consumer *c, consumer_take_fn take, void *ctx)
{
	bool done = true;
	int n = 0;
	for (int s = 0; s < c->o.nstreams; s++) {
		redisReply *r = redisCommand(c->redis, "XAUTOCLAIM %s %s %s %d %s COUNT %d", c->o.streams[s], c->o.group,
					     c->o.name, c->o.claim_idle_ms, c->cursor[s], c->o.batch);
		if (r == NULL) {
			consumer_lost(c, "XAUTOCLAIM");
			return -1;
		}
		if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && r->element[0]->type == REDIS_REPLY_STRING) {
			snprintf(c->cursor[s], sizeof(c->cursor[s]), "%s", r->element[0]->str);
			take_entries(r->element[1], s, true, take, ctx);
			n += r->element[1]->type == REDIS_REPLY_ARRAY ? (int)r->element[1]->elements : 0;
		} else if (r->type == REDIS_REPLY_ERROR) {
			snprintf(c->cursor[s], sizeof(c->cursor[s]), "0-0");
			read_refused(c, "XAUTOCLAIM", r);
		}
		done = done && strcmp(c->cursor[s], "0-0") == 0;
		freeReplyObject(r);
		if (c->redis == NULL)
			return -1;
	}
	c->next_claim_us = done ? clock_monotonic_us() + CLAIM_EVERY_US : 0;
	return n;
}

/* XREADGROUP over every stream, waiting up to block ms. Returns -1 when
 * the connection failed or Redis refused. */
static int read_new(struct consumer *c, consumer_take_fn take, void *ctx)
{
	const char *argv[9 + 2 * CONSUMER_STREAMS_MAX];
	char count[16], block[16];
	int argc = 0;
	snprintf(count, sizeof(count), "%d", c->o.batch);
	snprintf(block, sizeof(block), "%d", c->o.block_ms);
	argv[argc++] = "XREADGROUP";
	argv[argc++] = "GROUP";
	argv[argc++] = c->o.group;
	argv[argc++] = c->o.name;
	argv[argc++] = "COUNT";
	argv[argc++] = count;
	argv[argc++] = "BLOCK";
	argv[argc++] = block;
	argv[argc++] = "STREAMS";
	for (int s = 0; s < c->o.nstreams; s++)
		argv[argc++] = c->o.streams[s];
	for (int s = 0; s < c->o.nstreams; s++)
		argv[argc++] = ">";
	redisReply *r = redisCommandArgv(c->redis, argc, argv, NULL);
	if (r == NULL) {
		consumer_lost(c, "XREADGROUP");
		return -1;
	}
	int rc = 0;
	if (r->type == REDIS_REPLY_ERROR) {
		read_refused(c, "XREADGROUP", r);
		rc = -1;
	}
	/* In the order of the streams, whatever order Redis answered in. */
	for (int s = 0; r->type == REDIS_REPLY_ARRAY && s < c->o.nstreams; s++) {
		for (size_t i = 0; i < r->elements; i++) {
			const redisReply *sr = r->element[i];
			if (sr->type == REDIS_REPLY_ARRAY && sr->elements == 2 &&
			    sr->element[0]->type == REDIS_REPLY_STRING && strcmp(sr->element[0]->str, c->o.streams[s]) == 0)
				take_entries(sr->element[1], s, false, take, ctx);
		}
	}
	freeReplyObject(r);
	return rc;
}

/*
 * One turn: entries taken over, if a look for them is due and finds
 * some, else new ones, each handed to take (whose reply arguments live
 * only for the call). Returns 0, or -1 when Redis could not be read (the
 * caller waits with consumer_wait_outage).
 */
int consumer_read(struct consumer *c, consumer_take_fn take, void *ctx)
{
	if (consumer_ready(c) < 0)
		return -1;
	int n = 0;
	if (clock_monotonic_us() >= c->next_claim_us && (n = read_claimed(c, take, ctx)) < 0)
		return -1;
	return n > 0 ? 0 : read_new(c, take, ctx);
}

/*
 * One XACK per stream of the n entries ids[i] of streams stream[i], in
 * one round trip; with o.delete_acked, then an XDEL of the same ids.
 * Returns -1 when the connection failed (some may be acked).
 */
int consumer_ack(struct consumer *c, size_t n, const int *stream, const char *const *ids)
{
	const char **argv = xcalloc(n + 3, sizeof(*argv));
	int sent = 0, rc = 0;
	for (int s = 0; s < c->o.nstreams; s++) {
		int argc = 0;
		argv[argc++] = "XACK";
		argv[argc++] = c->o.streams[s];
		argv[argc++] = c->o.group;
		for (size_t i = 0; i < n; i++)
			if (stream[i] == s)
				argv[argc++] = ids[i];
		if (argc == 3)
			continue;
		redisAppendCommandArgv(c->redis, argc, argv, NULL);
		sent++;
		if (c->o.delete_acked) {
			/* XDEL takes the same ids, without the group. */
			argv[2] = argv[1];
			argv[1] = "XDEL";
			redisAppendCommandArgv(c->redis, argc - 1, argv + 1, NULL);
			sent++;
		}
	}
	while (sent-- > 0 && rc == 0) {
		redisReply *r;
		rc = consumer_next_reply(c, "XACK", &r);
		if (rc == 0 && r->type == REDIS_REPLY_ERROR)
			consumer_refused(c, "XACK or XDEL", r);
		if (rc == 0)
			freeReplyObject(r);
	}
	free(argv);
	return rc;
}

/* The connection, for pipelines of the caller's own; NULL when there is
 * none (consumer_ready makes one). */
redisContext *consumer_redis(const struct consumer *c)
{
	return c->redis;
}
