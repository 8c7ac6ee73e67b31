/*
 * worker.c - the consume loop of cutover-migrate (Redis layout in
 * docs/design.md, "Lazy migration").
 *
 * Each turn takes one batch: entries idle for claim_idle taken over with
 * XAUTOCLAIM (looked for at most once a second), or else new entries
 * from one XREADGROUP over both streams. A batch goes through:
 *
 *   1. user ids: a malformed entry (no user field, not UTF-8, empty or
 *      over 256 bytes, control characters) goes to the dead-letter
 *      stream with reason malformed;
 *   2. one find {_id: {$in: [...]}} in legacy; a user it does not
 *      return is dead-lettered as not-found;
 *   3. the mapping; a document it cannot map is dead-lettered (mapping);
 *   4. the sink, priority entries' users first: delivered, retry,
 *      dead (sink-4xx) or deferred (not tried: the sink is down);
 *   5. Redis, in three pipelined round trips: count attempts (HINCRBY
 *      for each retry; HGET for each dead-letter, whose entry says how
 *      many failed before it); record (per delivered user HSET
 *      <p>:migrated, PUBLISH <p>:migrated:changed, HDEL
 *      <p>:migrate:attempts; per dead-lettered user XADD
 *      <p>:migrate:dead, HDEL attempts); and only then XACK the entries
 *      whose HSET or XADD Redis accepted. A refused record (a Redis out
 *      of memory still takes XACK) leaves its entry pending.
 *
 * Retries: a retryable failure (5xx, timeout, unreachable sink) leaves
 * the entry pending, not acked. Once idle for claim_idle, XAUTOCLAIM
 * hands it back, to this worker or another; when the attempts counted
 * in <p>:migrate:attempts reach retry.attempts, it is dead-lettered with
 * reason attempts and the last error, and acked. No entry is acked
 * before its user is in the service or in the dead-letter stream. A
 * batch with a retryable failure is followed by a pause of retry.backoff
 * ms, doubled for each consecutive such batch up to retry.backoff_max.
 * A deferred user is left pending the same way, without an attempt.
 *
 * Outages: a failed legacy find, or a Redis that cannot be reached,
 * costs no attempt: the batch in hand is tried again after the same
 * backoff until it goes through. A reply lost with the connection may
 * leave an attempt counted twice or a dead-letter entry written twice.
 *
 * Stopping: once *stop is set (the first SIGTERM or SIGINT), the batch
 * in hand is finished and the loop ends; a wait for an outage ends at
 * once, leaving that batch's entries pending for whoever comes next.
 *
 * The reading and outage waits are consumer.c's; the turn and step 5,
 * but for what a record is (send_record), are batch.c's: both shared
 * with sync-back. The backfill (backfill.c) uses a worker from worker_new for
 * its Redis commands and outage waits (through worker_consumer), and
 * worker_deliver for steps 3 to 5 of users it read from legacy itself,
 * with no stream entries to ack.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "migrator/migrator.h"

#define GROUP "migrators"

enum stream { STREAM_PRIORITY, STREAM_NORMAL, NSTREAMS };

/* One stream entry of a batch. */
struct entry {
	struct batch_entry base; /* d NULL: malformed */
	const char *malformed;   /* why the user field is unusable, or NULL */
};

struct worker {
	const struct migrate_config *cfg;
	struct batch_loop loop; /* its consumer, q, is the worker's */
	struct legacy *legacy;
	struct sink *sink;
	char *streams[NSTREAMS];
	char *dead_key;
	char *attempts_key;
	char *migrated_key;
	char *changed_channel;
};

/* Sets d's outcome, reason (for a dead-letter) and error text. */
void delivery_set(struct delivery *d, enum outcome outcome, const char *reason, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(d->error, sizeof(d->error), fmt, ap);
	va_end(ap);
	d->outcome = outcome;
	d->reason = reason;
}

/* Frees d and the documents it owns. */
void delivery_free(struct delivery *d)
{
	free(d->user);
	if (d->legacy)
		bson_destroy(d->legacy);
	if (d->doc)
		bson_destroy(d->doc);
	free(d);
}

/* Makes a user that an earlier worker_deliver left pending (retry or
 * deferred) ready for the next one: the legacy document stays, the
 * mapped one and the outcome go. */
void delivery_again(struct delivery *d)
{
	if (d->doc)
		bson_destroy(d->doc);
	d->doc = NULL;
	d->outcome = OUTCOME_NONE;
	d->counted = false;
}

/*
 * Whether s[0..len) can be a user id: 1 to 256 bytes of UTF-8 without
 * control characters (C0, DEL or C1). Returns 0, or -1 with *why.
 */
int user_id_check(const char *s, size_t len, const char **why)
{
	if (len == 0) {
		*why = "empty";
		return -1;
	}
	if (len > USER_ID_MAX) {
		*why = "longer than 256 bytes";
		return -1;
	}
	if (!utf8_valid(s, len)) {
		*why = "not UTF-8";
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || (c == 0xc2 && i + 1 < len && (unsigned char)s[i + 1] < 0xa0)) {
			*why = "has a control character";
			return -1;
		}
	}
	return 0;
}

/*
 * Finds the user field among an entry's fields (a flat array reply of
 * names and values) and checks it. Returns 0 with *user and *len set
 * (pointing into fields), or -1 with *why; *user is then the field as
 * sent, or NULL when there is none.
 */
int entry_user(const redisReply *fields, const char **user, size_t *len, const char **why)
{
	*user = NULL;
	*len = 0;
	for (size_t i = 0; fields && fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
		const redisReply *k = fields->element[i], *v = fields->element[i + 1];
		if (k->type != REDIS_REPLY_STRING || k->len != 4 || memcmp(k->str, "user", 4) != 0)
			continue;
		if (v->type != REDIS_REPLY_STRING)
			break;
		*user = v->str;
		*len = v->len;
		return user_id_check(v->str, v->len, why);
	}
	*why = "no user field";
	return -1;
}

/* A text fit for a log line: at most LOG_EXCERPT bytes, non-printable
 * bytes as '?'. */
void user_excerpt(const char *s, size_t len, char out[LOG_EXCERPT + 4])
{
	size_t n = len < LOG_EXCERPT ? len : LOG_EXCERPT;
	for (size_t i = 0; i < n; i++)
		out[i] = (unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f ? '?' : s[i];
	strcpy(out + n, len > n ? "..." : "");
}

/* ---- batches ---------------------------------------------------------- */

static struct entry *entry_at(const struct batch *b, size_t i)
{
	return (struct entry *)batch_entry_at(b, i);
}

/* batch_ops take: what is wrong with the user field, if anything. */
static void take_entry(void *ctx, struct batch_entry *e, const redisReply *fields, const char *why)
{
	(void)ctx;
	(void)fields;
	((struct entry *)e)->malformed = why;
}

static int compare_entry_users(const void *a, const void *b)
{
	const struct batch_entry *x = *(struct batch_entry *const *)a, *y = *(struct batch_entry *const *)b;
	int c = strcmp(x->user, y->user);
	return c != 0 ? c : x->stream - y->stream;
}

/* A new delivery for the entries byuser[i..] of one user. */
static struct delivery *user_delivery(struct batch_entry **byuser, size_t i, size_t n)
{
	struct delivery *d = xcalloc(1, sizeof(*d));
	d->user = xstrdup(byuser[i]->user);
	for (size_t k = i; k < n && strcmp(byuser[k]->user, d->user) == 0; k++)
		byuser[k]->d = d;
	return d;
}

/*
 * Gives every well-formed entry its delivery: one per distinct user, so
 * a user on both streams is loaded and delivered once. Users with a
 * priority entry come first: sorted by user then stream, the first entry
 * of a user tells whether it has one.
 */
static void collect_users(struct batch *b)
{
	struct batch_entry **byuser = xcalloc(b->nentries + 1, sizeof(*byuser));
	size_t n = 0;
	for (size_t i = 0; i < b->nentries; i++)
		if (entry_at(b, i)->malformed == NULL)
			byuser[n++] = batch_entry_at(b, i);
	qsort(byuser, n, sizeof(*byuser), compare_entry_users);
	b->users = xcalloc(n + 1, sizeof(*b->users));
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			bool first = i == 0 || strcmp(byuser[i - 1]->user, byuser[i]->user) != 0;
			bool priority = byuser[i]->stream == STREAM_PRIORITY;
			if (first && priority == (pass == 0))
				b->users[b->nusers++] = user_delivery(byuser, i, n);
		}
	}
	free(byuser);
}

/* ---- a batch's way through -------------------------------------------- */

/* Loads the users' legacy documents, waiting out a failing find. Returns
 * -1 if the worker stopped meanwhile (the batch is left as it is). */
static int load_legacy(struct worker *w, struct batch *b)
{
	char err[MIGRATE_ERR_MAX];
	int outages = 0;
	while (legacy_load(w->legacy, b->users, b->nusers, err, sizeof(err)) < 0) {
		log_warn("legacy: %s; %zu users wait, no attempt counted", err, b->nusers);
		metrics_count(COUNT_LEGACY_ERRORS, 1);
		metrics_error("legacy: %s", err);
		if (consumer_wait_outage(w->loop.q, &outages) < 0)
			return -1;
	}
	return 0;
}

/* not-found for users legacy lacks; the mapping for the others. */
static void map_users(struct worker *w, struct batch *b)
{
	char why[DELIVERY_ERROR_MAX];
	for (size_t i = 0; i < b->nusers; i++) {
		struct delivery *d = b->users[i];
		if (d->legacy == NULL) {
			delivery_set(d, OUTCOME_DEAD, "not-found", "no document with this _id in %s.%s",
				     w->cfg->legacy.database, w->cfg->legacy.collection);
			continue;
		}
		d->doc = bson_new();
		if (mapping_apply(&w->cfg->mapping, d->legacy, d->doc, why, sizeof(why)) < 0)
			delivery_set(d, OUTCOME_DEAD, "mapping", "%s", why);
	}
}

/* The dead-letter entry: user, reason, error, attempts, at. */
static void send_dead_letter(struct worker *w, const char *user, size_t len, const char *reason,
			     const char *error, long long attempts, const char *at)
{
	struct command c = { 0 };
	char count[24];
	snprintf(count, sizeof(count), "%lld", attempts);
	cmd_strs(&c, "XADD", w->dead_key, "*", "user", NULL);
	cmd_arg(&c, user, len);
	cmd_strs(&c, "reason", reason, "error", error, "attempts", count, "at", at, NULL);
	cmd_send(w->loop.q, &c);
}

/* batch_ops send_record: HSET <p>:migrated and PUBLISH for a delivered
 * user, the dead-letter entry for a dead one; the first is the one that
 * must be accepted. */
static int send_record(void *ctx, const struct batch *b, const struct delivery *d, const char *at)
{
	struct worker *w = ctx;
	struct command c = { 0 };
	(void)b;
	if (d->outcome != OUTCOME_DELIVERED) {
		send_dead_letter(w, d->user, strlen(d->user), d->reason, d->error, d->attempts, at);
		return 1;
	}
	cmd_strs(&c, "HSET", w->migrated_key, d->user, at, NULL);
	cmd_send(w->loop.q, &c);
	cmd_strs(&c, "PUBLISH", w->changed_channel, d->user, NULL);
	cmd_send(w->loop.q, &c);
	return 2;
}

/* batch_ops send_dead_entry: a malformed entry's dead-letter. */
static void send_dead_entry(void *ctx, const struct batch_entry *e, const char *at)
{
	send_dead_letter(ctx, e->user ? e->user : "", e->user_len, "malformed", ((const struct entry *)e)->malformed,
			 0, at);
}

/* The dead-letter counter of a reason. */
static enum counter reason_counter(const char *reason)
{
	if (strcmp(reason, "not-found") == 0)
		return COUNT_NOT_FOUND;
	if (strcmp(reason, "mapping") == 0)
		return COUNT_MAPPING;
	if (strcmp(reason, "sink-4xx") == 0)
		return COUNT_SINK_4XX;
	return COUNT_ATTEMPTS;
}

/* A log line and counters for each outcome Redis now holds. */
static void report(struct worker *w, const struct batch *b)
{
	char text[LOG_EXCERPT + 4];
	for (size_t i = 0; i < b->nentries; i++) {
		const struct entry *e = entry_at(b, i);
		if (e->malformed == NULL || !e->base.recorded)
			continue;
		user_excerpt(e->base.user ? e->base.user : "", e->base.user_len, text);
		log_warn("entry %s of %s: user '%s' is malformed (%s): dead-lettered", e->base.id,
			 w->streams[e->base.stream], text, e->malformed);
		metrics_error("entry %s: malformed user (%s)", e->base.id, e->malformed);
		metrics_count(COUNT_DEAD, 1);
		metrics_count(COUNT_MALFORMED, 1);
	}
	for (size_t i = 0; i < b->nusers; i++) {
		const struct delivery *d = b->users[i];
		if (d->outcome == OUTCOME_DELIVERED && d->recorded) {
			log_debug("user %s: migrated (%s)", d->user, d->error);
			metrics_count(COUNT_MIGRATED, 1);
		} else if (d->outcome == OUTCOME_DEAD && d->recorded) {
			log_warn("user %s: dead-lettered (%s) after %lld failed attempts: %s", d->user, d->reason,
				 d->attempts, d->error);
			metrics_error("user %s: %s: %s", d->user, d->reason, d->error);
			metrics_count(COUNT_DEAD, 1);
			metrics_count(reason_counter(d->reason), 1);
		} else if (d->outcome == OUTCOME_RETRY) {
			log_warn("user %s: attempt %lld of %d failed, left pending for a retry: %s", d->user,
				 d->attempts, w->cfg->attempts, d->error);
			metrics_error("user %s: %s", d->user, d->error);
			metrics_count(COUNT_FAILED, 1);
		} else if (d->outcome == OUTCOME_DEFERRED) {
			log_warn("user %s: left pending, no attempt counted: %s", d->user, d->error);
			metrics_count(COUNT_DEFERRED, 1);
		}
	}
}

/* Steps 3 to 5 for the users of b, their legacy documents loaded: the
 * mapping, the sink, Redis, and the report. Returns -1 if the worker
 * stopped before Redis had it all. */
static int deliver_users(struct worker *w, struct batch *b)
{
	map_users(w, b);
	w->sink->deliver(w->sink, b->users, b->nusers);
	if (batch_record(&w->loop, b) < 0)
		return -1;
	report(w, b);
	return 0;
}

/*
 * Steps 3 to 5 for users read from legacy by the caller (distinct, each
 * with its legacy document, or NULL for one legacy lacks), as for a
 * batch without stream entries. Each keeps its outcome: delivered and
 * dead users are recorded in Redis; retry and deferred ones are not (see
 * delivery_again). Returns -1 if the worker stopped before Redis had
 * them all.
 */
int worker_deliver(struct worker *w, struct delivery **users, size_t n)
{
	struct batch b = { .users = users, .nusers = n };
	return deliver_users(w, &b);
}

/* batch_ops process: steps 2 to 5 (see the top of this file). */
static int process(void *ctx, struct batch *b)
{
	struct worker *w = ctx;
	collect_users(b);
	if (b->nusers > 0 && load_legacy(w, b) < 0) {
		log_info("stopping during a legacy outage: %zu entries stay pending", b->nentries);
		return -1;
	}
	if (deliver_users(w, b) < 0) {
		log_info("stopping during a Redis outage: the entries not acked stay pending");
		return -1;
	}
	return 0;
}

static const struct batch_ops worker_batches = {
	.take = take_entry,
	.entry_size = sizeof(struct entry),
	.process = process,
	.strict = false,
	.send_record = send_record,
	.send_dead_entry = send_dead_entry,
};

/*
 * A worker for cfg that stops once *stop is set: its keys, the Redis
 * URL, the legacy reader and the sink; nothing is connected yet. Returns
 * it (free it with worker_free), or NULL with err.
 */
struct worker *worker_new(const struct migrate_config *cfg, const volatile sig_atomic_t *stop, char *err,
			  size_t errlen)
{
	static const char *const suffix[NSTREAMS] = { "migrate:priority", "migrate" };
	struct worker *w = xcalloc(1, sizeof(*w));
	struct consumer_options o;
	struct buf k;
	w->cfg = cfg;
	buf_init(&k);
	for (int s = 0; s < NSTREAMS; s++) {
		buf_printf(&k, "%s:%s", cfg->redis_prefix, suffix[s]);
		w->streams[s] = buf_detach(&k);
	}
	buf_printf(&k, "%s:migrate:dead", cfg->redis_prefix);
	w->dead_key = buf_detach(&k);
	buf_printf(&k, "%s:migrate:attempts", cfg->redis_prefix);
	w->attempts_key = buf_detach(&k);
	buf_printf(&k, "%s:migrated", cfg->redis_prefix);
	w->migrated_key = buf_detach(&k);
	buf_printf(&k, "%s:migrated:changed", cfg->redis_prefix);
	w->changed_channel = buf_detach(&k);
	consumer_options_init(&o, cfg, GROUP);
	for (int s = 0; s < NSTREAMS; s++)
		o.streams[o.nstreams++] = w->streams[s];
	o.delete_acked = true;
	w->loop = (struct batch_loop){ .ops = &worker_batches, .ctx = w, .attempts_key = w->attempts_key,
				       .attempts = cfg->attempts };
	w->loop.q = consumer_new(cfg->redis_url, &o, stop, err, errlen);
	if (w->loop.q == NULL)
		goto fail;
	w->legacy = legacy_open(cfg, err, errlen);
	if (w->legacy == NULL)
		goto fail;
	w->sink = cfg->sink == SINK_HTTP ? sink_http_new(cfg, err, errlen) : sink_mongo_new(cfg, err, errlen);
	if (w->sink == NULL)
		goto fail;
	return w;
fail:
	worker_free(w);
	return NULL;
}

/* Frees w (NULL is fine) and closes its connections. */
void worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->sink)
		w->sink->free(w->sink);
	legacy_close(w->legacy);
	consumer_free(w->loop.q);
	for (int s = 0; s < NSTREAMS; s++)
		free(w->streams[s]);
	free(w->dead_key);
	free(w->attempts_key);
	free(w->migrated_key);
	free(w->changed_channel);
	free(w);
}

/* The Redis side of w: its consumer of the migrate streams. */
struct consumer *worker_consumer(const struct worker *w)
{
	return w->loop.q;
}

/* The legacy reader of w. */
struct legacy *worker_legacy(const struct worker *w)
{
	return w->legacy;
}

/*
 * Runs the loop until *stop is set, then returns 0 with the batch in
 * hand finished; returns 1 when the worker cannot start (logged).
 */
int worker_run(const struct migrate_config *cfg, const volatile sig_atomic_t *stop)
{
	char err[MIGRATE_ERR_MAX];
	struct worker *w = worker_new(cfg, stop, err, sizeof(err));
	if (w == NULL || (cfg->metrics_file && metrics_start(cfg->metrics_file, migrate_counters, err, sizeof(err)) < 0)) {
		log_error("%s", err);
		worker_free(w);
		return 1;
	}
	log_info("migrating %s.%s to the %s sink: batch %d, claim_idle %d ms, %d attempts%s%s", cfg->legacy.database,
		 cfg->legacy.collection, sink_type_name(cfg->sink), cfg->batch, cfg->claim_idle_ms, cfg->attempts,
		 cfg->metrics_file ? ", metrics in " : "", cfg->metrics_file ? cfg->metrics_file : "");
	while (!*stop)
		batch_turn(&w->loop);
	log_info("stopped: %llu entries processed, %llu users migrated, %llu dead-lettered",
		 metrics_get(COUNT_PROCESSED), metrics_get(COUNT_MIGRATED), metrics_get(COUNT_DEAD));
	metrics_stop();
	worker_free(w);
	return 0;
}
